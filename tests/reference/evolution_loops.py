"""Independent references for the evolution engine (tests and benchmarks use them).

``original_loop``
    a faithful re-implementation of the original research loop: one forward pass;
    per layer the SAE is loaded from disk; per query position the attention output is
    decomposed for that query, its step vectors are built, moved to the SAE's device
    and encoded in one small call, and ``torch.topk`` keeps k indices (zeros too).
``naive_floor``
    one forward pass, then all step vectors of a layer built in d_model space and
    encoded in ONE batched ``sae.encode`` call per layer (no top-k).
``check_against_direct``
    how far an engine result is from the SAE's own encode of every step vector.
``ref_evolution`` / ``ref_topk``
    the per-prefix reference the tests check the engine against: one forward pass per
    prefix, contributions head by head, the SAE's own ``encode`` on every step vector
    (one call each) and a plain sort for the top-k among active features.

They are slow on purpose and live outside the package.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from transformer_lens import HookedTransformer

    from trajectory.saes.bank import SAEBank


def original_loop(
    model: "HookedTransformer", sae_dirs: dict[int, Path], tokens: "torch.Tensor", layers: Sequence[int], *, k: int = 400, device: str = "cpu"
) -> dict:
    """The original research code's loop, re-implemented faithfully (see module docstring).

    Returns ``{(n, layer): [n + 2, k] indices}`` (zeros ranked too, as it did).
    """
    import torch
    from sae_lens import SAE

    out = {}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None].to(model.cfg.device))
        N = tokens.shape[0]
        for L in layers:
            sae = SAE.load_from_disk(str(sae_dirs[L]), device="cpu")
            block = model.blocks[L]
            W_O = block.attn.W_O
            pattern = cache[f"blocks.{L}.attn.hook_pattern"][0]
            v = cache[f"blocks.{L}.attn.hook_v"][0]
            v = v.repeat_interleave(W_O.shape[0] // v.shape[1], dim=1)
            pre = cache[f"blocks.{L}.hook_resid_pre"][0]
            post = cache[f"blocks.{L}.hook_resid_post"][0]
            norm = getattr(block, "ln1_post", None)
            for q in range(1, N):
                sae_q = sae.to(device)  # the original moved the SAE host -> GPU per query position
                contrib = torch.einsum("hk,khd,hdm->km", pattern[:, q, : q + 1], v[: q + 1], W_O)
                partial = contrib.cumsum(0) + block.attn.b_O
                if norm is not None:
                    partial = partial / (partial.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt() * norm.w
                inputs = torch.cat([pre[q][None], pre[q] + partial, post[q][None]]).to(device)
                acts = sae_q.encode(inputs.to(sae.W_enc.dtype))
                out[(q + 1, L)] = torch.topk(acts, min(k, acts.shape[-1]), dim=-1).indices.cpu()
            del sae
    return out


def naive_floor(
    model: "HookedTransformer",
    bank: "SAEBank",
    tokens: "torch.Tensor",
    layers: Sequence[int],
    *,
    postnorm: str = "per_partial_sum",
    device: str = "cpu",
    keep: dict | None = None,
) -> int:
    """One forward pass + one batched direct encode of all step vectors of each layer.

    Returns the number of step vectors encoded; with ``keep`` (a dict), also stores each
    layer's activations ``[rows, d_sae]`` (rows in the evolution's (n, step) order) in it.
    """
    import torch

    from trajectory.evolution.attention import attn_partial_sums, forward_activations

    total = 0
    with torch.no_grad():
        acts = forward_activations(model, tokens, layers)
        N = tokens.shape[0]
        for L in layers:
            a = acts.pop(L)
            P = attn_partial_sums(model, a, L, postnorm=postnorm)  # [q, j, d]
            pre, post = a.resid_pre.float(), a.resid_post.float()
            X = torch.cat([torch.cat([pre[q][None], pre[q] + P[q, : q + 1], post[q][None]]) for q in range(1, N)])
            sae = bank[L]
            home = sae.W_enc.device
            sae.to(device)  # the floor encodes where the engine does (a no-op on CPU)
            try:
                encoded = sae.encode(X.to(device=device, dtype=sae.W_enc.dtype))
                total += int(encoded.shape[0])
                if keep is not None:
                    keep[L] = encoded.cpu()
            finally:
                sae.to(home)
            del encoded, X, P
    return total


def check_against_direct(evo, model: "HookedTransformer", bank: "SAEBank", tokens: "torch.Tensor",
                         layers: Sequence[int], *, device: str = "cpu", original: dict | None = None) -> dict:
    """How far the engine's result ``evo`` is from the direct computation (not timed).

    The floor's activations (the SAE's own ``encode`` of every step vector) go through
    the same active-only top-k; compared row by row with the engine's lists.

    Returns ``max_abs_diff`` (largest activation difference over kept entries),
    ``rows_equal`` (share of rows with identical index lists), ``rows_equal_but_ties``
    (share equal up to swaps of activations within 1e-4 relative), and, with the
    original loop's output, ``original_active_equal``: share of rows whose active
    features (the original ranked zeros too) the engine lists in the same order.
    """
    import numpy as np

    from trajectory.evolution.topk import select_active_topk

    enc: dict = {}
    naive_floor(model, bank, tokens, layers, device=device, keep=enc)
    N = int(tokens.shape[0])
    diff, same, same_tie, n_rows, orig_same, orig_rows = 0.0, 0, 0, 0, 0, 0
    for L in layers:
        idx, val, counts, _ = select_active_topk(enc[L].float(), evo.k)
        offs = np.concatenate([[0], np.cumsum(counts)])
        r = 0
        for n in range(2, N + 1):
            for s in range(n + 2):
                ref_i, ref_v = idx[offs[r]:offs[r + 1]], val[offs[r]:offs[r + 1]]
                got_i, got_v = evo.topk(n, L, s)
                n_rows += 1
                if np.array_equal(ref_i, got_i):
                    same += 1
                    same_tie += 1
                    diff = max(diff, float(np.abs(ref_v - got_v).max(initial=0.0)))
                elif ref_i.size == got_i.size:
                    # equal up to near-ties: the same sorted activations, and each feature's
                    # value (where both have it) agrees
                    close = np.allclose(np.sort(ref_v), np.sort(got_v), rtol=1e-4, atol=1e-5)
                    same_tie += bool(close)
                    diff = max(diff, float(np.abs(np.sort(ref_v) - np.sort(got_v)).max(initial=0.0)))
                r += 1
        if original is not None:
            for n in range(2, N + 1):
                orig = original[(n, L)]  # [n + 2, k]: indices, zeros ranked too
                for s in range(n + 2):
                    got_i, _ = evo.topk(n, L, s)
                    orig_rows += 1
                    orig_same += bool(np.array_equal(orig[s, : got_i.size].numpy(), got_i))
    out = dict(max_abs_diff=diff, rows_equal=same / max(1, n_rows), rows_equal_but_ties=same_tie / max(1, n_rows))
    if original is not None:
        out["original_active_equal"] = orig_same / max(1, orig_rows)
    return out


def ref_topk(acts: "np.ndarray", k: int):
    """Active features (> 0), by activation descending then index ascending, first k:
    ``(indices, activations, n_active)``."""
    import numpy as np

    idx = np.flatnonzero(acts > 0)
    order = np.lexsort((idx, -acts[idx]))
    idx = idx[order][:k]
    return idx, acts[idx], int((acts > 0).sum())


def ref_evolution(model, bank, prompt, k, postnorm):
    """{(n, L): [(indices, activations, n_active) per step]} with one forward pass per prefix."""
    import torch

    toks = model.to_tokens(prompt)[0]
    N = toks.shape[0]
    out = {}
    for n in range(2, N + 1):
        with torch.no_grad():
            _, cache = model.run_with_cache(toks[None, :n])
        q = n - 1
        for L in bank.layers:
            pattern = cache[f"blocks.{L}.attn.hook_pattern"][0, :, q]  # [h, k]
            v = cache[f"blocks.{L}.attn.hook_v"][0]  # [k, kv, dh]
            W_O, b_O = model.blocks[L].attn.W_O, model.blocks[L].attn.b_O
            H, n_kv = W_O.shape[0], v.shape[1]
            c = torch.stack([sum(pattern[h, j] * v[j, h // (H // n_kv)] @ W_O[h] for h in range(H)) for j in range(n)])
            pre = cache[f"blocks.{L}.hook_resid_pre"][0, q]
            vecs = [pre]
            for j in range(n):
                s = c[: j + 1].sum(0) + b_O
                if hasattr(model.blocks[L], "ln1_post"):
                    norm = model.blocks[L].ln1_post
                    if postnorm == "per_partial_sum":
                        rms = (s.pow(2).mean() + norm.eps).sqrt()
                    else:
                        rms = cache[f"blocks.{L}.ln1_post.hook_scale"][0, q, 0]
                    s = s / rms * norm.w
                vecs.append(pre + s)
            vecs.append(cache[f"blocks.{L}.hook_resid_post"][0, q])
            with torch.no_grad():
                acts = [bank[L].encode(x[None])[0].float().numpy() for x in vecs]  # one call per step vector
            out[(n, L)] = [ref_topk(a, k) for a in acts]
    return out


def assert_matches_reference(evo, ref, atol=1e-4):
    """Every row of ``evo`` equals :func:`ref_evolution`'s (indices exactly, values to ``atol``)."""
    import numpy as np

    checked = 0
    for (n, L), steps in ref.items():
        assert len(steps) == len(evo.steps(n))
        for s, (idx, val, n_act) in enumerate(steps):
            got_idx, got_val = evo.topk(n, L, s)
            np.testing.assert_array_equal(got_idx, idx, err_msg=f"n={n} L={L} step={s}")
            np.testing.assert_allclose(got_val, val, atol=atol, rtol=1e-4, err_msg=f"n={n} L={L} step={s}")
            assert evo.n_active(n, L, s) == n_act
            checked += 1
    assert checked > 50


def _disk_copies(bank: "SAEBank", layers: Sequence[int], folder: Path) -> dict[int, Path]:
    """Save each layer's SAE as a sae-lens folder (what the original loop loads)."""
    out = {}
    for L in layers:
        path = folder / f"layer_{L}"
        bank[L].save_model(str(path))
        out[L] = path
    return out

"""Stage 2, the evolution engine: top-k SAE features of every (prefix, layer, step).

:func:`evolve` computes, for a prompt of N tokens and every layer L of the bank, every
prefix length ``n = 2..N`` (query ``q = n - 1``) and every step (see
:mod:`trajectory.evolution` for the steps and the file format)::

    initial      SAE_L(resid_pre_L[q])
    key j        SAE_L(resid_pre_L[q] + postnorm(b_O + Σ_{k≤j} c_{q,k}))   j = 0..q
    mlp          SAE_L(resid_post_L[q])

with ``c_{q,k}`` the contribution of key k to query q through layer L's attention
(:mod:`trajectory.attention`). All prefixes come from ONE forward pass (causal
attention). Layers are processed one after the other, so memory holds one layer's
SAE and one batch of step vectors at a time.

How it is fast (``method="feature_space"``, chosen automatically for JumpReLU,
ReLU/standard and TopK SAEs): an SAE encoder is linear before its activation, so

    pre[q, j] = (resid_pre[q] - b_dec') W_enc + b_enc
                + (Σ_{k≤j} Σ_h pattern[h,q,k] · F[k,h] + F_b) / r[q, j]

where ``F[k,h] = (w ⊙ v[k,kv(h)] W_O[h]) W_enc`` is each per-key, per-head value
vector encoded once, ``F_b = (w ⊙ b_O) W_enc``, ``w`` the post-norm weight and
``r[q, j]`` the RMS of the partial sum (computed in d_model space; the frozen scale,
or 1, in the other variants). The cumulative sums over keys are taken in blocks of
8 keys (a prefix per block plus the keys inside it), so each step row costs a
product of inner dimension ``8·n_heads + 2Q`` instead of ``d_model``; all vectors a
layer needs in feature space come from ONE product with ``W_enc`` (reading it
dominates at these sizes). Only the elementwise activation and the top-k remain per
step. ``method="auto"`` falls back, chunk by chunk, to encoding the d_model step
vectors when that is cheaper (tiny models). Other SAEs (gated, normalising inputs,
...) go through ``method="direct"``: step vectors built in d_model space and encoded
with the SAE's own ``encode`` in large batches. All agree to float rounding (tests).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from trajectory.evolution import Evolution, LayerRows, default_metadata, row_offset

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from trajectory.attention import LayerActivations
    from trajectory.sae_bank import SAEBank

METHODS = ("auto", "feature_space", "direct")

#: Elements of ``[rows, d_sae]`` float32 per batch when ``batch_size`` is not given (128 MB).
DEFAULT_BATCH_ELEMENTS = 2**25


# --------------------------------------------------------------------------- inputs
def prompt_tokens(model: "HookedTransformer", prompt: "str | Sequence[int] | torch.Tensor", max_tokens: int | None = 128):
    """Tokenise ``prompt`` (BOS prepended as the model does) and check its length.

    Returns ``(ids [N] int64 tensor, token strings)``. Raises ``ValueError`` for an
    empty prompt, fewer than 2 tokens, more than ``max_tokens`` or more than the
    model's context ``n_ctx``.
    """
    import torch

    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("the prompt is empty; pass some text with --prompt or a non-empty line in --prompt-file")
        ids = model.to_tokens(prompt)[0].cpu()
    else:
        ids = torch.as_tensor(prompt, dtype=torch.long).flatten().cpu()
    N = int(ids.shape[0])
    if N < 2:
        raise ValueError(f"the prompt has {N} token(s) (BOS included); the evolution needs at least 2")
    if max_tokens is not None and N > max_tokens:
        raise ValueError(
            f"the prompt has {N} tokens (BOS included), more than max_tokens={max_tokens}; "
            "shorten it or raise --max-tokens"
        )
    n_ctx = int(model.cfg.n_ctx)
    if N > n_ctx:
        raise ValueError(f"the prompt has {N} tokens, more than the model's context of {n_ctx}; shorten it")
    strs = [model.tokenizer.decode([int(t)]) for t in ids] if model.tokenizer is not None else [str(int(t)) for t in ids]
    return ids, strs


_RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|mid|post)$")


def check_bank(model: "HookedTransformer", bank: "SAEBank", layers: Sequence[int] | None) -> list[int]:
    """Validate that ``bank`` fits ``model`` at ``layers`` (``None``: all bank layers).

    Returns the sorted layers. Raises ``ValueError`` for layers outside the model or
    the bank, an SAE whose ``d_in`` differs from ``d_model``, or an SAE that reads a
    hook other than layer L's residual stream.
    """
    n_layers = int(model.cfg.n_layers)
    check = getattr(bank, "check_model", None)
    if callable(check):
        check(model)
    if layers is None:
        layers = list(bank.layers)
    layers = sorted({int(L) for L in layers})
    if not layers:
        raise ValueError("no layers to compute; pass --layers, e.g. 0-17")
    out_of_model = [L for L in layers if not 0 <= L < n_layers]
    if out_of_model:
        raise ValueError(
            f"layer(s) {out_of_model} out of range: {model.cfg.model_name} has layers 0-{n_layers - 1}"
        )
    missing = [L for L in layers if L not in bank.layers]
    if missing:
        raise ValueError(
            f"layer(s) {missing} are not in the SAE bank (it has {list(bank.layers)}); "
            "preload them with `trajectory preload --layers ...` or pass --layers within the bank"
        )
    d_model = int(model.cfg.d_model)
    for L in layers:
        hook = bank.hook_name(L)
        m = _RESID_HOOK.match(hook or "")
        if m is None or int(m.group(1)) != L:
            raise ValueError(
                f"the SAE of layer {L} reads {hook!r}, not layer {L}'s residual stream "
                f"(blocks.{L}.hook_resid_post); this bank does not fit the evolution — use a residual-stream bank"
            )
        d_in = int(bank[L].cfg.d_in)
        if d_in != d_model:
            raise ValueError(
                f"the SAE of layer {L} expects d_in={d_in} but {model.cfg.model_name} has d_model={d_model}; "
                "the bank was made for another model — preload a bank for this model's preset"
            )
    return layers


# ------------------------------------------------------------------ top-k selection
def select_active_topk(acts: "torch.Tensor", k: int, active: "torch.Tensor | None" = None):
    """Top-k features of each row among ACTIVE ones (activation > 0).

    Order: activation descending, ties by feature index ascending (deterministic).
    Rows with fewer than ``k`` active features keep all of them.

    Args:
        acts: ``[rows, d_sae]`` activations (or pre-activations when ``active`` is given).
        k: maximum features kept per row.
        active: optional ``[rows, d_sae]`` bool mask of active features; entries of
            ``acts`` outside it are ignored (saves materialising the activations).

    Returns:
        ``(indices int32 [total], values float32 [total], counts int64 [rows],
        n_active int32 [rows])`` as numpy arrays, rows concatenated in order.
    """
    import torch

    R, f = acts.shape
    if active is None:
        active = acts > 0
    rows, cols = active.nonzero(as_tuple=True)  # row-major, columns ascending
    n_active = torch.bincount(rows, minlength=R)
    if rows.numel() <= 4 * R * k:  # sparse rows: sort only the active entries
        idx, val = _rank_entries(rows, cols, acts[rows, cols].float(), n_active, k)
    else:
        acts = torch.where(active, acts.float(), 0.0)
        kk = min(k, f)
        val, idx = torch.topk(acts, kk, dim=-1, sorted=True)
        kth = val[:, -1:]
        # rows where equal values straddle the cut: redo them with a full stable sort
        straddle = ((acts >= kth).sum(-1) > kk) & (kth[:, 0] > 0)
        for r in torch.nonzero(straddle).flatten().tolist():
            o = torch.sort(acts[r], descending=True, stable=True).indices[:kk]
            idx[r], val[r] = o, acts[r, o]
        o = torch.sort(idx, dim=-1).indices  # ties by index: sort by index, then stably by value
        idx, val = idx.gather(-1, o), val.gather(-1, o)
        o = torch.sort(val, dim=-1, descending=True, stable=True).indices
        idx, val = idx.gather(-1, o), val.gather(-1, o)
        mask = val > 0
        idx, val = idx[mask], val[mask]
    return _selection_arrays(idx, val, n_active, k)


def _rank_entries(rows, cols, vals, n_active, k: int):
    """Rank ragged active entries: ``rows`` ascending, within a row ``vals`` descending,
    ties in the given (column-ascending) order; keep the first ``k`` of each row.

    Args: ``rows``, ``cols`` int ``[m]`` (grouped by row, columns ascending within a
    row), ``vals`` float32 ``[m]``, ``n_active [R]`` entries per row. Returns ``(cols,
    vals)`` of the kept entries in final order.
    """
    import torch

    if vals.numel() and bool(vals.min() > 0):
        # one sort on (row ascending, value descending): positive floats order like
        # their bit patterns, so the key is row << 31 | (2^31 - 1 - bits); stable,
        # so equal values keep the column-ascending order
        bits = vals.view(torch.int32).to(torch.int64)
        order = torch.sort((rows.to(torch.int64) << 31) | (0x7FFFFFFF - bits), stable=True).indices
    else:  # zero or negative activations marked active: two stable sorts
        order = torch.sort(vals, descending=True, stable=True).indices
        order = order[torch.sort(rows[order], stable=True).indices]
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = torch.cumsum(n_active, 0) - n_active
    keep = (torch.arange(rows.numel(), device=rows.device) - starts[rows]) < k
    return cols[keep], vals[keep]


def select_candidates_topk(vals: "torch.Tensor", idx: "torch.Tensor", k: int):
    """:func:`select_active_topk` for rows given as candidate lists, e.g. a TopK SAE's
    own top ``sae_k`` (no ``[rows, d_sae]`` matrix to scan).

    Args:
        vals: ``[rows, c]`` activations of the candidates (active where > 0).
        idx: ``[rows, c]`` their feature indices (distinct within a row, any order).
        k: maximum features kept per row.

    Returns: as :func:`select_active_topk`.
    """
    import torch

    R, c = vals.shape
    order = torch.sort(idx, dim=-1).indices  # columns ascending within each row (tie order)
    idx, vals = idx.gather(-1, order), vals.gather(-1, order).float()
    active = (vals > 0).flatten()
    rows = torch.arange(R, device=vals.device).repeat_interleave(c)[active]
    n_active = torch.bincount(rows, minlength=R)
    cols, val = _rank_entries(rows, idx.flatten()[active], vals.flatten()[active], n_active, k)
    return _selection_arrays(cols, val, n_active, k)


def _selection_arrays(idx, val, n_active, k: int):
    """The numpy return value of the selections: ``(indices int32, values float32,
    counts int64 [rows], n_active int32 [rows])``."""
    import torch

    return (
        idx.to(torch.int32).cpu().numpy(),
        val.to(torch.float32).cpu().numpy(),
        torch.clamp(n_active, max=k).cpu().numpy().astype(np.int64),
        n_active.to(torch.int32).cpu().numpy(),
    )


# ------------------------------------------------------------------- SAE encoders
@dataclass
class LinearEncoder:
    """An SAE encoder written as ``activation((x - b_in) @ W_enc + b_enc)``.

    Attributes:
        kind: ``"jumprelu"``, ``"relu"`` or ``"topk"``.
        W_enc: ``[d_in, d_sae]`` float32; b_enc: ``[d_sae]``; b_in: ``[d_in]``
            (``b_dec`` when the SAE subtracts it from its input, else zeros).
        threshold: ``[d_sae]`` (jumprelu); sae_k: the SAE's own k (topk);
        feature_scale: ``[d_sae]`` multiplying the pre-activations (TopK SAEs that
            rescale by decoder norm), else ``None``.
    """

    kind: str
    W_enc: "torch.Tensor"
    b_enc: "torch.Tensor"
    b_in: "torch.Tensor"
    threshold: "torch.Tensor | None" = None
    sae_k: int = 0
    feature_scale: "torch.Tensor | None" = None

    @classmethod
    def from_sae(cls, sae: "SAE", device) -> "LinearEncoder | None":
        """The linear form of ``sae`` on ``device`` (float32), or ``None`` when its encoder is not one."""
        import torch

        kinds = {"JumpReLUSAE": "jumprelu", "StandardSAE": "relu", "TopKSAE": "topk"}
        kind = kinds.get(type(sae).__name__)
        cfg = sae.cfg
        if kind is None or getattr(cfg, "normalize_activations", "none") not in ("none", None):
            return None
        if getattr(cfg, "hook_head_index", None) is not None:
            return None

        def f32(t):
            return t.detach().to(device=device, dtype=torch.float32)

        b_in = f32(sae.b_dec) if cfg.apply_b_dec_to_input else torch.zeros(cfg.d_in, device=device)
        enc = cls(kind=kind, W_enc=f32(sae.W_enc), b_enc=f32(sae.b_enc), b_in=b_in)
        if kind == "jumprelu":
            enc.threshold = f32(sae.threshold)
        if kind == "topk":
            enc.sae_k = int(cfg.k)
            if getattr(cfg, "rescale_acts_by_decoder_norm", False):
                enc.feature_scale = f32(sae.W_dec).norm(dim=-1)
        return enc

    def pre(self, x: "torch.Tensor") -> "torch.Tensor":
        """Pre-activations of d_model vectors ``x [..., d_in]`` -> ``[..., d_sae]`` (no feature_scale)."""
        return (x - self.b_in) @ self.W_enc + self.b_enc

    def select(self, pre: "torch.Tensor", k: int):
        """Top-k active features of each row of pre-activations ``[rows, d_sae]``
        (feature_scale already applied), activated as the SAE's ``encode`` does; returns
        what :func:`select_active_topk` returns. JumpReLU and ReLU only compute the mask
        (the values are ``pre`` itself); TopK ranks the SAE's own top ``sae_k`` directly,
        with no ``[rows, d_sae]`` activation matrix."""
        import torch

        if self.kind == "jumprelu":  # relu(pre) * (pre > θ) is pre where pre > max(θ, 0)
            return select_active_topk(pre, k, pre > self.threshold.clamp(min=0))
        if self.kind == "relu":
            return select_active_topk(pre, k, pre > 0)
        vals, idx = torch.topk(pre, self.sae_k, dim=-1, sorted=False)
        return select_candidates_topk(vals.relu(), idx, k)


# --------------------------------------------------------------------- per layer
def _query_chunks(N: int, batch_rows: int, max_queries: int | None = None) -> list[list[int]]:
    """Queries 1..N-1 grouped so that each group's step rows fit ``batch_rows``
    (and, when given, at most ``max_queries`` queries per group)."""
    chunks, cur = [], []
    for q in range(1, N):
        if cur and ((len(cur) + 1) * (q + 3) > batch_rows or (max_queries and len(cur) >= max_queries)):
            chunks.append(cur)
            cur = []
        cur.append(q)
    if cur:
        chunks.append(cur)
    return chunks


def _feature_space_pieces(
    model,
    acts: "LayerActivations",
    enc: LinearEncoder,
    postnorm: str,
    queries: list[int],
    cache: dict,
    always_mix: bool = True,
):
    """Pre-activations of all step rows of ``queries``, mixed in feature space.

    Every row is a combination of vectors already in feature space: the per-key,
    per-head encoded values ``F[k, h]``, the encoded output bias ``F_b``, and the
    encoded ``resid_pre[q]`` / ``resid_post[q]``. So one matrix ``T`` of mixing
    weights (attention pattern × causal cumulative mask / partial-sum RMS) and ONE
    product ``T @ [F; F_b; base; mlp]`` give the whole chunk; its inner dimension
    ``K·n_heads + 1 + 2Q`` is well below ``d_model`` for the prompt lengths used.
    When it is not (and ``always_mix`` is false), the step vectors are built in
    d_model space and put through the same linear encoder instead. ``cache`` (one
    dict per layer, filled on the first chunk) keeps the per-layer encoded vectors.

    Yields:
        ``(pre [rows, d_sae] float32, final_pos [rows] or None)`` pieces that together
        cover the ``Σ_q (q + 3)`` step rows of the chunk: piece row i is row
        ``final_pos[i]`` of the chunk in (q, step) order (``None``: one piece, already in
        order). Each piece is consumed (activation, top-k) before the next is made, so
        it lives in one reused buffer of a few MB that stays in the CPU cache; the
        whole chunk's ``[rows, d_sae]`` never exists at once.
    """
    import torch

    from trajectory.attention import _norm_params, head_values, mix_keys, output_bias

    device = enc.W_enc.device
    L = acts.layer
    c = cache
    if "F" not in c:  # once per layer: encode per-key, per-head value vectors, resid_pre and resid_post
        w, eps = _norm_params(model, L, postnorm, device, torch.float32)
        u = head_values(model, acts).to(device)  # [N, h, d]
        N, H, d = u.shape
        bO = output_bias(model, L, device)
        W = enc.W_enc if enc.feature_scale is None else enc.W_enc * enc.feature_scale
        b_enc = enc.b_enc if enc.feature_scale is None else enc.b_enc * enc.feature_scale
        # one product for all of them: reading W_enc (d_model × d_sae) dominates at these sizes
        X = torch.cat(
            [
                (u * w).reshape(N * H, d),  # per-key, per-head values through W_O and the norm weight
                (w * bO)[None],  # the output bias
                acts.resid_pre.to(device, torch.float32) - enc.b_in,
                acts.resid_post.to(device, torch.float32) - enc.b_in,
            ]
        )
        Y = X @ W
        c.update(
            u=u.reshape(N * H, d),
            W=W,
            b_enc=b_enc,
            bO=bO,
            eps=eps,
            H=H,
            F=Y[: N * H],  # [N·h, f], row k·h + h
            Fb=Y[N * H : N * H + 1],  # [1, f]
            base=Y[N * H + 1 : N * H + 1 + N] + b_enc,  # [N, f] encoder pre-activation of resid_pre
            mlp=Y[N * H + 1 + N :] + b_enc,  # [N, f] ... of resid_post
            pattern=acts.pattern.to(device, torch.float32),
            scale=None if acts.scale is None else acts.scale.to(device, torch.float32),
        )
    H = c["H"]
    q0, q1 = queries[0], queries[-1]
    Q, K = len(queries), q1 + 1
    if not always_mix and min(K, _KEY_BLOCK) * H + 2 * Q >= c["u"].shape[1]:
        # mixing would cost more than encoding the d_model step vectors: encode those
        yield (_layer_steps_direct(model, acts, postnorm, queries, device) - enc.b_in) @ c["W"] + c["b_enc"], None
        return
    # 1/r for every (q, j): the partial sum's own RMS (in d_model space), the frozen scale, or 1
    p = c["pattern"][:, q0 : q1 + 1, :K]  # [h, Q, K]
    if postnorm == "per_partial_sum":
        S = mix_keys(p, c["u"][: K * H].reshape(K, H, -1)).cumsum(1) + c["bO"]
        inv_r = (S.pow(2).mean(-1) + c["eps"]).rsqrt()  # [Q, K]
    elif postnorm == "frozen_scale":
        inv_r = (1.0 / c["scale"][q0 : q1 + 1])[:, None].expand(Q, K)
    else:
        inv_r = torch.ones(Q, K, device=device)
    # Keys in blocks of B: row (q, j) with j in block b is
    #   base[q] + (P[q, b] + Σ_{b0 ≤ k ≤ j} Σ_h pattern[h,q,k] F[k,h]) / r[q, j]
    # where P[q, b] = F_b + all keys before the block (one small product per block), so
    # each row's product has inner dimension B·h + 2Q instead of K·h + 1 + 2Q.
    # B is _KEY_BLOCK, or more for narrow SAEs, up to a piece of _PIECE_ELEMENTS (fewer,
    # larger pieces: per-piece overhead dominates there) while B·h + 2Q stays < d_model.
    f, d_model = c["F"].shape[1], c["u"].shape[1]
    B = max(_KEY_BLOCK, min(_PIECE_ELEMENTS // (Q * f), (d_model - 2 * Q - 1) // H))
    qs = torch.tensor(queries, device=device)
    sizes = qs + 3
    starts = torch.cumsum(sizes, 0) - sizes  # final row of each query's "initial" step
    # one buffer per layer, reused by every piece of every chunk (a fresh allocation would
    # pay its page faults again each time, and a small one stays in the CPU cache)
    need = max(B * len(queries), 2 * Q)
    buf = c.get("buffer")
    if buf is None or buf.shape[0] < need:
        buf = c["buffer"] = torch.empty(need, f, device=device)
    prefix = c["Fb"].expand(Q, -1).clone()  # P[:, b]: F_b + keys before the block
    for k0 in range(0, K, B):
        k1 = min(k0 + B, K)
        live = qs >= k0  # queries with a key in this block
        qi = torch.nonzero(live).flatten()
        n_j = torch.clamp(qs[qi] - k0 + 1, max=k1 - k0)  # rows per live query
        row_qi = torch.repeat_interleave(qi, n_j)
        row_j = k0 + torch.cat([torch.arange(int(m), device=device) for m in n_j])
        rows = row_qi.numel()
        inv = inv_r[row_qi, row_j]  # [rows]
        coef = p[:, row_qi, k0:k1].permute(1, 2, 0)  # [rows, Bk, h]
        coef = coef * (torch.arange(k0, k1, device=device)[None, :] <= row_j[:, None])[..., None]
        T = torch.zeros(rows, (k1 - k0) * H + 2 * Q, device=device)
        T[:, : (k1 - k0) * H] = coef.reshape(rows, -1) * inv[:, None]
        ar = torch.arange(rows, device=device)
        T[ar, (k1 - k0) * H + row_qi] = inv  # prefix P[q, b]
        T[ar, (k1 - k0) * H + Q + row_qi] = 1.0  # base[q]
        G = torch.cat([c["F"][k0 * H : k1 * H], prefix, c["base"][q0 : q1 + 1]])
        pre = buf[:rows]
        torch.mm(T, G, out=pre)
        yield pre, starts[row_qi] + 1 + row_j
        if k1 < K:  # move the prefix past this block
            blk = p[:, :, k0:k1].permute(1, 2, 0).reshape(Q, -1)  # [Q, Bk·h]
            prefix += blk @ c["F"][k0 * H : k1 * H]
    pre = buf[: 2 * Q]
    pre[:Q] = c["base"][qs]
    pre[Q:] = c["mlp"][qs]
    yield pre, torch.cat([starts, starts + qs + 2])


#: Keys per block in the feature-space mixing (see :func:`_feature_space_pieces`): the least.
_KEY_BLOCK = 8
#: Elements of one piece's ``[rows, d_sae]`` buffer that narrow SAEs grow blocks up to (8 MB float32).
_PIECE_ELEMENTS = 2**21


def _reorder_rows(part: tuple, final_pos: np.ndarray) -> tuple:
    """Put ragged selection results ``(idx, val, counts, n_active)`` from buffer order into
    final order (buffer row i goes to position ``final_pos[i]``)."""
    idx, val, counts, n_active = part
    order = np.argsort(final_pos, kind="stable")  # buffer rows, in final order
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    new_counts = counts[order]
    take = np.repeat(offsets[:-1][order] - np.concatenate([[0], np.cumsum(new_counts)[:-1]]), new_counts)
    take += np.arange(take.size, dtype=np.int64)
    return idx[take], val[take], new_counts, n_active[order]


def _layer_steps_direct(model, acts: "LayerActivations", postnorm: str, queries: list[int], device):
    """Step vectors of ``queries`` in d_model space: ``[Σ_q (q + 3), d_model]``, rows (q, step)."""
    import torch

    from trajectory.attention import attn_partial_sums

    P = attn_partial_sums(model, acts, acts.layer, queries=queries, postnorm=postnorm).to(device)
    pre = acts.resid_pre.to(device, torch.float32)
    post = acts.resid_post.to(device, torch.float32)
    parts = []
    for i, q in enumerate(queries):
        parts += [pre[q : q + 1], pre[q] + P[i, : q + 1], post[q : q + 1]]
    return torch.cat(parts)


def evolve_layer(
    model: "HookedTransformer",
    sae: "SAE",
    acts: "LayerActivations",
    *,
    k: int = 400,
    postnorm: str = "per_partial_sum",
    method: str = "auto",
    batch_size: int | None = None,
    device=None,
) -> LayerRows:
    """All (n, step) top-k rows of one layer, from that layer's recorded activations.

    Args:
        model: the model that produced ``acts`` (for W_O, b_O and the post-norm).
        sae: the layer's SAE.
        acts: :class:`~trajectory.attention.LayerActivations` of one forward pass.
        k: features kept per step (active ones only).
        postnorm: ``"per_partial_sum"`` or ``"frozen_scale"`` (``"none"`` is used by
            itself on models without a post-attention norm).
        method: ``"feature_space"``, ``"direct"`` or ``"auto"``.
        batch_size: step rows per batch (default: ``DEFAULT_BATCH_ELEMENTS / d_sae``).
        device: where to compute (default: where ``acts`` live).

    Returns:
        :class:`~trajectory.evolution.LayerRows` with ``Σ_{n=2..N} (n + 2)`` rows.
    """
    import torch

    from trajectory.attention import resolve_postnorm

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    device = torch.device(device) if device is not None else acts.resid_pre.device
    variant = resolve_postnorm(model, acts.layer, postnorm)
    d_sae = int(sae.cfg.d_sae)
    batch_rows = int(batch_size or max(64, DEFAULT_BATCH_ELEMENTS // d_sae))
    enc = LinearEncoder.from_sae(sae, device) if method in ("auto", "feature_space") else None
    if method == "feature_space" and enc is None:
        raise ValueError(f"{type(sae).__name__} has no linear encoder form; use method='direct' or 'auto'")
    N = acts.n_pos
    parts: list[tuple] = []
    fs_cache: dict = {}
    moved_from = None
    if enc is None and sae.W_enc.device != device:
        moved_from = sae.W_enc.device
        sae.to(device)
    try:
        with torch.no_grad():
            # feature-space mixing: few queries per chunk keep its products' inner dimension small
            n_heads = int(model.blocks[acts.layer].attn.W_O.shape[0])
            max_queries = max(8, _KEY_BLOCK * n_heads // 2) if enc is not None else None
            for queries in _query_chunks(N, batch_rows, max_queries):
                if enc is not None:
                    pieces, positions = [], []
                    for pre, final_pos in _feature_space_pieces(
                        model, acts, enc, variant, queries, fs_cache, always_mix=method == "feature_space"
                    ):
                        pieces.append(enc.select(pre, k))
                        positions.append(None if final_pos is None else final_pos.cpu().numpy())
                        del pre
                    if positions[0] is None:
                        parts.append(pieces[0])
                    else:
                        joined = tuple(np.concatenate([pc[i] for pc in pieces]) for i in range(4))
                        parts.append(_reorder_rows(joined, np.concatenate(positions)))
                else:
                    x = _layer_steps_direct(model, acts, variant, queries, device)
                    step_acts = sae.encode(x.to(sae.W_enc.dtype))
                    parts.append(select_active_topk(step_acts, k))
                    del step_acts
    finally:
        fs_cache.clear()
        if moved_from is not None:
            sae.to(moved_from)
    counts = np.concatenate([p[2] for p in parts])
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    rows = LayerRows(
        indices=np.concatenate([p[0] for p in parts]),
        values=np.concatenate([p[1] for p in parts]),
        offsets=offsets,
        n_active=np.concatenate([p[3] for p in parts]),
    )
    assert counts.size == row_offset(N + 1), "row layout mismatch"
    return rows


# ------------------------------------------------------------------------ public
def evolve(
    model: "HookedTransformer",
    bank: "SAEBank",
    prompt: "str | Sequence[int] | torch.Tensor",
    *,
    k: int = 400,
    layers: Iterable[int] | None = None,
    max_tokens: int | None = 128,
    postnorm: str = "per_partial_sum",
    device=None,
    progress: bool = True,
    batch_size: int | None = None,
    method: str = "auto",
    preset: str | None = None,
) -> Evolution:
    """Top-k SAE features of every (prefix length, layer, step) of ``prompt``.

    Args:
        model: a TransformerLens ``HookedTransformer`` (e.g. from ``trajectory.load_model``).
        bank: the SAE bank (``bank[L]`` is layer L's sae-lens SAE).
        prompt: text (BOS prepended as the model does) or token ids ``[N]``.
        k: features kept per step, strongest first, active ones only.
        layers: layers to compute (default: all layers of the bank).
        max_tokens: refuse longer prompts (BOS included); ``None``: only ``n_ctx`` applies.
        postnorm: ``"per_partial_sum"`` (the original method: each partial sum normalised
            with its own RMS) or ``"frozen_scale"`` (exact linear split); models without
            a post-attention norm always use none.
        device: where to compute (default: the model's device). SAE weights are moved
            there one layer at a time.
        progress: show a progress bar over layers.
        batch_size: step rows per encode batch (default from the SAE width).
        method: ``"auto"`` (feature-space mixing when the SAE allows, else direct),
            ``"feature_space"`` or ``"direct"``.
        preset: preset name recorded in the result (default: ``bank.preset``).

    Returns:
        :class:`~trajectory.evolution.Evolution`.

    Example:
        >>> from trajectory.testing import tiny_model, tiny_bank
        >>> model = tiny_model(); bank = tiny_bank(model)
        >>> evo = evolve(model, bank, "mark gave flashlight to", k=5, progress=False)
        >>> evo.tokens, evo.steps(2)
        (['<bos>', 'mark', 'gave', 'flashlight', 'to'], ['initial', "key 0 '<bos>'", "key 1 'mark'", 'mlp'])
    """
    from tqdm.auto import tqdm

    from trajectory.attention import POSTNORMS, collect_activations

    if postnorm not in POSTNORMS:
        raise ValueError(f"unknown postnorm {postnorm!r}; use one of {', '.join(POSTNORMS)}")
    layers = check_bank(model, bank, None if layers is None else list(layers))
    ids, strs = prompt_tokens(model, prompt, max_tokens)
    device = device if device is not None else model.cfg.device
    all_acts = collect_activations(model, ids, layers)
    rows: dict[int, LayerRows] = {}
    used_postnorm = postnorm if any(hasattr(model.blocks[L], "ln1_post") for L in layers) else "none"
    for L in tqdm(layers, desc="evolve layers", disable=not progress, unit="layer"):
        rows[L] = evolve_layer(
            model, bank[L], all_acts.pop(L), k=k, postnorm=postnorm, method=method, batch_size=batch_size, device=device
        )
    settings = dict(k=k, layers=layers, max_tokens=max_tokens, postnorm=postnorm, method=method, device=str(device))
    meta = default_metadata(settings)
    meta["saes"] = {str(L): _sae_summary(bank, L) for L in layers}
    if getattr(bank, "path", None) is not None:
        # stage 3 finds the bank's own explanations (locally trained SAEs) through this
        meta["bank"] = str(Path(bank.path).resolve())
    if isinstance(prompt, str):
        meta["prompt"] = prompt
    return Evolution(
        tokens=strs,
        token_ids=[int(t) for t in ids],
        layers=layers,
        k=int(k),
        rows=rows,
        model_name=str(getattr(bank, "model_name", "") or model.cfg.model_name),
        preset=preset if preset is not None else getattr(bank, "preset", None),
        postnorm=used_postnorm,
        metadata=meta,
    )


def _sae_summary(bank, L: int) -> dict[str, Any]:
    sae = bank[L]
    entry = bank.entry(L) if hasattr(bank, "entry") else None
    return dict(
        hook_name=bank.hook_name(L),
        architecture=type(sae).__name__,
        d_sae=int(sae.cfg.d_sae),
        dtype=str(sae.W_enc.dtype).replace("torch.", ""),
        source=getattr(entry, "source", None),
        neuronpedia_id=getattr(entry, "neuronpedia_id", None),
    )


def evolve_many(
    model: "HookedTransformer",
    bank: "SAEBank",
    prompts: Sequence[str],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    **kwargs: Any,
) -> list[Path]:
    """Evolve each prompt into ``out_dir/prompt_{i:04d}.safetensors``; resumable.

    A file that already exists, reads back and matches the prompt's tokens and the
    settings (k, layers, postnorm) is kept, so a rerun after an interruption does only
    the missing prompts (files are written atomically: never half-written). A file
    from other settings raises ``ValueError`` unless ``overwrite``; an unreadable one
    is recomputed. ``out_dir/index.json`` lists prompt -> file.

    Returns the paths, one per prompt, in order.
    """
    import json

    from tqdm.auto import tqdm

    from trajectory.io import atomic_write

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    max_tokens = kwargs.get("max_tokens", 128)
    k = int(kwargs.get("k", 400))
    postnorm = kwargs.get("postnorm", "per_partial_sum")
    layers = check_bank(model, bank, kwargs.get("layers"))
    kwargs["layers"] = layers
    model_name = str(getattr(bank, "model_name", "") or model.cfg.model_name)
    saes = {str(L): _sae_summary(bank, L) for L in layers}
    # validate every prompt before spending time on any
    ids = [prompt_tokens(model, p, max_tokens)[0] for p in prompts]
    paths = [out_dir / f"prompt_{i:04d}.safetensors" for i in range(len(prompts))]
    with atomic_write(out_dir / "index.json") as fh:
        json.dump([dict(prompt=p, file=path.name) for p, path in zip(prompts, paths)], fh, indent=1)
    for prompt, tok, path in tqdm(list(zip(prompts, ids, paths)), desc="prompts", disable=not progress, unit="prompt"):
        if path.exists() and not overwrite:
            try:
                done = Evolution.load(path)
            except ValueError:
                done = None  # corrupt: recompute
            if done is not None:
                same_prompt = done.token_ids == [int(t) for t in tok]
                same_settings = done.k == k and done.layers == layers and (done.postnorm in (postnorm, "none"))
                same_saes = done.model_name == model_name and done.metadata.get("saes") == saes
                if same_prompt and same_settings and same_saes:
                    continue
                raise ValueError(
                    f"{path} holds another prompt, model, SAE bank or other settings (k={done.k}, "
                    f"layers={done.layers}, postnorm={done.postnorm}, model={done.model_name!r}); "
                    "use another output folder or --overwrite"
                )
        evolve(model, bank, prompt, progress=False, **kwargs).save(path)
    return paths

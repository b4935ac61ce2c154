"""Benchmarks of the evolution engine (``trajectory bench evolve``): ratios measured in
one run on the same inputs.

Three ways to compute the same evolution of one prompt are timed:

``engine``
    :func:`trajectory.engine.evolve` (one forward pass, feature-space mixing, top-k
    among active features).
``original``
    a faithful re-implementation of the original research loop: one forward pass;
    per layer the SAE is loaded from disk; per query position the attention output is
    decomposed for that query, its step vectors are built, moved to the SAE's device
    and encoded in one small call, and ``torch.topk`` keeps k indices.
``floor``
    the naive floor: one forward pass, then all step vectors of a layer built in
    d_model space and encoded in ONE batched ``sae.encode`` call per layer (no top-k).

SAEs: random JumpReLU SAEs of Gemma Scope widths (16k, 65k; ``d_in = d_model``) with
thresholds set so that about ``l0`` features fire per input (Gemma Scope's L0 is in the
tens to low hundreds), and the preloaded bank of the preset when it exists. Peak memory
is the highest resident-set size (CPU) or allocated CUDA memory above the level before
each method started. On CPU, times are the process's CPU seconds per torch thread
(see :func:`timed`), so that other jobs on a shared machine disturb them less.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformer_lens import HookedTransformer

    from trajectory.sae_bank import SAEBank


@dataclass
class BenchRow:
    """One line of the table: seconds and peak memory (MB) of each method, and the
    seconds of the one forward pass that engine and floor include (``forward_s``)."""

    saes: str
    n_tokens: int
    layers: int
    engine_s: float
    original_s: float
    floor_s: float
    engine_mb: float
    original_mb: float
    floor_mb: float
    forward_s: float = float("nan")
    max_abs_diff: float = float("nan")
    rows_equal: float = float("nan")
    rows_equal_but_ties: float = float("nan")
    original_equal: float = float("nan")

    @property
    def speedup_vs_original(self) -> float:
        return self.original_s / self.engine_s

    @property
    def speedup_vs_floor(self) -> float:
        return self.floor_s / self.engine_s


# ----------------------------------------------------------------- measuring
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: str) -> Iterator[dict]:
    """Yield a dict whose ``"mb"`` is set, on exit, to the peak memory above the start (MB)."""
    import torch

    out: dict = {}
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield out
        torch.cuda.synchronize()
        out["mb"] = (torch.cuda.max_memory_allocated() - start) / 2**20
        return
    try:  # hand freed heap memory back to the OS, so the resident size starts low
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    start = _rss_bytes()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["mb"] = max(0, max(peak[0], _rss_bytes()) - start) / 2**20


def timed(fn: Callable[[], object], device: str, repeats: int = 1, clock: str = "wall") -> tuple[float, float]:
    """(best seconds, peak MB) of ``fn`` over ``repeats`` runs.

    ``clock="wall"`` (default): wall-clock seconds. ``clock="cpu"`` (CPU only): this
    process's CPU seconds divided by the number of torch threads, which other jobs on a
    shared machine disturb less (but which flatters single-threaded Python loops).
    """
    import gc

    import torch

    cuda = str(device).startswith("cuda")
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    use_cpu = clock == "cpu" and not cuda
    clock_fn = time.process_time if use_cpu else time.perf_counter
    scale = 1.0 / max(1, torch.get_num_threads()) if use_cpu else 1.0
    best, mb = float("inf"), 0.0
    for _ in range(repeats):
        gc.collect()
        with peak_memory(device) as mem:
            t = clock_fn()
            fn()
            if cuda:
                torch.cuda.synchronize()
            best = min(best, (clock_fn() - t) * scale)
        mb = max(mb, mem["mb"])
    return best, mb


# ------------------------------------------------------------------ baselines
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

    from trajectory.attention import attn_partial_sums, collect_activations

    total = 0
    with torch.no_grad():
        acts = collect_activations(model, tokens, layers)
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
    import torch

    from trajectory.engine import select_active_topk

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


# ------------------------------------------------------------------------ SAEs
def calibrated_random_bank(
    model: "HookedTransformer", tokens: "torch.Tensor", layers: Sequence[int], d_sae: int, *, l0: int = 64, seed: int = 0, dtype: str = "float32"
) -> "SAEBank":
    """Random JumpReLU SAEs (``d_in = d_model``) whose threshold makes about ``l0``
    features fire on the layer's residual vectors of ``tokens``."""
    import torch

    from trajectory.attention import collect_activations
    from trajectory.sae_bank import SAEBank
    from trajectory.testing import random_sae

    acts = collect_activations(model, tokens, layers)
    saes = {}
    for L in layers:
        sae = random_sae(model.cfg.d_model, d_sae, architecture="jumprelu", seed=seed + L, dtype="float32",
                         hook_name=f"blocks.{L}.hook_resid_post")
        with torch.no_grad():
            sae.b_enc.zero_()
            x = torch.cat([acts[L].resid_pre, acts[L].resid_post]).float()
            pre = ((x - sae.b_dec) @ sae.W_enc).flatten()
            cut = pre.numel() - max(1, int(l0 * pre.numel() / d_sae))
            sae.threshold.fill_(float(pre.kthvalue(cut).values.clamp(min=1e-6)))
        saes[L] = sae.to(dtype=getattr(torch, dtype)) if dtype != "float32" else sae
    return SAEBank.from_saes(saes, model_name=model.cfg.model_name)


def _disk_copies(bank: "SAEBank", layers: Sequence[int], folder: Path) -> dict[int, Path]:
    """Save each layer's SAE as a sae-lens folder (what the original loop loads)."""
    out = {}
    for L in layers:
        path = folder / f"layer_{L}"
        bank[L].save_model(str(path))
        out[L] = path
    return out


def prompt_of_length(model: "HookedTransformer", n_tokens: int, text: str | None = None) -> "torch.Tensor":
    """Token ids ``[n_tokens]`` (BOS first): ``text`` repeated and cut to length."""
    import torch

    from trajectory.cli.evolve import ORIGINAL_PROMPT

    text = text or ORIGINAL_PROMPT
    ids = model.to_tokens(text)[0]
    body = ids[1:]
    while body.shape[0] < n_tokens - 1:
        body = torch.cat([body, ids[1:]])
    return torch.cat([ids[:1], body[: n_tokens - 1]]).cpu()


# ------------------------------------------------------------------------- run
def bench_evolve(
    model: "HookedTransformer",
    banks: dict[str, "SAEBank"],
    *,
    lengths: Sequence[int] = (16, 32, 64),
    layers: Sequence[int],
    k: int = 400,
    repeats: int = 1,
    device: str = "cpu",
    skip_original_above: int | None = None,
    clock: str = "wall",
    log: Callable[[str], None] = print,
) -> list[BenchRow]:
    """Time engine, original loop and floor for every bank and prompt length, and check
    (untimed) that the engine's lists equal the direct computation's
    (:func:`check_against_direct`)."""
    from trajectory.attention import collect_activations
    from trajectory.engine import evolve

    rows = []
    with tempfile.TemporaryDirectory(prefix="trajectory-bench-") as tmp:
        for name, bank in banks.items():
            dirs = _disk_copies(bank, layers, Path(tmp) / name.replace("/", "_"))
            for N in lengths:
                tokens = prompt_of_length(model, N)
                # warm-up (its result is checked below)
                evo = evolve(model, bank, tokens, k=k, layers=layers, progress=False, device=device, max_tokens=None)
                orig: dict = {}
                runs = {
                    "engine": lambda: evolve(model, bank, tokens, k=k, layers=layers, progress=False, device=device, max_tokens=None),
                    "original": lambda: orig.update(original_loop(model, dirs, tokens, layers, k=k, device=device)),
                    "floor": lambda: naive_floor(model, bank, tokens, layers, device=device),
                    "forward": lambda: collect_activations(model, tokens, layers),
                }
                if skip_original_above and N > skip_original_above:
                    del runs["original"]
                best = {method: (float("inf"), 0.0) for method in ("engine", "original", "floor", "forward")}
                for _ in range(repeats):  # interleaved, so that a busy machine slows all methods alike
                    for method, fn in runs.items():
                        secs, mb = timed(fn, device, clock=clock)
                        best[method] = (min(best[method][0], secs), max(best[method][1], mb))
                if "original" not in runs:
                    best["original"] = (float("nan"), float("nan"))
                (e_s, e_mb), (o_s, o_mb), (f_s, f_mb) = best["engine"], best["original"], best["floor"]
                check = check_against_direct(evo, model, bank, tokens, layers, device=device, original=orig or None)
                row = BenchRow(name, N, len(layers), e_s, o_s, f_s, e_mb, o_mb, f_mb, best["forward"][0],
                               check["max_abs_diff"], check["rows_equal"], check["rows_equal_but_ties"],
                               check.get("original_active_equal", float("nan")))
                log(format_row(row))
                rows.append(row)
    return rows


HEADER = (
    f"{'SAEs':<22} {'N':>4} {'engine s':>9} {'original s':>11} {'floor s':>8} "
    f"{'orig/engine':>11} {'floor/engine':>12} {'peak MB e/o/f':>17} {'forward s':>9} "
    f"{'=direct':>8} {'=d ties':>8} {'max|Δ|':>8} {'=orig':>6}"
)


def format_row(r: BenchRow) -> str:
    mem = f"{r.engine_mb:.0f}/{r.original_mb:.0f}/{r.floor_mb:.0f}"
    return (
        f"{r.saes:<22} {r.n_tokens:>4} {r.engine_s:>9.3f} {r.original_s:>11.3f} {r.floor_s:>8.3f} "
        f"{r.speedup_vs_original:>10.1f}x {r.speedup_vs_floor:>11.2f}x {mem:>17} {r.forward_s:>9.3f} "
        f"{r.rows_equal:>8.2%} {r.rows_equal_but_ties:>8.2%} {r.max_abs_diff:>8.1e} {r.original_equal:>6.1%}"
    )


LEGEND = (
    "engine/original/floor s: seconds for the same evolution (forward pass included); orig/engine and "
    "floor/engine: speed-ups (higher is better)\n"
    "=direct: rows whose top-k list equals the SAE's own encode of the step vectors (same top-k rule); "
    "=d ties: equal up to reorderings of near-equal activations; max|Δ|: largest activation difference; "
    "=orig: rows whose active features the original loop lists in the same order"
)


def format_table(rows: Sequence[BenchRow]) -> str:
    return "\n".join([HEADER] + [format_row(r) for r in rows] + ["", LEGEND])


def rows_as_dicts(rows: Sequence[BenchRow]) -> list[dict]:
    return [dict(asdict(r), speedup_vs_original=r.speedup_vs_original, speedup_vs_floor=r.speedup_vs_floor) for r in rows]

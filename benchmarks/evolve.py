#!/usr/bin/env python
"""Benchmarks of the evolution engine: ratios measured in one run on the same inputs.

    python benchmarks/evolve.py [options]       # = trajectory bench evolve [options]

Three ways to compute the same evolution of one prompt are timed:

``engine``
    :func:`trajectory.evolve` (one forward pass, feature-space mixing, top-k among
    active features).
``original`` / ``floor``
    the original research loop and the naive floor, from ``tests/reference/evolution_loops.py``
    (the same references the tests check the engine against).

SAEs: random JumpReLU SAEs of Gemma Scope widths (16k, 65k; ``d_in = d_model``) with
thresholds set so that about ``l0`` features fire per input (Gemma Scope's L0 is in the
tens to low hundreds), and the preloaded bank of the preset when it exists. Peak memory
is the highest resident-set size (CPU) or allocated CUDA memory above the level before
each method started. On CPU, times are the process's CPU seconds per torch thread
(see :func:`timed`), so that other jobs on a shared machine disturb them less.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the references live in tests/reference
    sys.path.insert(0, str(ROOT))

from tests.reference.evolution_loops import _disk_copies, check_against_direct, naive_floor, original_loop  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformer_lens import HookedTransformer

    from trajectory.saes.bank import SAEBank


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




# ------------------------------------------------------------------------ SAEs
def calibrated_random_bank(
    model: "HookedTransformer", tokens: "torch.Tensor", layers: Sequence[int], d_sae: int, *, l0: int = 64, seed: int = 0, dtype: str = "float32"
) -> "SAEBank":
    """Random JumpReLU SAEs (``d_in = d_model``) whose threshold makes about ``l0``
    features fire on the layer's residual vectors of ``tokens``."""
    import torch

    from trajectory.evolution.attention import forward_activations
    from trajectory.saes.bank import SAEBank
    from trajectory.testing import random_sae

    acts = forward_activations(model, tokens, layers)
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


def prompt_of_length(model: "HookedTransformer", n_tokens: int, text: str | None = None) -> "torch.Tensor":
    """Token ids ``[n_tokens]`` (BOS first): ``text`` repeated and cut to length."""
    import torch

    from trajectory.pipeline import ORIGINAL_PROMPT

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
    from trajectory.evolution.attention import forward_activations
    from trajectory.evolution.engine import evolve

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
                    "forward": lambda: forward_activations(model, tokens, layers),
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trajectory bench evolve", allow_abbrev=False,
                                description="Evolution engine vs the original loop vs the naive floor, in one run.")
    p.add_argument("--preset", default="offline", help="model preset (default: offline)")
    p.add_argument("--tiny", action="store_true", help="use the tiny test model instead (seconds; for trying it out)")
    p.add_argument("--synthetic", action="store_true",
                   help="use a randomly initialised model with the offline preset's shapes (Gemma 3 270M: d_model 640, "
                   "4 query heads, 1 KV head, d_head 256, 18 layers) instead of loading the real one")
    p.add_argument("--lengths", default="16,32,64", help="prompt lengths N, BOS included (default: 16,32,64)")
    p.add_argument("--widths", default="16384,65536", help="random JumpReLU SAE widths (default: 16384,65536; '' for none)")
    p.add_argument("--l0", type=int, default=64, help="features firing per input in the random SAEs (default: 64)")
    p.add_argument("--layers", default=None, help="layers to run, e.g. 0-17 (default: first, middle and last)")
    p.add_argument("--k", type=int, default=400, help="top-k (default: 400)")
    p.add_argument("--repeats", type=int, default=1, help="runs per measurement, best kept (default: 1)")
    p.add_argument("--bank", default=None, help="also time this SAE bank folder (default: results/banks/<preset> if it exists)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall-clock seconds (default) or CPU seconds per torch thread (steadier on a busy machine)")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    return p


def _bench_model(args):
    """(model, preset or None) for the options."""
    from trajectory.testing import tiny_model

    if args.tiny:
        return tiny_model(), None
    if args.synthetic:
        attn_types = (["local"] * 5 + ["global"]) * 3
        return tiny_model(d_model=640, d_head=256, n_heads=4, n_key_value_heads=1, d_mlp=2048, n_layers=18,
                          rotary_dim=256, window_size=512, attn_types=attn_types,
                          model_name="synthetic-gemma-3-270m-shape"), None
    from trajectory.model.load import load_model
    from trajectory.presets import get_preset

    preset = get_preset(args.preset)
    return load_model(preset.name, device=args.device), preset


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from trajectory.io import atomic_write, default_bank_dir
    from trajectory.model.load import default_device
    from trajectory.presets import parse_layers

    device = args.device or default_device()
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    widths = [int(x) for x in args.widths.split(",") if x.strip()]
    model, preset = _bench_model(args)
    n = model.cfg.n_layers
    layers = parse_layers(args.layers, n) if args.layers else sorted({0, n // 2, n - 1})
    calib = prompt_of_length(model, max(lengths))
    banks = {}
    for width in widths:
        name = f"random-{width // 1024}k-l0{args.l0}" if width >= 1024 else f"random-{width}-l0{args.l0}"
        banks[name] = calibrated_random_bank(model, calib, layers, width, l0=args.l0)
    if preset is not None:
        from trajectory.pipeline import open_bank

        folder = Path(args.bank) if args.bank else default_bank_dir(preset.name)
        if folder.exists():
            banks[f"bank:{preset.name}"] = open_bank(preset.name, folder, layers=layers, device=device)
        elif args.bank:
            raise FileNotFoundError(f"no SAE bank at {folder}")
        else:
            print(f"note: no bank at {folder}; run `trajectory preload --preset {preset.name}` to time it too")
    if not banks:
        raise ValueError("no SAEs to time: pass --widths, or preload a bank (`trajectory preload`)")
    print(f"model {model.cfg.model_name}, device {device}, layers {layers}, k={args.k}, repeats={args.repeats}, "
          f"torch threads {torch.get_num_threads()}")
    print(HEADER)
    rows = bench_evolve(model, banks, lengths=lengths, layers=layers, k=args.k, repeats=args.repeats, device=device,
                        clock=args.clock)
    print("\n" + format_table(rows))
    if args.out:
        with atomic_write(args.out) as fh:
            json.dump(dict(model=model.cfg.model_name, device=device, layers=layers, k=args.k,
                           rows=rows_as_dicts(rows)), fh, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Benchmark of a prompt set's evolution: one prompt at a time versus batched forward passes.

    python benchmarks/evolve_many.py [options]       # = trajectory bench evolve_many [options]

Both ways write one evolution file per prompt into a fresh temporary folder, measured in
the same run on the same model, bank and prompts (``benchmarks/prompts_64.txt`` by default:
64 ordinary English prompts of 12-30 tokens):

``one at a time``
    :func:`trajectory.evolve` and ``save`` per prompt, each with its own forward pass
    (what ``evolve_many`` did before batching).
``batched B``
    :func:`trajectory.evolution.batch.evolve_many` with ``batch_size=B``: prompts of
    similar length share one right-padded forward pass.

Each is preceded by one untimed warm-up prompt. Printed: prompts/min by wall clock and by
CPU seconds per torch thread (steadier when other jobs share the machine), and a check
that the batched files hold the same feature lists as the one-at-a-time ones (largest
activation difference).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = Path(__file__).resolve().parent / "prompts_64.txt"

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

    from trajectory.saes.bank import SAEBank


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trajectory bench evolve_many", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="offline", help="model preset (default: offline)")
    p.add_argument("--bank", default=None, help="SAE bank folder (default: results/banks/<preset>)")
    p.add_argument("--tiny", action="store_true", help="the tiny test model and bank instead (seconds)")
    p.add_argument("--prompts", default=str(PROMPTS), help="prompt file, one per line (default: prompts_64.txt)")
    p.add_argument("--n", type=int, default=None, help="use the first N prompts only (default: all)")
    p.add_argument("--batch-sizes", default="8", help="prompts per forward pass to time, e.g. 4,8,16 (default: 8)")
    p.add_argument("--layers", default=None, help="layers, e.g. 0-17 (default: all layers of the bank)")
    p.add_argument("--k", type=int, default=400, help="top-k (default: 400)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return p


def load_prompts(path: str | Path, n: int | None = None) -> list[str]:
    """Non-empty lines of ``path`` (the first ``n``)."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no prompts (one per line)")
    return lines[:n] if n else lines


def _setup(args) -> tuple["HookedTransformer", "SAEBank", str]:
    """(model, bank, description) for the options."""
    if args.tiny:
        from trajectory.testing import tiny_bank, tiny_model

        model = tiny_model()
        return model, tiny_bank(model), "tiny"
    from trajectory.io import default_bank_dir
    from trajectory.model.load import load_model
    from trajectory.pipeline import open_bank
    from trajectory.presets import get_preset

    preset = get_preset(args.preset)
    folder = Path(args.bank) if args.bank else default_bank_dir(preset.name)
    if not folder.exists():
        raise FileNotFoundError(f"no SAE bank at {folder}; run `trajectory preload --preset {preset.name}` first")
    model = load_model(preset.name, device=args.device)
    return model, open_bank(preset.name, folder, device=args.device), preset.name


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds per torch thread) of one call of ``fn``."""
    import torch

    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, (time.process_time() - cpu) / max(1, torch.get_num_threads())


def one_at_a_time(model, bank, prompts: Sequence[str], out: Path, **options) -> None:
    from trajectory.evolution.batch import prompt_file_name
    from trajectory.evolution.engine import evolve

    out.mkdir(parents=True, exist_ok=True)
    for prompt in prompts:
        evolve(model, bank, prompt, progress=False, **options).save(out / prompt_file_name(prompt))


def compare(a: Path, b: Path, prompts: Sequence[str]) -> dict:
    """How the files of two folders differ: ``prompts`` whose feature lists differ, ``rows``
    (step rows) that do, how many of those hold the same features in another order
    (``reordered``: near-equal activations swapped), the largest activation difference
    ``abs`` and ``rel`` (relative to the largest activation), and the smallest activation
    gap inside a reordered row (``gap``: how close the swapped values were)."""
    import numpy as np

    from trajectory.evolution.batch import prompt_file_name
    from trajectory.evolution.result import Evolution

    out = dict(prompts=0, rows=0, reordered=0, abs=0.0, rel=0.0, gap=0.0)
    top = 0.0
    for prompt in prompts:
        x, y = Evolution.load(a / prompt_file_name(prompt)), Evolution.load(b / prompt_file_name(prompt))
        same = True
        for L in x.layers:
            rx, ry = x.rows[L], y.rows[L]
            top = max(top, float(np.abs(rx.values).max(initial=0.0)))
            for i in range(rx.offsets.size - 1):
                ix, vx = rx.indices[rx.offsets[i]:rx.offsets[i + 1]], rx.values[rx.offsets[i]:rx.offsets[i + 1]]
                iy, vy = ry.indices[ry.offsets[i]:ry.offsets[i + 1]], ry.values[ry.offsets[i]:ry.offsets[i + 1]]
                if ix.size == iy.size and np.array_equal(ix, iy):
                    if vx.size:
                        out["abs"] = max(out["abs"], float(np.abs(vx - vy).max()))
                    continue
                same = False
                out["rows"] += 1
                if ix.size == iy.size and set(ix.tolist()) == set(iy.tolist()):
                    out["reordered"] += 1
                    moved = ix != iy
                    out["gap"] = max(out["gap"], float(np.ptp(vx[moved])))
        out["prompts"] += not same
    out["rel"] = out["abs"] / top if top else 0.0
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from trajectory.evolution.batch import evolve_many
    from trajectory.presets import parse_layers

    sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    prompts = load_prompts(args.prompts, args.n)
    model, bank, name = _setup(args)
    options = dict(k=args.k)
    if args.layers:
        options["layers"] = parse_layers(args.layers, model.cfg.n_layers)
    lengths = [len(model.to_tokens(p)[0]) for p in prompts]
    print(f"{name}: model {model.cfg.model_name}, {len(list(bank.layers if not args.layers else options['layers']))} "
          f"layer(s), k={args.k}, {len(prompts)} prompts of {min(lengths)}-{max(lengths)} tokens (BOS included), "
          f"device {model.cfg.device}, torch threads {torch.get_num_threads()}")
    warm = "The weather was fine, so we walked to the"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one_at_a_time(model, bank, [warm], tmp / "warm", **options)
        results = {"one at a time": timed(lambda: one_at_a_time(model, bank, prompts, tmp / "one", **options))}
        for size in sizes:
            evolve_many(model, bank, [warm], tmp / f"warm{size}", batch_size=size, progress=False, **options)
            results[f"batched {size}"] = timed(
                lambda: evolve_many(model, bank, prompts, tmp / f"b{size}", batch_size=size, progress=False, **options))
        base_wall, base_cpu = results["one at a time"]
        print(f"{'':>16} {'prompts/min (wall)':>19} {'(cpu)':>9} {'speed-up (wall)':>16} {'(cpu)':>7}")
        for label, (wall, cpu) in results.items():
            print(f"{label:>16} {60 * len(prompts) / wall:>19.1f} {60 * len(prompts) / cpu:>9.1f} "
                  f"{base_wall / wall:>15.2f}x {base_cpu / cpu:>6.2f}x")
        for size in sizes:
            d = compare(tmp / "one", tmp / f"b{size}", prompts)
            print(f"batched {size} vs one at a time: largest activation difference {d['abs']:.2e} "
                  f"({d['rel']:.1e} of the largest activation); {d['prompts']} of {len(prompts)} prompts, "
                  f"{d['rows']} step row(s) with other feature lists, {d['reordered']} of them the same features "
                  f"with near-equal activations swapped (within {d['gap']:.1e})")
    return 0


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sys.exit(main())

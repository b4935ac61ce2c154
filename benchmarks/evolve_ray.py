#!/usr/bin/env python
"""Stage 2 on Ray vs in one process: prompts/min and Ray's overhead, in one run.

    python benchmarks/evolve_ray.py [--setups tiny,offline] [--prompts 32] [--workers 1,2]

For each setup (``tiny``: the test fixtures' model and bank; ``offline``: the offline
preset and its preloaded bank, skipped when the bank is missing) and the same prompts:

``sequential-<T>t``
    :func:`~trajectory.evolution.batch.evolve_many` in this process (model and bank
    loaded here first; ``load_s``; one warm-up prompt, not timed), ``batch_size``
    prompts per forward pass, with torch's own thread count and with 1 thread (as
    each Ray worker has).
``ray-W``
    :func:`~trajectory.evolution.distributed.evolve_many_ray` with W workers on a local
    cluster started for the run (``--ray auto``), the same groups. ``work_s``: from the
    first group handed out to the last one back (the driver's logged prompts/min);
    ``overhead_s = wall_s - work_s``: cluster start, actors loading model and bank,
    planning, index, shutdown.

Also the memory of one actor, from the actor itself: peak resident memory after loading
(``actor_loaded_rss_mb``) and after one group of the longest prompts
(``actor_peak_rss_mb``), and then its private (``actor_anon_mb``: model, work) and
file-backed pages (``actor_file_mb``: the memory-mapped bank, shared on a node).
Ray gives each actor ``OMP_NUM_THREADS`` = its CPUs (1 here); the sequential run uses
torch's own thread count (printed). Prints a table and writes JSON (``--json``).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_prompts(n: int, seed: int = 0, words: tuple[int, int] = (10, 26)) -> list[str]:
    """``n`` distinct prompts of ``words`` words drawn from the tiny tokenizer's vocabulary
    (every word a token there; about 12-30 tokens on the offline model)."""
    from trajectory.testing import VOCAB

    pool = [w for w in VOCAB if w.isalpha()]
    rng = random.Random(seed)
    prompts: list[str] = []
    while len(prompts) < n:
        text = " ".join(rng.choice(pool) for _ in range(rng.randint(*words)))
        if text not in prompts:
            prompts.append(text)
    return prompts


def setup(name: str, tmp: Path):
    """``(spec, load)`` for a setup: the Ray workers' spec and an in-process loader."""
    from trajectory.evolution.distributed import WorkerSpec
    from trajectory.pipeline import EvolveConfig, load_stage_inputs
    from trajectory.testing import tiny_bank, tiny_model

    if name == "tiny":
        bank_dir = tmp / "tiny-bank"
        tiny_bank(tiny_model()).save(bank_dir)
        config = EvolveConfig(preset="offline", bank=str(bank_dir), device="cpu", k=100, max_tokens=40)

        def load():
            from trajectory.pipeline import open_bank

            return tiny_model(seed=0), open_bank(config.preset, config.bank), "cpu"

        return WorkerSpec(config, functools.partial(tiny_model, seed=0)), config, load
    if name == "offline":
        config = EvolveConfig(preset="offline", device="cpu", k=100, max_tokens=40)
        return WorkerSpec(config), config, functools.partial(load_stage_inputs, config)
    raise ValueError(f"unknown setup {name!r}; use tiny or offline")


def run_sequential(config, load, prompts, out: Path, batch_size: int, threads: int | None = None) -> dict:
    """In this process; one warm-up prompt first (lazy imports, first-call costs), then
    the timed run with ``threads`` torch threads (default: torch's own)."""
    import torch

    from trajectory.evolution.batch import evolve_many

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        start = time.perf_counter()
        model, bank, device = load()
        loaded = time.perf_counter()
        options = config.engine_options(device)
        encode = options.pop("batch_size")
        run = functools.partial(evolve_many, model, bank, batch_size=batch_size, encode_batch_size=encode,
                                progress=False, **options)
        run(prompts[:1], out.with_name(out.name + "-warmup"))
        warm = time.perf_counter()
        run(prompts, out)
        end = time.perf_counter()
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    return dict(method=f"sequential-{used}t", workers=0, threads=used, load_s=loaded - start, work_s=end - warm,
                wall_s=(end - warm) + (loaded - start), overhead_s=loaded - start,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


class _Rate(logging.Handler):
    """Catches the driver's ``evolved N prompt(s) on W Ray worker(s): R prompts/min`` record."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.rate: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if "Ray worker(s)" in str(record.msg):
            self.rate = float(record.args[-1])


def run_ray(spec, prompts, out: Path, batch_size: int, workers: int) -> dict:
    from trajectory.evolution.distributed import RayOptions, evolve_many_ray

    logger = logging.getLogger("trajectory.evolution.distributed")
    catcher, level = _Rate(), logger.level
    logger.addHandler(catcher)
    logger.setLevel(logging.INFO)
    try:
        start = time.perf_counter()
        evolve_many_ray(spec, prompts, out, options=RayOptions(address="auto", workers=workers),
                        batch_size=batch_size, progress=False)
        wall = time.perf_counter() - start
    finally:
        logger.removeHandler(catcher)
        logger.setLevel(level)
    work = 60 * len(prompts) / catcher.rate
    return dict(method=f"ray-{workers}", workers=workers, threads=1, load_s=None, work_s=work, wall_s=wall,
                overhead_s=wall - work)


def actor_memory(spec, prompts, out: Path, batch_size: int) -> dict:
    """One actor's peak RSS after loading, and after one group of the longest prompts."""
    import ray

    from trajectory.evolution.distributed import EvolveWorker

    ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
    try:
        actor = ray.remote(EvolveWorker).options(num_cpus=1).remote(spec)
        loaded = ray.get(actor.info.remote())
        longest = sorted(prompts, key=len)[-batch_size:]
        ray.get(actor.evolve.remote(longest, str(out)))
        after = ray.get(actor.info.remote())
        ray.kill(actor)
    finally:
        ray.shutdown()
    mb = 2 ** 20
    return dict(actor_loaded_rss_mb=loaded["peak_rss_bytes"] / mb, actor_peak_rss_mb=after["peak_rss_bytes"] / mb,
                actor_anon_mb=after.get("rss_anon_bytes", 0) / mb, actor_file_mb=after.get("rss_file_bytes", 0) / mb)


def same_tensors(a: Path, b: Path) -> bool:
    from safetensors.numpy import load_file

    import numpy as np

    for file in sorted(a.glob("prompt_*.safetensors")):
        x, y = load_file(str(file)), load_file(str(b / file.name))
        if sorted(x) != sorted(y) or not all(np.array_equal(x[k], y[k]) for k in x):
            return False
    return True


def bench(name: str, n_prompts: int, workers: list[int], batch_size: int, tmp: Path) -> list[dict]:
    spec, config, load = setup(name, tmp)
    prompts = make_prompts(n_prompts)
    rows = []
    seq_dir = tmp / f"{name}-sequential"
    rows.append(dict(setup=name, prompts=n_prompts, **run_sequential(config, load, prompts, seq_dir, batch_size)))
    one = run_sequential(config, load, prompts, tmp / f"{name}-sequential-1t", batch_size, threads=1)
    rows.append(dict(setup=name, prompts=n_prompts, **one))
    for w in workers:
        out = tmp / f"{name}-ray-{w}"
        row = dict(setup=name, prompts=n_prompts, **run_ray(spec, prompts, out, batch_size, w))
        row["same_tensors_as_sequential_1t"] = same_tensors(out, tmp / f"{name}-sequential-1t")
        rows.append(row)
    memory = actor_memory(spec, prompts, tmp / f"{name}-memory", batch_size)
    for row in rows:
        row["prompts_per_min"] = 60 * n_prompts / row["wall_s"]
        row["work_prompts_per_min"] = 60 * n_prompts / row["work_s"]
        row.update(memory)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", default="tiny,offline")
    parser.add_argument("--prompts", type=int, default=32, help="prompts of the tiny setup (default: 32)")
    parser.add_argument("--offline-prompts", type=int, default=16, help="prompts of the offline setup (default: 16)")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    from trajectory.io import default_bank_dir

    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="evolve-ray-bench-"))
    try:
        for name in args.setups.split(","):
            if name == "offline" and not default_bank_dir("offline").exists():
                print("offline: no bank at results/banks/offline (trajectory preload --preset offline); skipped")
                continue
            new = bench(name, args.prompts if name == "tiny" else args.offline_prompts,
                        [int(w) for w in args.workers.split(",")], args.batch_size, tmp)
            for row in new:
                print(json.dumps(row), file=sys.stderr, flush=True)
            rows += new
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'setup':8} {'method':11} {'wall s':>8} {'overhead s':>10} {'prompts/min':>12} {'work p/min':>11} "
          f"{'same':>5} {'actor MB':>9}")
    for r in rows:
        print(f"{r['setup']:8} {r['method']:11} {r['wall_s']:8.1f} {r['overhead_s']:10.1f} {r['prompts_per_min']:12.1f} "
              f"{r['work_prompts_per_min']:11.1f} {str(r.get('same_tensors_as_sequential_1t', '-')):>5} "
              f"{r['actor_peak_rss_mb']:9.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())

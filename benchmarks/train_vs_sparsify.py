"""SAE training throughput and quality: ours (sae-lens trainers) vs EleutherAI's sparsify.

Both train a TopK SAE of the same width and k on the same stored activations: one layer
of the offline model (Gemma 3 270M, ``blocks.{L}.hook_resid_post``) over ~50k tokens of
the default corpus, collected once into an activation store (:mod:`trajectory.training.store`).
The held-out rows (the store's last chunks) are the same for both; explained variance is
``1 - SSE / SST`` (SST about the per-dimension mean) on them, computed by the same
formula in both processes. Throughput = training samples / wall seconds of the training
call (ours: :func:`~trajectory.training.from_store.train_on_store`, init and statistics
included; sparsify: its ``SparseCoder`` with the steps of its ``Trainer`` at its defaults
(see :func:`_sparsify_fit`; its ``Trainer`` itself only trains on a live model's
hooks, not on stored activations), once with its default optimizer (schedule-free
signum) and once with its Adam option, over the same number of samples and batch size).

sparsify runs in its own virtual environment (it pins other versions), outside the repo::

    python -m venv /tmp/venv-sparsify
    /tmp/venv-sparsify/bin/pip install torch==2.13.0 && /tmp/venv-sparsify/bin/pip install eai-sparsify
    python benchmarks/train_vs_sparsify.py --sparsify-python /tmp/venv-sparsify/bin/python

This file is also the sparsify worker (``--worker``): that mode imports only numpy,
torch and sparsify, never this package.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--tokens", type=int, default=50_000, help="train + held-out tokens collected")
    p.add_argument("--heldout-tokens", type=int, default=5_000)
    p.add_argument("--expansion-factor", type=int, default=4)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2, help="torch threads in both processes")
    p.add_argument("--out", default="results/bench/train_vs_sparsify")
    p.add_argument("--from-store", default=None,
                   help="copy the first --tokens rows of the layer from this existing store (e.g. one kept by "
                        "`trajectory train --store-dir`) instead of running the model")
    p.add_argument("--sparsify-python", default="/tmp/venv-sparsify/bin/python")
    p.add_argument("--optimizer", default="signum", choices=["signum", "adam"],
                   help=argparse.SUPPRESS)  # the worker's optimizer (run() tries both)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # store folder: run as sparsify worker
    p.add_argument("--cut", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(sparsify_worker(args)))
        return 0
    return run(args)


def run(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    store = _store(out / "store", args)
    ours = _ours(store, args)
    theirs = {opt: _theirs(store, args, ours["cut"], opt) for opt in ("signum", "adam")}
    table = {"store": {"folder": str(store.folder), "hook": store.hooks[0], "n_tokens": store.n_tokens,
                       "d_in": store.width, "n_train": ours["cut"], "n_heldout": store.n_tokens - ours["cut"]},
             "settings": {"d_sae": args.expansion_factor * store.width, "k": args.k, "batch_size": args.batch_size,
                          "epochs": args.epochs, "threads": args.threads},
             "ours": ours, **{f"sparsify_{opt}": r for opt, r in theirs.items()}}
    (out / "results.json").write_text(json.dumps(table, indent=1))
    print(f"{store.hooks[0]}: {store.n_tokens:,} tokens ({ours['cut']:,} train), d_in {store.width}, "
          f"d_sae {args.expansion_factor * store.width}, k {args.k}, batch {args.batch_size}, {args.threads} threads")
    print(f"{'trainer':<15} {'tokens/s':>10} {'seconds':>8} {'EV':>7} {'L0':>6} {'dead':>6}")
    for name, r in (("ours", ours), *((f"sparsify/{o}", r) for o, r in theirs.items())):
        if "error" in r:
            print(f"{name:<15} failed: {r['error']}")
        else:
            print(f"{name:<15} {r['tokens_per_second']:>10.0f} {r['seconds']:>8.1f} {r['explained_variance']:>7.3f} "
                  f"{r['l0']:>6.1f} {r['dead_fraction']:>6.1%}")
    print(f"results: {(out / 'results.json').resolve()}")
    return 0


def _store(folder: Path, args):
    """One layer's resid_post over ``args.tokens`` tokens of the default corpus (reused when there)."""
    from trajectory.training.store import ActivationStore

    try:
        store = ActivationStore.open(folder)
        if store.n_tokens >= args.tokens * 0.95 and store.hooks == [f"blocks.{args.layer}.hook_resid_post"]:
            return store
    except (FileNotFoundError, ValueError):
        pass
    if args.from_store:
        return _copy_rows(ActivationStore.open(args.from_store), f"blocks.{args.layer}.hook_resid_post", folder,
                          args.tokens)
    from trajectory.model.load import load_model
    from trajectory.training.corpus import load_corpus, tokenize_chunks
    from trajectory.training.store import collect_activations

    model = load_model("offline", device="cpu")
    _, docs = load_corpus(None)
    chunks = tokenize_chunks(model, docs, 128, max_tokens=args.tokens * 128 // 127 + 128)
    chunks = chunks[: -(-args.tokens // 127)]
    t0 = time.perf_counter()
    store = collect_activations(model, chunks, folder, layers=[args.layer], progress=True)
    print(f"collected {store.n_tokens:,} tokens in {time.perf_counter() - t0:.0f} s")
    return store


def _copy_rows(src, hook: str, folder: Path, n: int):
    """The first ``n`` rows of ``hook`` of store ``src`` as a one-hook store at ``folder``."""
    from trajectory.training.store import create_store

    n = min(n, src.n_tokens)
    writer = create_store(folder, [hook], n, src.width, dtype=src.dtype,
                          extra={"copied_from": str(src.folder), "context_length": src.meta.get("context_length")})
    writer.write({hook: src.activations(hook)[:n]}, src.tokens[:n], src.index[:n])
    return writer.close()


def _ours(store, args) -> dict:
    from trajectory.training.config import TrainConfig
    from trajectory.training.from_store import heldout_start, train_on_store

    config = TrainConfig(expansion_factor=args.expansion_factor, k=args.k, batch_size=args.batch_size,
                         epochs=args.epochs, max_epochs=args.epochs, n_heldout_tokens=args.heldout_tokens)
    t0 = time.perf_counter()
    result = train_on_store(store, config)
    seconds = time.perf_counter() - t0
    m = result.metrics[store.hooks[0]]
    return {"tokens_per_second": m["tokens_per_second"], "seconds": round(seconds, 2),
            "explained_variance": m["explained_variance"], "l0": m["l0"], "dead_fraction": m["dead_fraction"],
            "cut": heldout_start(store, args.heldout_tokens), "trainer": "sae-lens SAETrainer (TopK)"}


def _theirs(store, args, cut: int, optimizer: str) -> dict:
    cmd = [args.sparsify_python, __file__, "--worker", str(store.folder), "--cut", str(cut), "--optimizer", optimizer,
           "--expansion-factor", str(args.expansion_factor), "--k", str(args.k), "--batch-size", str(args.batch_size),
           "--epochs", str(args.epochs), "--threads", str(args.threads)]
    if not Path(args.sparsify_python).exists():
        return {"error": f"{args.sparsify_python} does not exist (make the venv as the module docstring says)"}
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"worker exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sparsify_worker(args) -> dict:
    """Train sparsify's ``SparseCoder`` on the store's rows ``[:cut]``, evaluate on ``[cut:]``."""
    from importlib.metadata import version

    import numpy as np
    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    torch.set_num_threads(args.threads)
    folder = Path(args.worker)
    meta = json.loads((folder / "meta.json").read_text())
    acts = np.memmap(folder / "act_0.bin", dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"], meta["d_model"]))
    train = torch.from_numpy(np.array(acts[: args.cut], dtype=np.float32))
    held = torch.from_numpy(np.array(acts[args.cut :], dtype=np.float32))
    d_in = train.shape[1]
    torch.manual_seed(0)
    cfg = SparseCoderConfig(expansion_factor=args.expansion_factor, k=args.k)
    sae = SparseCoder(d_in, cfg, device="cpu", dtype=torch.float32)
    t0 = time.perf_counter()
    seen = _sparsify_fit(sae, train, args)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        sse, fired, l0 = 0.0, torch.zeros(sae.num_latents, dtype=torch.bool), 0.0
        for start in range(0, len(held), 4096):
            x = held[start : start + 4096]
            o = sae(x)
            sse += float(((o.sae_out - x) ** 2).sum())
            active = o.latent_acts > 0
            l0 += float(active.sum())
            fired[o.latent_indices[active]] = True
        sst = float(((held - held.mean(0)) ** 2).sum())
    return {"tokens_per_second": round(seen / seconds, 1), "seconds": round(seconds, 2),
            "explained_variance": 1 - sse / sst, "l0": l0 / len(held), "dead_fraction": float((~fired).float().mean()),
            "trainer": f"eai-sparsify {version('eai-sparsify')} SparseCoder + its Trainer's step ({args.optimizer})"}


def _sparsify_fit(sae, train, args) -> int:
    """The steps of sparsify's ``Trainer`` (its defaults: ``optimizer="signum"`` =
    schedule-free SignSGD at ``5e-3 / sqrt(num_latents / 2**14)``, or ``"adam"`` at
    ``2e-4 / sqrt(...)`` with linear warm-up/decay; ``auxk_alpha=0``; ``b_dec`` = the first
    batch's mean; decoder renormalised before every forward pass, gradients parallel to
    decoder rows removed before every step) on in-memory rows; returns samples seen."""
    import torch

    n = len(train)
    steps = int(args.epochs * n) // args.batch_size
    scale = (sae.num_latents / 2**14) ** 0.5
    if args.optimizer == "signum":
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD

        opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=5e-3 / scale)]), momentum=0.95)
        opt.train()
        sched = None
    else:
        from transformers import get_linear_schedule_with_warmup

        opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / scale)
        sched = get_linear_schedule_with_warmup(opt, min(1000, steps // 20), steps)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=g)
    for step in range(steps):
        x = train[perm[step * args.batch_size : (step + 1) * args.batch_size]]
        if step == 0:
            with torch.no_grad():
                sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        if sched is not None:
            sched.step()
    if args.optimizer == "signum":
        opt.eval()  # schedule-free: evaluate at the averaged weights
    return steps * args.batch_size


if __name__ == "__main__":
    sys.exit(main())

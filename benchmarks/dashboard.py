#!/usr/bin/env python
"""Dashboard collection throughput versus the bare model forward to the same layer, and
page size per feature.

    python benchmarks/dashboard.py                              # offline Gemma 3 270M, layer 6, all features
    python benchmarks/dashboard.py --layers 0-17 --tokens 8192  # every layer in one pass
    python benchmarks/dashboard.py --model tiny                 # the tiny test fixture

Both runs see the same token chunks and batch size. "bare" is
``model(batch, stop_at_layer=last + 1)`` with nothing else; "pass" is the corpus pass of
:func:`trajectory.dashboard.collect` (hooks, SAE encodes, running top-k, sample,
histograms); "total" adds the one-off per-feature work after it (logit effects,
decoder cosines, building the cards). The SAEs are the preset's bank when
``results/banks/<model>`` exists, else random TopK SAEs of ``--d-sae`` features
(speed does not depend on the weights). Pages are written to a temporary folder and
their size divided by the number of features (target <= 25 KB per feature).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="offline", help="'offline' (Gemma 3 270M) or 'tiny' (test fixture)")
    p.add_argument("--layers", default="6", help="layers, e.g. 6 or 0-17 (default 6)")
    p.add_argument("--d-sae", type=int, default=2048, help="width of the random SAEs when there is no bank (default 2048)")
    p.add_argument("--tokens", type=int, default=8192, help="corpus tokens (default 8192)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def setup(args: argparse.Namespace):
    """``(model, targets, tokens [n_chunks, 128], what the SAEs are)``."""
    from trajectory.dashboard.build import target_name
    from trajectory.dashboard.collection import DashboardTarget
    from trajectory.features.real_activations import corpus_tokens
    from trajectory.presets import parse_layers
    from trajectory.testing import CORPUS_SENTENCES, random_sae

    if args.model == "tiny":
        from trajectory.testing import tiny_model

        model, docs = tiny_model(), CORPUS_SENTENCES * 200
    else:
        from trajectory.model.load import load_model

        model, docs = load_model(args.model, device=args.device), None
    layers = parse_layers(args.layers, model.cfg.n_layers)
    bank_dir = Path("results", "banks", args.model)
    if bank_dir.is_dir():
        from trajectory.saes.bank import SAEBank

        bank = SAEBank.open(bank_dir, layers=layers, device=args.device)
        targets = [DashboardTarget(target_name(bank.hook_name(x)), bank[x], bank.hook_name(x), x) for x in layers]
        source = f"bank {bank_dir}"
    else:
        d = model.cfg.d_model
        targets = []
        for x in layers:
            hook = f"blocks.{x}.hook_resid_post"
            sae = random_sae(d, args.d_sae, architecture="topk", k=32, seed=x, hook_name=hook, device=args.device)
            targets.append(DashboardTarget(target_name(hook), sae, hook, x))
        source = f"random TopK SAEs {d}x{args.d_sae}"
    _, tokens = corpus_tokens(model, docs, context_length=128, max_tokens=args.tokens)
    return model, targets, tokens, source


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import torch

    import trajectory.dashboard.collection as collection
    from trajectory.dashboard import DashboardConfig, collect, write_pages
    from trajectory.features.real_activations import stop_layer

    torch.manual_seed(0)
    model, targets, tokens, source = setup(args)
    n, stop = tokens.numel(), max(stop_layer(t.hook) for t in targets)
    print(f"model {model.cfg.model_name}, {len(targets)} layer(s), SAEs: {source}; {tokens.shape[0]} chunks x "
          f"{tokens.shape[1]} = {n} tokens, batch {args.batch_size}, torch threads {torch.get_num_threads()}")

    def bare() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, tokens.shape[0], args.batch_size):
                model(tokens[i : i + args.batch_size].to(args.device), stop_at_layer=stop)
        return time.perf_counter() - start

    finish = collection._layer_dashboard
    marks: list[float] = []

    def timed_finish(*a, **k):  # the pass ends when the first dashboard is assembled
        marks.append(time.perf_counter())
        return finish(*a, **k)

    collection._layer_dashboard = timed_finish
    bare()  # warm-up
    tb = bare()
    start = time.perf_counter()
    dashboards = collect(model, targets, None, tokens, config=DashboardConfig(batch_size=args.batch_size),
                         progress=False)
    total = time.perf_counter() - start
    tp = marks[0] - start
    n_features = sum(len(d.features) for d in dashboards)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_pages(dashboards, tmp)
        tw = time.perf_counter() - t0
        html = sum(p.stat().st_size for p in Path(tmp).glob("*.html") if p.name != "index.html")
    print(f"bare forward to block {stop - 1}: {n / tb:,.0f} tokens/s ({tb:.2f} s)")
    print(f"dashboard pass ({n_features} features): {n / tp:,.0f} tokens/s ({tp:.2f} s); ratio pass / bare "
          f"{tb / tp:.3f} (target >= 0.8)")
    print(f"dashboard total incl. logit effects, cosines, cards: {total:.2f} s; writing pages {tw:.2f} s")
    print(f"pages: {html / 1e6:.2f} MB, {html / n_features / 1e3:.1f} KB per feature (target <= 25 KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

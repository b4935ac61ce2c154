#!/usr/bin/env python
"""Real-scan throughput versus the bare model forward to the same layer.

    python benchmarks/real.py                      # offline Gemma 3 270M, layer 6
    python benchmarks/real.py --model tiny         # the tiny test fixture
    python benchmarks/real.py --synthetic 3        # also: synthetic seconds per feature

Both runs see the same token chunks and batch size. "bare" is
``model(batch, stop_at_layer=L+1)`` with nothing else; "scan" is the whole
``trajectory.features.real`` call (hook capture, SAE encode, statistics, top
examples, logit effects). Each is repeated ``--repeats`` times, interleaved, and
the fastest run of each is compared (the machine may be shared). The SAE is the
preset's bank SAE when ``results/banks/offline`` exists, else a random TopK SAE of
the offline preset's shape (speed does not depend on its weights).
Prints tokens/s of both and their ratio (target >= 0.8).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="offline", help="'offline' (Gemma 3 270M) or 'tiny' (test fixture)")
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--features", default="0-49", help="features analysed (default 0-49)")
    p.add_argument("--tokens", type=int, default=8192, help="corpus tokens scanned (default 8192)")
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--synthetic", type=int, default=0, help="also time synthetic on this many features")
    p.add_argument("--n-steps", type=int, default=100)
    return p.parse_args(argv)


def setup(args: argparse.Namespace):
    """``(model, sae, hook, layer, tokens [n_chunks, context_length], what the SAE is)``."""
    from trajectory.features.real_activations import corpus_tokens
    from trajectory.testing import CORPUS_SENTENCES, random_sae

    if args.model == "tiny":
        from trajectory.testing import tiny_model

        model, docs, layer = tiny_model(), CORPUS_SENTENCES * 200, min(args.layer, 2)
    else:
        from trajectory.model.load import load_model

        model, docs, layer = load_model(args.model, device="cpu"), None, args.layer
    hook = f"blocks.{layer}.hook_resid_post"
    bank_dir = os.path.join("results", "banks", args.model)
    if os.path.isdir(bank_dir):
        from trajectory.saes.bank import SAEBank

        bank = SAEBank.open(bank_dir, layers=[layer])
        sae, hook, source = bank[layer], bank.hook_name(layer), f"bank {bank_dir}"
    else:
        d = model.cfg.d_model
        sae = random_sae(d, 4096 if d >= 256 else 64, architecture="topk", k=32, hook_name=hook)
        source = f"random TopK SAE {d}x{sae.cfg.d_sae}"
    _, tokens = corpus_tokens(model, docs, context_length=args.context_length, max_tokens=args.tokens)
    return model, sae, hook, layer, tokens, source


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import torch

    from trajectory.features import RealConfig, logit_effects, parse_features, real, synthetic
    from trajectory.features.real_activations import stop_layer

    torch.manual_seed(0)
    model, sae, hook, layer, tokens, source = setup(args)
    n = tokens.numel()
    print(f"model {model.cfg.model_name}, {hook}, SAE: {source}; {tokens.shape[0]} chunks x {tokens.shape[1]} = {n} tokens, "
          f"batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    config = RealConfig(batch_size=args.batch_size)

    def bare() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, tokens.shape[0], args.batch_size):
                model(tokens[i : i + args.batch_size], stop_at_layer=stop_layer(hook))
        return time.perf_counter() - start

    def effects() -> float:
        start = time.perf_counter()
        logit_effects(model, sae, parse_features(args.features), k=10)
        return time.perf_counter() - start

    def scan() -> float:
        start = time.perf_counter()
        real(model, sae, args.features, tokens, hook_name=hook, config=config, progress=False)
        return time.perf_counter() - start

    bare(); scan()  # warm-up
    t_bare, t_scan, t_fixed = [], [], []
    for _ in range(args.repeats):
        t_bare.append(bare())
        t_scan.append(scan())
        t_fixed.append(effects())
    tb, ts, tf = min(t_bare), min(t_scan), min(t_fixed)
    print(f"bare forward to layer {layer}: {n / tb:,.0f} tokens/s (best of {args.repeats}: {tb:.2f} s)")
    print(f"real scan ({args.features}):     {n / ts:,.0f} tokens/s (best of {args.repeats}: {ts:.2f} s)")
    print(f"ratio scan / bare: {tb / ts:.3f}  (target >= 0.8)")
    print(f"  of the scan, {tf:.2f} s is the one-off logit-effect pass (reads all of W_U once, independent of corpus size); "
          f"per-token ratio without it: {tb / max(ts - tf, 1e-9):.3f}")
    if args.synthetic:
        feats = list(range(args.synthetic))
        start = time.perf_counter()
        rep = synthetic(model, sae, feats, hook_name=hook, n_steps=args.n_steps, progress=False)
        per = (time.perf_counter() - start) / len(feats)
        print(f"synthetic: {per:.1f} s per feature ({args.n_steps} steps, seq_len 8, 3 restarts, vocab {rep.settings['vocab_size']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

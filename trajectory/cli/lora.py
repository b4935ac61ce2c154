"""``trajectory lora``: fine-tune a LoRA adapter, collect its activations for SAE training.

Examples::

    trajectory lora finetune --preset offline --rank 1 --targets q,k,v,o,gate,up,down --steps 300 --out results/lora/offline-r1
    trajectory lora collect --preset offline --adapter results/lora/offline-r1 --out results/lora/offline-r1/activations
    trajectory train --activations results/lora/offline-r1/activations --expansion-factor 16 --k 8 --out results/lora/offline-r1/sae
"""
from __future__ import annotations

from trajectory.cli import options

_BASE_HELP = ("base model: a preset (default: offline, the embedded Gemma 3 270M), a local Hugging Face "
              "folder (model + tokenizer) or a hub name")


def register(sub) -> None:
    p = options.add_parser(
        sub, "lora",
        help="fine-tune a LoRA adapter (peft) and collect its lora_A activations for SAE training",
        description="LoRA adapters on the base model in its Hugging Face form: `finetune` trains one on a corpus, "
                    "`collect` stores every token's lora_A outputs (any peft LoRA adapter of the same base model) "
                    "for `trajectory train --activations`.",
    )
    actions = p.add_subparsers(dest="lora_command", metavar="ACTION")
    _register_finetune(actions)
    _register_collect(actions)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _common(p) -> None:
    p.add_argument("--preset", default="offline", help=_BASE_HELP)
    p.add_argument("--corpus", default=None, help="text file, folder of .txt/.md files, or hf:<dataset> "
                   "(default: the built-in corpus, no download)")
    p.add_argument("--context-length", type=int, default=64, help="tokens per chunk, BOS included (default: 64)")
    p.add_argument("--max-tokens", type=int, default=None, help="corpus tokens to use (default: all)")
    options.add_device(p)
    options.add_progress(p)


def _register_finetune(actions) -> None:
    p = options.add_parser(actions, "finetune", help="train a LoRA adapter on a corpus",
                           description="Train a LoRA adapter with peft; writes the adapter folder (peft files), "
                                       "loss_curve.json/.png and manifest.json.")
    _common(p)
    p.add_argument("--rank", type=int, default=1, help="LoRA rank r (default: 1)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank, i.e. scaling 1)")
    p.add_argument("--targets", default="q,k,v,o,gate,up,down",
                   help="projections to adapt: q,k,v,o,gate,up,down (short for q_proj..down_proj), all, "
                        "or module names (default: all seven)")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps (default: 300)")
    p.add_argument("--batch-size", type=int, default=2, help="chunks per step (default: 2)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="auto (default): bfloat16 autocast where the CPU/GPU computes bfloat16 natively "
                        "(AVX512-BF16/AMX), else float32; LoRA weights and losses stay float32")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the init, split and batch order (default: 0)")
    options.add_out(p, "adapter folder (default: results/lora/<preset>-r<rank>)")
    p.set_defaults(func=run_finetune)


def _register_collect(actions) -> None:
    p = options.add_parser(actions, "collect", help="store every token's lora_A outputs of an adapter",
                           description="Run the adapted model over a corpus and write the lora_A outputs "
                                       "(rank numbers per adapted module, by layer then module) to an "
                                       "activation store whose meta.json names every column.")
    _common(p)
    p.add_argument("--adapter", required=True, help="peft LoRA adapter folder (from `lora finetune` or peft)")
    p.add_argument("--batch-size", type=int, default=8, help="chunks per forward pass (default: 8)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="storage dtype (default: float32)")
    options.add_out(p, "store folder (default: ADAPTER/activations)")
    p.set_defaults(func=run_collect)


def run_finetune(args) -> int:
    import json
    from pathlib import Path

    from trajectory.io import RESULTS_DIR
    from trajectory.training.lora import LoraConfig, finetune

    out = args.out or RESULTS_DIR / "lora" / f"{Path(args.preset).name}-r{args.rank}"
    config = LoraConfig(out=out, base_model=args.preset, corpus=args.corpus, rank=args.rank, alpha=args.alpha,
                        targets=args.targets, steps=args.steps, batch_size=args.batch_size,
                        context_length=args.context_length, lr=args.lr, seed=args.seed, max_tokens=args.max_tokens,
                        device=args.device, precision=args.precision, progress=not args.no_progress)
    folder = finetune(config)
    manifest = json.loads((folder / "manifest.json").read_text())
    print(f"LoRA r={manifest['rank']} on {', '.join(manifest['targets'])}: {manifest['steps']} steps in "
          f"{manifest['seconds']:.0f} s; held-out loss {manifest['heldout_loss_before']:.4f} -> "
          f"{manifest['heldout_loss_after']:.4f}")
    print(f"wrote {folder} (adapter, manifest.json, loss_curve.json, loss_curve.png)")
    return 0


def run_collect(args) -> int:
    from trajectory.training.lora_collect import CollectConfig, collect, open_lora_store

    config = CollectConfig(adapter=args.adapter, out=args.out, base_model=args.preset, corpus=args.corpus,
                           context_length=args.context_length, batch_size=args.batch_size,
                           max_tokens=args.max_tokens, dtype=args.dtype, device=args.device,
                           progress=not args.no_progress)
    folder = collect(config)
    store, meta = open_lora_store(folder)
    print(f"{store.n_tokens} tokens x {store.d_model} LoRA columns ({len(meta['modules'])} modules) "
          f"at {meta['tokens_per_second']:.0f} tokens/s")
    print(f"wrote {folder}")
    return 0

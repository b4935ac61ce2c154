"""``trajectory preload``: stage 1 — resolve the SAE of every layer and write a bank.

Examples::

    trajectory preload --preset offline                    # trains the missing layers locally
    trajectory preload --preset offline --layers 0-5 --corpus my_texts/
    trajectory preload --preset gemma-2-2b-res-16k --dtype bfloat16
    trajectory preload --release gemma-scope-2b-pt-res-canonical \\
        --sae-id-template "layer_{layer}/width_16k/canonical" --layers 0-25 --model google/gemma-2-2b
    trajectory preload --sae-folder my_saes/ --model gpt2 --out results/banks/my_saes

The bank goes to ``--out`` (default ``results/banks/<preset>``); later stages open it
with ``SAEBank.open`` in about a second. A complete bank is not rebuilt unless
``--force``.
"""
from __future__ import annotations

from pathlib import Path

from trajectory.cli import options


def register(sub) -> None:
    p = options.add_parser(
        sub, "preload",
        help="stage 1: resolve (or train) the SAE of every layer and write an SAE bank",
        description=(
            "Resolve the SAE of every layer — a sae-lens release, a local folder, or (preset offline) "
            "train the missing ones — and write a bank folder (safetensors per layer + manifest.json) "
            "that later stages open in about a second. Prints layer, source, d_sae, dtype, bytes and metrics."
        ),
    )
    options.add_preset(p)
    options.add_layers(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="SAE dtype in the bank (default: float32)")
    options.add_device(p)
    options.add_out(p, "bank folder (default: results/banks/<preset or source name>)")
    p.add_argument("--force", action="store_true", help="rebuild the requested layers even if the bank has them")
    p.add_argument("--corpus", default=None, help="training text for offline SAEs: mixed (default: English prose + Python docs), english, python-docs, "
                   "a text file, a folder, or hf:<dataset>")
    p.add_argument("--release", default=None, help="any sae-lens release (with --sae-id-template)")
    p.add_argument("--sae-id-template", default=None, help="sae-lens SAE id with {layer}, e.g. layer_{layer}/width_16k/canonical")
    p.add_argument("--sae-folder", default=None, help="folder with one SAE per layer (sae-lens folders, params.npz, ...)")
    p.add_argument("--model", default=None, help="TransformerLens model name: check the SAEs fit it (and its layer count)")
    p.add_argument("--hook-template", default="blocks.{layer}.hook_resid_post", help="hook for SAEs that do not name one")
    t = p.add_argument_group("local training (preset offline)")
    t.add_argument("--architecture", choices=["topk", "batchtopk"], default="topk", help="SAE kind (default: topk)")
    t.add_argument("--d-sae", type=int, default=None, help="features per SAE (default: 2048)")
    t.add_argument("--k", type=int, default=None, help="active features per token (default: 64)")
    t.add_argument("--train-tokens", type=int, default=None, help="training tokens per layer (default: 100000)")
    t.add_argument("--epochs", type=float, default=None, help="passes over the training tokens (default: 1)")
    options.add_progress(p)
    p.set_defaults(func=run)


def _training(args):
    """The training settings the options name (``None`` = all defaults)."""
    chosen = dict(d_sae=args.d_sae, k=args.k, n_train_tokens=args.train_tokens, epochs=args.epochs,
                  architecture=args.architecture, corpus=args.corpus)
    chosen = {k: v for k, v in chosen.items() if v is not None}
    from trajectory.training.config import TrainConfig

    return TrainConfig(**chosen)


def run(args) -> int:
    from trajectory.saes.preload import PreloadConfig, preload_bank

    config = PreloadConfig(
        preset=args.preset, layers=args.layers, dtype=args.dtype, device=args.device, force=args.force,
        release=args.release, sae_id_template=args.sae_id_template, sae_folder=args.sae_folder,
        model=args.model, hook_template=args.hook_template,
    )
    if not config.custom:
        config.training = _training(args)
    result = preload_bank(config, args.out, progress=not args.no_progress)
    if not result.rebuilt:
        from trajectory.presets import format_layers

        print(f"SAE bank at {result.path} already has layers {format_layers(result.layers)}; "
              "nothing to rebuild (use --force to redo)")
    print_bank_table(result.manifest, result.path, result.layers)
    return 0


def print_bank_table(manifest: dict, out: Path, layers) -> None:
    """layer, source, d_sae, dtype, bytes, L0, explained variance, dead fraction, delta loss."""
    from trajectory.saes.memory import format_bytes

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    rows = []
    total = 0
    for layer in layers:
        m = manifest["layers"][str(layer)]
        met = m.get("metrics") or {}
        total += int(m["bytes"])
        rows.append([
            str(layer), str(m["source"]), str(m["d_sae"]), str(m["dtype"]), format_bytes(m["bytes"]),
            num(met.get("l0"), ".1f"), num(met.get("explained_variance"), ".3f"),
            num(met.get("dead_fraction"), ".1%"), num(met.get("delta_loss"), ".3f"),
            {True: "yes", False: "NO", None: "-"}[met.get("meets_targets")],
        ])
    head = ["layer", "source", "d_sae", "dtype", "bytes", "L0", "expl.var", "dead", "dloss", "targets"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)] if rows else [len(h) for h in head]

    def line(cells):
        return "  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(head))
    for r in rows:
        print(line(r))
    print(f"SAE bank: {out.resolve()}  ({len(rows)} layers, {format_bytes(total)}, model {manifest.get('model_name')})")
    training = (manifest.get("metadata") or {}).get("training") or {}
    if training.get("targets"):
        t = training["targets"]
        print(f"targets (held-out): explained variance >= {t['explained_variance_min']}, L0 <= {t['l0_max']:g}, "
              f"dead <= {t['dead_fraction_max']:.0%}; built in {training.get('total_seconds', 0) / 60:.1f} min "
              f"(target {t['total_seconds_max'] / 60:.0f} min)")

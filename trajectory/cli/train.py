"""``trajectory train``: SAEs at any hook of a model, or on any activation store.

Examples::

    trajectory train --preset offline --hook "blocks.{layer}.hook_mlp_out" --layers 0-17 \\
        --architecture batchtopk --expansion-factor 4 --k 32 --out results/banks/offline-mlp
    trajectory train --preset offline --hook z --layers 6 --expansion-factor 2 --k 32 --out results/banks/offline-z6
    trajectory train --activations results/lora/offline-r1/activations --expansion-factor 16 --k 8 \\
        --out results/lora/offline-r1/sae

With a model, the output is an SAE bank (the manifest records each layer's hook) that the
analysis commands and the dashboard open with ``--bank``; with ``--activations`` it is one
sae-lens folder per hook of the store plus ``metrics.json``. Prints the per-SAE table:
L0, explained variance, dead fraction and (with a model) the held-out cross-entropy
clean / with the SAE spliced in / with the hook zero-ablated.
"""
from __future__ import annotations

import re
from pathlib import Path

from trajectory.cli import options

#: Short spellings of ``--hook``.
HOOK_ALIASES = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
                "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "z": "attn.hook_z", "hook_z": "attn.hook_z"}


def register(sub) -> None:
    p = options.add_parser(
        sub, "train",
        help="train SAEs at any hook (resid_pre/mid/post, attn_out, mlp_out, attn.hook_z) or on an activation store",
        description=(
            "Train one TopK or BatchTopK SAE per layer at a hook of the model (activations of all layers collected "
            "in one pass into a memory-mapped store), or one per hook of an existing activation store "
            "(--activations). Prints L0, explained variance, dead fraction and spliced / clean / zero-ablated "
            "cross-entropy on held-out text, and where the outputs went."
        ),
    )
    options.add_preset(p)
    p.add_argument("--activations", default=None, metavar="STORE",
                   help="train on this activation store folder instead of running a model")
    p.add_argument("--hook", default="blocks.{layer}.hook_resid_post",
                   help="hook template with {layer}, or a short name: resid_pre, resid_mid, resid_post, attn_out, "
                        "mlp_out, z (attn.hook_z, heads concatenated); default: blocks.{layer}.hook_resid_post")
    options.add_layers(p)
    p.add_argument("--architecture", choices=["topk", "batchtopk"], default="topk", help="SAE kind (default: topk)")
    width = p.add_mutually_exclusive_group()
    width.add_argument("--expansion-factor", type=float, default=None, help="d_sae = this x the hook's width")
    width.add_argument("--d-sae", type=int, default=None, help="features per SAE (default: 2048)")
    p.add_argument("--k", type=int, default=None, help="active features per token (default: 64)")
    p.add_argument("--corpus", default=None, help="training text: a text file, a folder, or a corpus name")
    p.add_argument("--train-tokens", type=int, default=None, help="training tokens per layer (default: 100000)")
    p.add_argument("--heldout-tokens", type=int, default=None, help="held-out tokens for the metrics (default: 8000)")
    p.add_argument("--epochs", type=float, default=None, help="passes over the training tokens (default: 1)")
    p.add_argument("--max-epochs", type=float, default=None,
                   help="retrain layers under the EV target with more passes, up to this (default: 3)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 4e-3)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per step (default: 1024)")
    p.add_argument("--seed", type=int, default=None, help="split, init and batch order (default: 0)")
    p.add_argument("--ram-budget", default=None, metavar="BYTES",
                   help="activations of one hook larger than this (e.g. 2G, 500M) are streamed from the "
                        "memory-mapped store instead of copied into RAM (default: no limit)")
    p.add_argument("--store-dir", default=None, help="keep the collected activation stores in this folder")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="SAE dtype in the bank (default: float32)")
    options.add_device(p)
    options.add_out(p, "output folder (default: results/banks/<preset>-<hook>, or <store>/sae)")
    options.add_progress(p)
    p.set_defaults(func=run)


def hook_template(value: str) -> str:
    """``--hook`` as a template: short names expanded, ``blocks.6.hook_mlp_out`` -> ``blocks.{layer}.hook_mlp_out``."""
    value = value.strip()
    if value in HOOK_ALIASES:
        return f"blocks.{{layer}}.{HOOK_ALIASES[value]}"
    return re.sub(r"^blocks\.\d+\.", "blocks.{layer}.", value)


def parse_bytes(value: str | None) -> int | None:
    """``"2G"``, ``"500M"``, ``"64k"`` or a plain number of bytes."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?\s*", str(value))
    if not m:
        raise ValueError(f"--ram-budget {value!r}: give bytes, e.g. 2000000000, 2G or 500M")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def _config(args):
    from trajectory.training.config import TrainConfig

    chosen = dict(d_sae=args.d_sae, k=args.k, expansion_factor=args.expansion_factor, corpus=args.corpus,
                  n_train_tokens=args.train_tokens, n_heldout_tokens=args.heldout_tokens, epochs=args.epochs,
                  max_epochs=args.max_epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                  architecture=args.architecture, store_dir=args.store_dir, hook=hook_template(args.hook),
                  ram_budget_bytes=parse_bytes(args.ram_budget))
    chosen = {k: v for k, v in chosen.items() if v is not None}
    if "epochs" in chosen and "max_epochs" not in chosen:
        chosen["max_epochs"] = max(chosen["epochs"], TrainConfig.max_epochs)
    return TrainConfig(**chosen)


def run(args) -> int:
    config = _config(args)
    if args.activations:
        return _run_store(args, config)
    from trajectory.io import check_output_dir, default_bank_dir
    from trajectory.model.load import load_model
    from trajectory.presets import get_preset, parse_layers
    from trajectory.saes.bank_format import MANIFEST, read_manifest
    from trajectory.training.train import train_saes

    preset = get_preset(args.preset)
    short = config.hook.split("{layer}.", 1)[1].replace("attn.", "").removeprefix("hook_")
    out = check_output_dir(args.out or default_bank_dir(f"{preset.name}-{short}"), [MANIFEST], what="bank folder")
    layers = parse_layers(args.layers, preset.n_layers)
    model = load_model(preset.name, device=args.device)
    bank = train_saes(model, config, layers=layers, device=args.device, progress=not args.no_progress)
    bank.preset = preset.name  # the model it was trained on; each layer's hook is in the manifest
    bank.to(device="cpu", dtype=args.dtype).save(out, progress=not args.no_progress)
    manifest = read_manifest(out)
    rows = {int(x): (m["hook_name"], m["d_in"], m["d_sae"], m.get("metrics") or {})
            for x, m in manifest["layers"].items()}
    print_table(rows, "layer")
    print(f"SAE bank: {Path(out).resolve()}  ({len(rows)} SAEs at {config.hook}, model {manifest.get('model_name')}); "
          f"open it with --bank {out}")
    return 0


def _run_store(args, config) -> int:
    from trajectory.training.from_store import train_on_store

    out = Path(args.out) if args.out else Path(args.activations) / "sae"
    result = train_on_store(args.activations, config, out, progress=not args.no_progress)
    rows = {hook: (hook, result.store.width, result.saes[hook].cfg.d_sae, m) for hook, m in result.metrics.items()}
    print_table(rows, "hook")
    print(f"SAEs: {out.resolve()}  (one sae-lens folder per hook, metrics.json; "
          f"store {Path(args.activations).resolve()}, {result.store.n_tokens:,} tokens)")
    return 0


def print_table(rows: dict, key: str) -> None:
    """One line per SAE: key, hook, d_in, d_sae, L0, EV, dead, CE clean / spliced / zero-ablated."""

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    head = [key, "hook", "d_in", "d_sae", "L0", "expl.var", "dead", "CE clean", "CE spliced", "CE zero-abl"]
    lines = [[str(name), hook, str(d_in), str(d_sae), num(m.get("l0"), ".1f"), num(m.get("explained_variance"), ".3f"),
              num(m.get("dead_fraction"), ".1%"), num(m.get("loss_clean"), ".3f"), num(m.get("loss_spliced"), ".3f"),
              num(m.get("loss_zero_ablation"), ".3f")] for name, (hook, d_in, d_sae, m) in rows.items()]
    widths = [max(len(h), *(len(r[i]) for r in lines)) if lines else len(h) for i, h in enumerate(head)]
    for cells in [head, *lines]:
        print("  ".join(c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))

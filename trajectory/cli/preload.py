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

import re
from pathlib import Path
from typing import Any


def register(sub) -> None:
    p = sub.add_parser(
        "preload",
        help="stage 1: resolve (or train) the SAE of every layer and write an SAE bank",
        description=(
            "Resolve the SAE of every layer — a sae-lens release, a local folder, or (preset offline) "
            "train the missing ones — and write a bank folder (safetensors per layer + manifest.json) "
            "that later stages open in about a second. Prints layer, source, d_sae, dtype, bytes and metrics."
        ),
    )
    p.add_argument("--preset", default="offline", help="model + SAE preset (see `trajectory presets`; default: offline)")
    p.add_argument("--layers", default=None, help="layers, e.g. 0-17 or 3,5,7 (default: all layers of the model)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="SAE dtype in the bank (default: float32)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available) for loading / training")
    p.add_argument("--out", default=None, help="bank folder (default: results/banks/<preset or source name>)")
    p.add_argument("--force", action="store_true", help="rebuild the requested layers even if the bank has them")
    p.add_argument("--corpus", default=None, help="training text for offline SAEs: a text file, a folder, or a HF dataset name")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _source_name(args) -> str:
    if args.sae_folder:
        return Path(args.sae_folder).resolve().name
    if args.release:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", args.release)
    return args.preset


def run(args) -> int:
    from trajectory.io import RESULTS_DIR
    from trajectory.presets import get_preset, parse_layers
    from trajectory.sae_bank import read_manifest

    if bool(args.release) != bool(args.sae_id_template):
        raise ValueError("--release and --sae-id-template go together (e.g. --sae-id-template 'layer_{layer}/width_16k/canonical')")
    if args.release and args.sae_folder:
        raise ValueError("pass either --release or --sae-folder, not both")
    custom = bool(args.release or args.sae_folder)
    preset = None if custom else get_preset(args.preset)
    out = Path(args.out) if args.out else RESULTS_DIR / "banks" / _source_name(args)
    progress = not args.no_progress

    n_layers = preset.n_layers if preset else _model_layers(args.model)
    if n_layers is None and args.release and not args.layers:
        raise ValueError("with --release, pass --layers (e.g. 0-25) or --model to know how many layers there are")
    layers = parse_layers(args.layers, n_layers) if n_layers else _explicit_layers(args.layers)

    existing: dict[str, Any] | None = None
    if (out / "manifest.json").is_file():
        existing = read_manifest(out)
    have = {int(k) for k in existing["layers"]} if existing else set()
    wanted = set(layers) if layers is not None else None

    if existing and not args.force and wanted is not None and wanted <= have and _same_dtype(existing, args.dtype, wanted):
        print(f"SAE bank at {out} already has layers {_span(sorted(wanted))}; nothing to rebuild (use --force to redo)")
        _print_table(existing, out, sorted(wanted))
        return 0

    if layers is None:  # --sae-folder without --layers: whatever the folder has
        kept: set[int] = set()
    else:
        kept = have - set(layers) if args.force else set(have)
    bank = _build(args, preset, layers, kept, out, progress)
    if args.model and custom:
        from trajectory.models import load_model

        bank.check_model(load_model(args.model, device=args.device))
    bank.save(out, progress=progress)
    manifest = read_manifest(out)
    _print_table(manifest, out, bank.layers)
    return 0


def _build(args, preset, layers, kept: set[int], out: Path, progress: bool):
    """The bank to save: layers ``kept`` from the existing bank at ``out``, the others resolved."""
    from trajectory.sae_bank import SAEBank

    device = args.device or _default_device()
    old = SAEBank.open(out, layers=sorted(kept), dtype=args.dtype) if kept else None
    todo = None if layers is None else [x for x in layers if x not in kept]
    new = None
    if todo == []:
        pass
    elif args.sae_folder:
        new = SAEBank.from_folder(args.sae_folder, dtype=args.dtype, device=device, layers=todo,
                                  hook_template=args.hook_template, model_name=args.model or "", progress=progress)
    elif args.release:
        new = SAEBank.from_release(args.release, args.sae_id_template, todo, dtype=args.dtype, device=device,
                                   hook_template=args.hook_template, model_name=args.model, progress=progress)
    elif preset.sae_release is not None:
        new = SAEBank.from_preset(preset.name, layers=todo, dtype=args.dtype, device=device, bank_dir=out,
                                  progress=progress)
    else:  # offline preset: no published SAEs, train the missing layers locally
        from trajectory.models import load_model
        from trajectory.training import train_bank

        print(f"training SAEs for layer(s) {_span(todo)} of {preset.model_name} (bank: {out})", flush=True)
        model = load_model(preset.name, device=device)
        options = dict(d_sae=args.d_sae, k=args.k, n_train_tokens=args.train_tokens, epochs=args.epochs)
        new = train_bank(model, layers=todo, corpus=args.corpus, device=device, progress=progress,
                         architecture=args.architecture, **{k: v for k, v in options.items() if v is not None})
        new.to(dtype=args.dtype)
    entries = {**(old.entries if old else {}), **(new.entries if new else {})}
    metadata = {**(old.metadata if old else {}), **(new.metadata if new else {})}
    model_name = (new.model_name if new else "") or (old.model_name if old else "") or (preset.model_name if preset else "")
    bank = SAEBank(entries, model_name=model_name, preset=preset.name if preset else None, metadata=metadata)
    return bank.to(device="cpu")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _model_layers(model_name: str | None) -> int | None:
    if not model_name:
        return None
    try:
        from transformer_lens.loading_from_pretrained import get_pretrained_model_config

        return int(get_pretrained_model_config(model_name).n_layers)
    except Exception:
        return None


def _explicit_layers(spec: str | None) -> list[int] | None:
    if spec is None:
        return None
    from trajectory.presets import parse_layers

    return parse_layers(spec, 10**6)


def _same_dtype(manifest: dict, dtype: str, layers: set[int]) -> bool:
    return all(manifest["layers"][str(x)].get("dtype") == dtype for x in layers)


def _span(layers) -> str:
    from trajectory.sae_bank import _span as span

    return span(layers)


def _print_table(manifest: dict, out: Path, layers) -> None:
    """layer, source, d_sae, dtype, bytes, L0, explained variance, dead fraction, delta loss."""
    from trajectory.sae_bank import format_bytes

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
    line = lambda cells: "  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
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

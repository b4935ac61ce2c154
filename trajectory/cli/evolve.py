"""``trajectory evolve``: stage 2 — top-k SAE features of every (prefix, layer, step).

Examples::

    trajectory evolve --preset offline
    trajectory evolve --preset offline --prompt "Mark gave flashlight to" --layers 0-5 --k 100
    trajectory evolve --preset offline --prompt-file prompts.txt --out results/offline/evolutions
"""
from __future__ import annotations

from pathlib import Path

#: The sentence the original research code used (and the README's main command).
ORIGINAL_PROMPT = (
    "The final correct answer: Max, Mark and Smith are in the empty dark room. Smith left. Mark gave flashlight to"
)


def register(sub) -> None:
    p = sub.add_parser(
        "evolve",
        help="stage 2: SAE features of every prefix, layer and attention step of a prompt",
        description=(
            "For every layer L and prefix length n, encode with layer L's SAE the residual stream "
            "before attention, after each key token's attention contribution, and after the MLP; "
            "keep the top-k active features. Writes a safetensors evolution file "
            "(one per prompt with --prompt-file; reruns skip finished prompts)."
        ),
    )
    p.add_argument("--preset", default="offline", help="model + SAE preset (see `trajectory presets`; default: offline)")
    p.add_argument("--prompt", default=None, help="the prompt (default: the original research sentence)")
    p.add_argument("--prompt-file", default=None, help="text file, one prompt per line; writes one file per prompt into --out")
    p.add_argument("--k", type=int, default=400, help="features kept per step, active ones only (default: 400)")
    p.add_argument("--layers", default=None, help="layers, e.g. 0-17 or 3,5,7 (default: all layers of the bank)")
    p.add_argument("--max-tokens", type=int, default=128, help="refuse longer prompts, BOS included (default: 128)")
    p.add_argument(
        "--postnorm",
        choices=["per_partial_sum", "frozen_scale"],
        default="per_partial_sum",
        help="post-attention norm of partial sums: each with its own RMS (original method, default) "
        "or the scale frozen at the full sum (exact linear split)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="SAE dtype when opening the bank, e.g. bfloat16 (default: as stored)")
    p.add_argument("--bank", default=None, help="SAE bank folder (default: results/banks/<preset>)")
    p.add_argument(
        "--out",
        default=None,
        help="output file (default: results/<preset>/evolution.safetensors), or folder with --prompt-file "
        "(default: results/<preset>/evolutions)",
    )
    p.add_argument("--method", choices=["auto", "feature_space", "direct"], default="auto", 
                   help="how step vectors are encoded: mixing in feature space (fast) or the SAE's own encode (default: auto)")
    p.add_argument("--batch-size", type=int, default=None, help="step rows per encode batch (default: from SAE width)")
    p.add_argument("--overwrite", action="store_true", help="with --prompt-file: recompute files made with other settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def read_prompts(path: str | Path) -> list[str]:
    """Non-empty lines of a prompt file; a clear error when there are none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} has no non-empty lines")
    return prompts


def open_bank(preset_name: str, bank_dir: str | Path | None, *, layers=None, device=None, dtype=None):
    """The SAE bank for ``preset_name``: the preloaded folder, else (hub presets) sae-lens.

    Raises ``FileNotFoundError`` telling to run ``trajectory preload`` when neither works.
    """
    from trajectory.io import RESULTS_DIR
    from trajectory.presets import get_preset
    from trajectory.sae_bank import SAEBank

    preset = get_preset(preset_name)
    folder = Path(bank_dir) if bank_dir else RESULTS_DIR / "banks" / preset.name
    if folder.exists():
        kwargs = {k: v for k, v in dict(device=device, dtype=dtype).items() if v is not None}
        return SAEBank.open(folder, layers=layers, **kwargs)
    if bank_dir is None and preset.sae_release:
        return SAEBank.from_preset(preset.name, layers=layers)
    raise FileNotFoundError(
        f"no SAE bank at {folder}; run `trajectory preload --preset {preset.name}` first"
        + ("" if bank_dir is None else " (or pass the folder it wrote with --bank)")
    )


def load_model(preset_name: str, device: str | None = None):
    """The preset's model (``trajectory.models.load_model``)."""
    from trajectory.models import load_model as load

    return load(preset_name, device=device)


def run(args) -> int:
    import torch

    from trajectory.engine import evolve, evolve_many
    from trajectory.io import RESULTS_DIR
    from trajectory.presets import get_preset, parse_layers

    preset = get_preset(args.preset)
    layers = parse_layers(args.layers, preset.n_layers) if args.layers else None
    if args.prompt is not None and args.prompt_file is not None:
        raise ValueError("pass either --prompt or --prompt-file, not both")
    prompts = read_prompts(args.prompt_file) if args.prompt_file else None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    bank = open_bank(preset.name, args.bank, layers=layers, dtype=args.dtype)
    model = load_model(preset.name, device=device)
    options = dict(
        k=args.k,
        layers=layers,
        max_tokens=args.max_tokens,
        postnorm=args.postnorm,
        device=device,
        batch_size=args.batch_size,
        method=args.method,
        preset=preset.name,
    )
    if prompts is not None:
        out = Path(args.out) if args.out else RESULTS_DIR / preset.name / "evolutions"
        paths = evolve_many(model, bank, prompts, out, overwrite=args.overwrite, progress=not args.no_progress, **options)
        print(f"wrote {len(paths)} evolution file(s) to {out}/ (index: {out / 'index.json'})")
        return 0
    prompt = args.prompt if args.prompt is not None else ORIGINAL_PROMPT
    evo = evolve(model, bank, prompt, progress=not args.no_progress, **options)
    out = Path(args.out) if args.out else RESULTS_DIR / preset.name / "evolution.safetensors"
    evo.save(out)
    print(
        f"wrote {out} ({evo.n_tokens} tokens, layers {evo.layers[0]}-{evo.layers[-1]}, k={evo.k}, "
        f"postnorm={evo.postnorm})"
    )
    return 0

"""``trajectory bench evolve``: speed of the evolution engine versus the original loop
and the naive floor, as ratios measured in one run (see :mod:`trajectory.bench`)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (evolve: engine vs original loop vs naive floor)")
    p.add_argument("target", choices=["evolve"], help="what to benchmark")
    p.add_argument("--preset", default="offline", help="model preset (default: offline)")
    p.add_argument("--tiny", action="store_true", help="use the tiny test model instead (seconds; for trying it out)")
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="use a randomly initialised model with the offline preset's shapes (Gemma 3 270M: d_model 640, "
        "4 query heads, 1 KV head, d_head 256, 18 layers) instead of loading the real one",
    )
    p.add_argument("--lengths", default="16,32,64", help="prompt lengths N, BOS included (default: 16,32,64)")
    p.add_argument("--widths", default="16384,65536", help="random JumpReLU SAE widths (default: 16384,65536; '' for none)")
    p.add_argument("--l0", type=int, default=64, help="features firing per input in the random SAEs (default: 64)")
    p.add_argument("--layers", default=None, help="layers to run, e.g. 0-17 (default: first, middle and last)")
    p.add_argument("--k", type=int, default=400, help="top-k (default: 400)")
    p.add_argument("--repeats", type=int, default=1, help="runs per measurement, best kept (default: 1)")
    p.add_argument("--bank", default=None, help="also time this SAE bank folder (default: results/banks/<preset> if it exists)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall-clock seconds (default) or CPU seconds per torch thread (steadier on a busy machine)")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    import torch

    from trajectory.bench import bench_evolve, calibrated_random_bank, format_table, prompt_of_length, rows_as_dicts, HEADER
    from trajectory.io import RESULTS_DIR, atomic_write
    from trajectory.presets import get_preset, parse_layers

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    widths = [int(x) for x in args.widths.split(",") if x.strip()]
    if args.tiny:
        from trajectory.testing import tiny_model

        model = tiny_model()
        preset = None
    elif args.synthetic:
        from trajectory.testing import tiny_model

        model = tiny_model(
            d_model=640, d_head=256, n_heads=4, n_key_value_heads=1, d_mlp=2048, n_layers=18, rotary_dim=256,
            window_size=512, attn_types=["local"] * 5 + ["global"] + ["local"] * 5 + ["global"] + ["local"] * 5 + ["global"],
            model_name="synthetic-gemma-3-270m-shape",
        )
        preset = None
    else:
        from trajectory.cli.evolve import load_model

        preset = get_preset(args.preset)
        model = load_model(preset.name, device=device)
    n = model.cfg.n_layers
    layers = parse_layers(args.layers, n) if args.layers else sorted({0, n // 2, n - 1})
    calib = prompt_of_length(model, max(lengths))
    banks = {}
    for width in widths:
        banks[f"random-{width // 1024}k-l0{args.l0}" if width >= 1024 else f"random-{width}-l0{args.l0}"] = calibrated_random_bank(model, calib, layers, width, l0=args.l0)
    if preset is not None:
        from trajectory.cli.evolve import open_bank

        folder = Path(args.bank) if args.bank else RESULTS_DIR / "banks" / preset.name
        if folder.exists():
            banks[f"bank:{preset.name}"] = open_bank(preset.name, folder, layers=layers, device=device)
        elif args.bank:
            raise FileNotFoundError(f"no SAE bank at {folder}")
        else:
            print(f"note: no bank at {folder}; run `trajectory preload --preset {preset.name}` to time it too")
    if not banks:
        raise ValueError("no SAEs to time: pass --widths, or preload a bank (`trajectory preload`)")
    print(f"model {model.cfg.model_name}, device {device}, layers {layers}, k={args.k}, repeats={args.repeats}, "
          f"torch threads {torch.get_num_threads()}")
    print(HEADER)
    rows = bench_evolve(model, banks, lengths=lengths, layers=layers, k=args.k, repeats=args.repeats, device=device,
                        clock=args.clock)
    print("\n" + format_table(rows))
    if args.out:
        with atomic_write(args.out) as fh:
            json.dump(dict(model=model.cfg.model_name, device=device, layers=layers, k=args.k, rows=rows_as_dicts(rows)), fh, indent=1)
        print(f"wrote {args.out}")
    return 0

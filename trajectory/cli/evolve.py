"""``trajectory evolve``: stage 2 — top-k SAE features of every (prefix, layer, step).

Examples::

    trajectory evolve --preset offline
    trajectory evolve --preset offline --prompt "Mark gave flashlight to" --layers 0-5 --k 100
    trajectory evolve --preset offline --prompt-file prompts.txt --out results/offline/evolutions
    trajectory evolve --preset offline --prompt-file prompts.txt --ray auto --workers 2
    trajectory evolve --preset gemma-2-2b-res-65k --prompt-file prompts.txt --out /shared/runs/ioi \
        --ray 10.0.0.5:6379 --workers 8 --gpus-per-worker 1
"""
from __future__ import annotations

from trajectory.cli import options


def register(sub) -> None:
    p = options.add_parser(
        sub, "evolve",
        help="stage 2: SAE features of every prefix, layer and attention step of a prompt",
        description=(
            "For every layer L and prefix length n, encode with layer L's SAE the residual stream "
            "before attention, after each key token's attention contribution, and after the MLP; "
            "keep the top-k active features. Writes a safetensors evolution file "
            "(one per prompt with --prompt-file; reruns skip finished prompts)."
        ),
    )
    options.add_preset(p)
    p.add_argument("--prompt", default=None, help="the prompt (default: the original research sentence)")
    p.add_argument("--prompt-file", default=None, help="text file, one prompt per line; writes one file per prompt into --out")
    p.add_argument("--k", type=int, default=400, help="features kept per step, active ones only (default: 400)")
    options.add_layers(p, "all layers of the bank")
    p.add_argument("--max-tokens", type=int, default=128, help="refuse longer prompts, BOS included (default: 128)")
    p.add_argument(
        "--postnorm",
        choices=["per_partial_sum", "frozen_scale"],
        default="per_partial_sum",
        help="post-attention norm of partial sums: each with its own RMS (original method, default) "
        "or the scale frozen at the full sum (exact linear split)",
    )
    options.add_device(p)
    options.add_dtype(p)
    options.add_bank(p)
    options.add_out(p, "output file (default: results/<preset>/<prompt words + hash>/evolution.safetensors), or "
                       "folder with --prompt-file (default: results/<preset>/evolutions)")
    p.add_argument("--method", choices=["auto", "feature_space", "direct"], default="auto",
                   help="how step vectors are encoded: mixing in feature space (fast) or the SAE's own encode "
                   "(default: auto)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="with --prompt-file: prompts per forward pass, prompts of similar length grouped "
                   "(default: 8; 1: one at a time)")
    p.add_argument("--encode-batch-size", type=int, default=None,
                   help="step rows per SAE encode batch (default: from SAE width)")
    p.add_argument("--max-rows", type=int, default=1_000_000,
                   help="refuse evolutions of more step rows (layers x sum of n+2 over prefixes) than this "
                   "(default: 1000000, about 330 tokens on 18 layers)")
    p.add_argument("--allow-other-model", action="store_true",
                   help="use an SAE bank recorded for another model (refused by default)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an --out file that holds another prompt's evolution; with --prompt-file: recompute "
                   "files made with other settings")
    ray = p.add_argument_group("scale-out on Ray (needs pip install 'trajectory[distributed]'; with --prompt-file)")
    ray.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|ADDRESS",
                     help="evolve the prompt file on Ray workers that each load the model and bank once: 'auto' "
                     "(default when given alone) starts a local cluster for this run; ADDRESS joins a running "
                     "one (host:6379 printed by `ray start --head`; --out must be on a filesystem every node sees)")
    ray.add_argument("--workers", type=int, default=None, help="Ray workers (default: 2)")
    ray.add_argument("--gpus-per-worker", type=float, default=None,
                     help="GPUs reserved per Ray worker, which then computes on its GPU (default: 0, on CPU)")
    options.add_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from trajectory.pipeline import EvolveConfig, read_prompts, run_evolve
    from trajectory.presets import get_preset

    preset = get_preset(args.preset)
    config = EvolveConfig(
        preset=preset.name, bank=args.bank, dtype=args.dtype, device=args.device, k=args.k,
        layers=options.layer_list(args.layers, preset.n_layers), max_tokens=args.max_tokens,
        postnorm=args.postnorm, method=args.method, batch_size=args.batch_size,
        encode_batch_size=args.encode_batch_size, max_rows=args.max_rows, allow_other_model=args.allow_other_model,
    )
    if args.prompt is not None and args.prompt_file is not None:
        raise ValueError("pass either --prompt or --prompt-file, not both")
    if args.batch_size is not None and args.prompt_file is None:
        raise ValueError("--batch-size (prompts per forward pass) needs --prompt-file; "
                         "--encode-batch-size sets the SAE encode batch")
    prompts = read_prompts(args.prompt_file) if args.prompt_file else None
    result = run_evolve(config, prompt=args.prompt, prompts=prompts, out=args.out, overwrite=args.overwrite,
                        progress=not args.no_progress, ray=_ray_options(args))
    if prompts is not None:
        print(f"wrote {len(result.paths)} evolution file(s) to {result.out}/ (index: {result.index})")
        import json

        for entry in json.loads(result.index.read_text(encoding="utf-8")):
            if entry.get("error"):
                print(f"  skipped {entry['prompt'][:60]!r}: {entry['error']}")
        return 0
    evo = result.evolution
    print(f"wrote {result.out} ({evo.n_tokens} tokens, layers {evo.layers[0]}-{evo.layers[-1]}, k={evo.k}, "
          f"postnorm={evo.postnorm})")
    print(f"next: trajectory graph {result.out}")
    return 0


def _ray_options(args):
    """``RayOptions`` from ``--ray``/``--workers``/``--gpus-per-worker``; ``None`` without ``--ray``."""
    if args.ray is None:
        if args.workers is not None or args.gpus_per_worker is not None:
            raise ValueError("--workers and --gpus-per-worker need --ray (auto or a cluster address)")
        return None
    if args.prompt_file is None:
        raise ValueError("--ray runs a prompt set: pass --prompt-file")
    from trajectory.evolution.distributed import RayOptions

    return RayOptions(address=args.ray, workers=2 if args.workers is None else args.workers,
                      gpus_per_worker=args.gpus_per_worker or 0.0)

"""``trajectory steer``: base and steered continuations through SAE latents, side by side.

Examples::

    trajectory steer --preset offline --prompt "Mark gave the flashlight to" --intervene 6:123:clamp:0
    trajectory steer --prompt "..." --intervene 6:123:ablate --intervene 9:77:add:8:generated --max-new-tokens 30
"""
from __future__ import annotations

from trajectory.cli import options


def register(sub) -> None:
    p = options.add_parser(
        sub, "steer",
        help="steer generation by adding, clamping, ablating or scaling SAE latents",
        description=(
            "Generate a base and a steered continuation of a prompt (greedy unless --temperature), with "
            "per-token log-probs under both models, KL per position and the most promoted / suppressed "
            "first tokens. Writes steer.json, steer.html and steer.png."
        ),
    )
    options.add_preset(p)
    p.add_argument("--prompt", default=None, help="the prompt (default: the original research sentence)")
    p.add_argument("--intervene", action="append", default=[], metavar="L:F:MODE[:VALUE[:POSITIONS]]",
                   help="an intervention (repeatable): MODE add|clamp|ablate|scale; POSITIONS all (default), "
                   "prompt, generated, 3,5,7, 4-9 or 4-; e.g. 6:123:clamp:0 or 9:77:add:8:generated")
    p.add_argument("--max-new-tokens", type=int, default=30, help="tokens generated per continuation (default: 30)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); above 0 samples")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--top-k", type=int, default=10, help="promoted / suppressed tokens listed (default: 10)")
    options.add_device(p)
    options.add_dtype(p)
    options.add_bank(p)
    options.add_out(p, "output folder (default: results/<preset>/steer/<prompt words + hash>)")
    p.set_defaults(func=run)


def run(args) -> int:
    from trajectory.interventions.intervention import Intervention
    from trajectory.interventions.render import write_steer_outputs
    from trajectory.interventions.steering import steer
    from trajectory.io import RESULTS_DIR
    from trajectory.model.load import default_device, load_model
    from trajectory.pipeline import ORIGINAL_PROMPT, open_bank, prompt_slug
    from trajectory.presets import get_preset

    if not args.intervene:
        raise ValueError("no interventions given; pass --intervene L:F:MODE[:VALUE], e.g. --intervene 6:123:clamp:0")
    interventions = [Intervention.parse(spec) for spec in args.intervene]  # parse errors before loading anything
    preset = get_preset(args.preset)
    prompt = args.prompt if args.prompt is not None else ORIGINAL_PROMPT
    bank = open_bank(preset.name, args.bank, layers=sorted({iv.layer for iv in interventions}), dtype=args.dtype)
    model = load_model(preset.name, device=args.device or default_device())
    result = steer(model, bank, prompt, interventions, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, seed=args.seed, top_k=args.top_k)
    out = args.out or RESULTS_DIR / preset.name / "steer" / prompt_slug(prompt)
    paths = write_steer_outputs(result, out)
    print(f"prompt:   {prompt}")
    print(f"base:     {result.base_text}")
    print(f"steered:  {result.steered_text}")
    print(f"max KL {max(result.kl):.4g} at position {result.kl.index(max(result.kl))}")
    print(f"wrote {paths['json']}, {paths['html']}, {paths['png']}")
    return 0

"""``trajectory presets``: list the known model + SAE presets."""
from __future__ import annotations


def register(sub) -> None:
    from trajectory.cli.options import add_parser

    p = add_parser(sub, "presets", help="list the known presets (model + SAE per layer)")
    p.set_defaults(func=run)


def run(args) -> int:
    from trajectory.presets import DEFAULT_PRESET, PRESETS

    width = max(len(name) for name in PRESETS)
    for name, p in PRESETS.items():
        mark = " (default)" if name == DEFAULT_PRESET else ""
        sae = f"{p.sae_release}:{p.sae_id_template}" if p.sae_release else "trained locally"
        print(f"{name:<{width}}  {p.model_name:<20} layers={p.n_layers:<3} SAEs: {sae}{mark}")
        print(f"{'':<{width}}  {p.description}")
    return 0

"""``trajectory graph``: stage 3 — newcomers → trajectory graph → files and pictures.

Reads an evolution file (no model is loaded), builds the trajectory graph
(:func:`trajectory.graph.trajectory_graph`), attaches feature explanations when it can
get them (:mod:`trajectory.explanations`; a graph renders without them), writes the
graph in the requested formats and renders it (:mod:`trajectory.render`).

Examples::

    trajectory graph --evolution results/offline/evolution.safetensors
    trajectory graph --evolution results/offline/evolution.safetensors --T 13 --formats png,graphml --offline
    trajectory graph --evolution run.safetensors --through mlp --include-bos --no-evolution-plots --out figs/
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

#: every output format, in the order outputs are made
ALL_FORMATS = ("png", "html", "graphml", "gexf", "json")
DEFAULT_EVOLUTION = "results/offline/evolution.safetensors"


def register(sub) -> None:
    p = sub.add_parser(
        "graph",
        help="stage 3: trajectory graph of an evolution file (PNG, HTML, GraphML, GEXF, JSON)",
        description=(
            "Find the newcomer features of every prefix and layer (features absent before attention that a "
            "key token's attention brought in and that end with rank <= T), trace them backwards from the "
            "prompt's last token into a NetworkX graph, attach explanations, export and render it. "
            "No model is loaded."
        ),
    )
    p.add_argument(
        "--evolution",
        default=DEFAULT_EVOLUTION,
        help=f"evolution file from `trajectory evolve` (default: {DEFAULT_EVOLUTION})",
    )
    p.add_argument("--T", type=int, default=22, help="newcomers need final rank <= T (default: 22; the original used 13-22)")
    p.add_argument(
        "--formats",
        default=",".join(ALL_FORMATS),
        help=f"comma-separated outputs among {','.join(ALL_FORMATS)} (default: all)",
    )
    p.add_argument("--through", choices=["attention", "mlp"], default="attention",
                   help="final step of newcomers: the last attention step (default) or after the MLP")
    p.add_argument("--include-bos", action="store_true", help="draw edges from the BOS token (left out by default)")
    p.add_argument(
        "--offline", action="store_true", help="no network: explanations only from the disk cache / the local bank"
    )
    p.add_argument("--bank", default=None, help="SAE bank folder for local explanations (default: results/banks/<preset>)")
    p.add_argument("--no-explanations", action="store_true", help="render without feature explanations")
    p.add_argument("--evolution-plots", action=argparse.BooleanOptionalAction, default=True,
                   help="draw the per-layer evolution plot of the full prompt, PNG/HTML per the formats, into "
                   "<out>/evolution/ (default: on; --no-evolution-plots to skip)")
    p.add_argument("--out", default=None, help="output folder (default: a 'graph' folder beside the evolution file)")
    p.add_argument("--name", default="graph", help="base name of the graph files (default: graph)")
    p.set_defaults(func=run)


def parse_formats(text: str) -> list[str]:
    """``"png, json"`` -> ``["png", "json"]``; a clear error for unknown formats."""
    formats = [f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in ALL_FORMATS]
    if bad or not formats:
        raise ValueError(f"unknown output format(s) {bad or text!r}; choose among {','.join(ALL_FORMATS)}")
    return list(dict.fromkeys(formats))


def get_explanations(evo, features, *, offline: bool, bank_path=None) -> dict[tuple[int, int], str]:
    """Explanations of ``features`` from :mod:`trajectory.explanations`; ``{}`` with a
    warning when they cannot be had (module missing, network down, no bank, ...)."""
    features = list(features)
    if not features:
        return {}
    try:
        from trajectory.explanations import explain_features

        return dict(explain_features(evo, features, offline=offline, bank_path=bank_path) or {})
    except Exception as exc:  # any failure here must not stop the graph
        warnings.warn(f"no feature explanations ({type(exc).__name__}: {exc}); rendering without them", stacklevel=2)
        return {}


def make_graph_outputs(
    evo,
    out: str | Path,
    *,
    formats: Sequence[str] = ALL_FORMATS,
    T: int = 22,
    through: str = "attention",
    include_bos: bool = False,
    explanations: bool = True,
    offline: bool = False,
    bank_path: str | Path | None = None,
    evolution_plots: bool = False,
    name: str = "graph",
) -> dict[str, Any]:
    """Build, explain, export and render the trajectory graph of ``evo`` into ``out``.

    Returns ``{"graph": g, "explained": int, "<format>": path, "evolution_plots": [paths]}``.
    """
    from trajectory.export import export_graph
    from trajectory.graph import attach_explanations, graph_features, trajectory_graph

    out = Path(out)
    g = trajectory_graph(evo, T=T, through=through, include_bos=include_bos)
    texts: dict[tuple[int, int], str] = {}
    if explanations:
        texts = get_explanations(evo, graph_features(g), offline=offline, bank_path=bank_path)
        attach_explanations(g, texts)
    result: dict[str, Any] = {"graph": g, "explained": sum(1 for v in texts.values() if v)}
    for fmt in formats:
        path = out / f"{name}.{fmt}"
        if fmt in ("graphml", "gexf", "json"):
            result[fmt] = export_graph(g, path)
        elif fmt == "png":
            from trajectory.render import render_png

            result[fmt] = render_png(g, path)
        elif fmt == "html":
            from trajectory.render import render_html

            result[fmt] = render_html(g, path)
    if evolution_plots:
        result["evolution_plots"] = _evolution_plots(evo, out / "evolution", formats, T=T, through=through, texts=texts)
    return result


def _evolution_plots(evo, folder: Path, formats: Sequence[str], *, T: int, through: str, texts) -> list[Path]:
    from tqdm.auto import tqdm

    kinds = [f for f in ("png", "html") if f in formats]
    if not kinds:
        return []
    from trajectory.render import evolution_plot_html, evolution_plot_png

    n = evo.n_tokens
    paths = []
    for layer in tqdm(evo.layers, desc="evolution plots", unit="layer"):
        by_feature = {f: t for (L, f), t in texts.items() if L == layer and t}
        for kind in kinds:
            draw = evolution_plot_png if kind == "png" else evolution_plot_html
            paths.append(draw(evo, layer, n, folder / f"layer_{layer:02d}.{kind}", T=T, through=through,
                              explanations=by_feature))
    return paths


def run(args) -> int:
    from trajectory.evolution import Evolution

    formats = parse_formats(args.formats)
    evo = Evolution.load(args.evolution)
    out = Path(args.out) if args.out else Path(args.evolution).resolve().parent / "graph"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = make_graph_outputs(
            evo,
            out,
            formats=formats,
            T=args.T,
            through=args.through,
            include_bos=args.include_bos,
            explanations=not args.no_explanations,
            offline=args.offline,
            bank_path=args.bank,
            evolution_plots=args.evolution_plots,
            name=args.name,
        )
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if not args.no_explanations and result["explained"] == 0 and result["graph"].number_of_edges():
        print("note: no feature explanations found (Neuronpedia offline or without these SAEs, and no local bank "
              "explanations); pass --bank <folder> for locally trained SAEs", file=sys.stderr)
    g = result["graph"]
    print(
        f"trajectory graph of {evo.n_tokens} tokens, {len(evo.layers)} layers (T={args.T}, "
        f"through {args.through}): {g.number_of_nodes()} nodes, {g.number_of_edges()} edges, "
        f"{result['explained']} features explained"
    )
    labels = {
        "png": "picture (PNG)",
        "html": "interactive (HTML)",
        "graphml": "GraphML",
        "gexf": "GEXF",
        "json": "node-link JSON",
    }
    for fmt in formats:
        print(f"  {labels[fmt]:<20} {result[fmt]}")
    plots = result.get("evolution_plots")
    if plots:
        print(f"  {'evolution plots':<20} {len(plots)} files in {Path(plots[0]).parent}")
    return 0

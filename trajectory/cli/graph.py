"""``trajectory graph``: stage 3 — newcomers → trajectory graph → files and pictures.

Reads an evolution file (no model is loaded), builds the trajectory graph, attaches
feature explanations when it can get them (a graph renders without them), writes the
graph in the requested formats and renders it (:func:`trajectory.pipeline.write_graph_outputs`).

Examples::

    trajectory graph results/offline/evolution.safetensors
    trajectory graph results/offline/evolution.safetensors --top-rank 13 --formats png,graphml --offline
    trajectory graph run.safetensors --through mlp --include-bos --no-evolution-plots --out figs/
    trajectory graph run.safetensors --dashboard results/dashboard/offline   # feature ids link to their cards
    trajectory graph                       # the newest evolution file under results/
"""
from __future__ import annotations

import argparse
import sys

from trajectory.cli import options

_LABELS = {"png": "picture (PNG)", "html": "interactive (HTML)", "graphml": "GraphML", "gexf": "GEXF",
           "json": "node-link JSON"}


def register(sub) -> None:
    from trajectory.pipeline import GRAPH_FORMATS

    p = options.add_parser(
        sub, "graph",
        help="stage 3: trajectory graph of an evolution file (PNG, HTML, GraphML, GEXF, JSON)",
        description=(
            "Find the newcomer features of every prefix and layer (features absent before attention that a "
            "key token's attention brought in and that end with rank <= T), trace them backwards from the "
            "prompt's last token into a NetworkX graph, attach explanations, export and render it. "
            "No model is loaded (except with --causal)."
        ),
    )
    p.add_argument("file", nargs="?", default=None, metavar="FILE",
                   help="evolution file from `trajectory evolve` (default: the newest under results/)")
    p.add_argument("--evolution", default=None, help="the evolution file, as an option (same as FILE)")
    p.add_argument("--top-rank", "--T", dest="T", type=int, default=22,
                   help="newcomers need final rank <= T (default: 22; the original used 13-22)")
    p.add_argument("--formats", default=",".join(GRAPH_FORMATS),
                   help=f"comma-separated outputs among {','.join(GRAPH_FORMATS)} (default: all)")
    p.add_argument("--through", choices=["attention", "mlp"], default="attention",
                   help="final step of newcomers: the last attention step (default) or after the MLP")
    p.add_argument("--include-bos", action="store_true", help="draw edges from the BOS token (left out by default)")
    p.add_argument("--offline", action="store_true",
                   help="no network: explanations only from the disk cache / the local bank")
    p.add_argument("--neuronpedia-url", default=None,
                   help="Neuronpedia server for explanations, e.g. a self-hosted one "
                   "(default: $NEURONPEDIA_URL, else https://www.neuronpedia.org)")
    options.add_bank(p, " for local explanations")
    p.add_argument("--no-explanations", action="store_true", help="render without feature explanations")
    p.add_argument("--evolution-plots", action=argparse.BooleanOptionalAction, default=True,
                   help="draw the per-layer evolution plot of the full prompt, PNG/HTML per the formats, into "
                   "<out>/evolution/ (default: on; --no-evolution-plots to skip)")
    options.add_out(p, "output folder (default: a 'graph' folder beside the evolution file)")
    p.add_argument("--name", default="graph", help="base name of the graph files (default: graph)")
    c = p.add_argument_group("causal test of the edges (loads the model and the SAE bank)")
    c.add_argument("--causal", action="store_true",
                   help="knock out each edge's key token at its layer and ablate its newcomers; edges get "
                   "knockout_kl, knockout_kl_query, knockout_logit_delta, newcomers_lost (hover and files)")
    c.add_argument("--min-kl", type=float, default=None, help="with --causal: drop edges whose knockout_kl is below this")
    c.add_argument("--edge-width", choices=["trajectories", "knockout_kl"], default="trajectories",
                   help="what edge width shows in the pictures: trajectories (default) or, with --causal, "
                   "each edge's knockout_kl")
    options.add_device(c)
    p.add_argument("--plotly-js", choices=["directory", "inline", "cdn"], default="directory",
                   help="plotly.js for the HTML pages: one shared plotly.min.js in the output folder (default; "
                   "pages open offline), inside every page (self-contained single files), or from plotly's CDN")
    p.add_argument("--dashboard", default=None, metavar="DIR",
                   help="a feature dashboard folder (from `trajectory dashboard --out DIR`): a click on a node or "
                   "edge of the HTML pages pins its features in a side panel, each linked to its card "
                   "DIR/layer_XX.html#fN (relative links: move the folders together)")
    p.set_defaults(func=run)


def run(args) -> int:
    from trajectory.evolution.result import Evolution
    from trajectory.pipeline import GraphConfig, default_graph_out, latest_evolution, write_graph_outputs

    config = GraphConfig(formats=args.formats, T=args.T, through=args.through, include_bos=args.include_bos,
                         explanations=not args.no_explanations, offline=args.offline, bank=args.bank,
                         neuronpedia_url=args.neuronpedia_url, plotly_js=args.plotly_js,
                         causal=args.causal, min_kl=args.min_kl, device=args.device, edge_width=args.edge_width,
                         evolution_plots=args.evolution_plots, name=args.name, dashboard=args.dashboard)
    if args.file and args.evolution and args.file != args.evolution:
        raise ValueError("name the evolution file once: as FILE or with --evolution")
    path = args.file or args.evolution or latest_evolution()
    if not (args.file or args.evolution):
        print(f"using the newest evolution file: {path}", file=sys.stderr)
    out = args.out or default_graph_out(path)
    if args.min_kl is not None and not args.causal:
        raise ValueError("--min-kl needs --causal (the KL comes from the knock-outs)")
    if args.neuronpedia_url:
        from trajectory.explanations.neuronpedia import NeuronpediaClient

        NeuronpediaClient(args.neuronpedia_url, offline=True)  # a malformed URL fails now, not as a warning later
    evo = Evolution.load(path)
    result = write_graph_outputs(evo, out, config)
    for text in result.warnings:
        print(f"warning: {text}", file=sys.stderr)
    g = result.graph
    if config.explanations and result.explained == 0 and g.number_of_edges():
        print("note: no feature explanations found (Neuronpedia offline or without these SAEs, and no local bank "
              "explanations); pass --bank <folder> for locally trained SAEs", file=sys.stderr)
    print(f"trajectory graph of {evo.n_tokens} tokens, {len(evo.layers)} layers (T={args.T}, "
          f"through {args.through}): {g.number_of_nodes()} nodes, {g.number_of_edges()} edges, "
          f"{result.explained} features explained")
    for fmt, path in result.paths.items():
        print(f"  {_LABELS[fmt]:<20} {path}")
    if args.dashboard and "html" in result.paths:
        print(f"  {'feature links to':<20} {args.dashboard}")
    if result.evolution_plots:
        print(f"  {'evolution plots':<20} {len(result.evolution_plots)} files in {result.evolution_plots[0].parent}")
    return 0

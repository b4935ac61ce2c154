"""``trajectory aggregate``: the aggregated feature-flow graph of a prompt-set folder.

Reads the folder ``trajectory evolve --prompt-file ... --out DIR`` wrote (``index.json``
and one evolution file per prompt; no model is loaded), adds up the prompts' feature
graphs (:func:`trajectory.graph.aggregate.aggregate`), and writes the graph as GraphML,
GEXF and node-link JSON plus a PNG and an HTML picture of its most frequent flows.

Examples::

    trajectory aggregate results/runs/ioi/ --T 22 --out results/runs/ioi/aggregate/
    trajectory aggregate results/runs/ioi/ --top-n 60 --no-explanations
"""
from __future__ import annotations

from trajectory.cli import options


def register(sub) -> None:
    p = options.add_parser(
        sub, "aggregate",
        help="aggregated feature-flow graph of a prompt-set folder (GraphML, GEXF, JSON, PNG, HTML)",
        description=(
            "Build every prompt's feature-level trajectory graph and add them up: nodes (layer, feature) with "
            "the number of prompts they arrive in and the key tokens that bring them, edges (L-1, g) -> (L, f) "
            "with the number of prompts in which f arrived through a stream g had newly arrived at. "
            "No model is loaded."
        ),
    )
    p.add_argument("folder", metavar="DIR",
                   help="prompt-set folder from `trajectory evolve --prompt-file` (with index.json)")
    p.add_argument("--top-rank", "--T", dest="T", type=int, default=22,
                   help="newcomers need final rank <= T (default: 22)")
    p.add_argument("--through", choices=["attention", "mlp"], default="attention",
                   help="final step of newcomers: the last attention step (default) or after the MLP")
    p.add_argument("--include-bos", action="store_true", help="count flows from the BOS token (left out by default)")
    p.add_argument("--top-n", type=int, default=120,
                   help="edges drawn in the pictures, most prompts first (default: 120)")
    p.add_argument("--no-explanations", action="store_true", help="no feature explanations")
    p.add_argument("--offline", action="store_true", help="explanations only from the disk cache / the local bank")
    options.add_bank(p, " for local explanations")
    p.add_argument("--plotly-js", choices=["directory", "inline", "cdn"], default="directory",
                   help="plotly.js for the HTML page (default: one shared plotly.min.js beside it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    options.add_out(p, "output folder (default: DIR/aggregate)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from trajectory.graph.aggregate import aggregate_folder, explain_aggregate, read_index, top_flows
    from trajectory.graph.export import export_graph
    from trajectory.render.aggregate import render_aggregate_html, render_aggregate_png

    if args.top_n < 1:
        raise ValueError(f"--top-n must be at least 1, not {args.top_n}")
    read_index(args.folder)  # a missing folder or index fails before any work
    g = aggregate_folder(args.folder, T=args.T, through=args.through, include_bos=args.include_bos,
                         progress=not args.no_progress)
    explained = 0
    if not args.no_explanations:
        explained = explain_aggregate(g, read_index(args.folder)[0][1], offline=args.offline, bank_path=args.bank)
    out = Path(args.out) if args.out else Path(args.folder) / "aggregate"
    paths = {fmt: export_graph(g, out / f"aggregate.{fmt}") for fmt in ("graphml", "gexf", "json")}
    paths["png"] = render_aggregate_png(g, out / "aggregate.png", top_n=args.top_n)
    paths["html"] = render_aggregate_html(g, out / "aggregate.html", top_n=args.top_n, plotly_js=args.plotly_js)
    print(f"aggregate of {g.graph['n_prompts']} prompts (T={args.T}, through {args.through}): "
          f"{g.number_of_nodes()} nodes, {g.number_of_edges()} edges, {explained} features explained")
    for row in top_flows(g, 5, features_only=True):
        print(f"  flow L{row['source'][0]} f{row['source'][1]} -> L{row['target'][0]} f{row['target'][1]}: "
              f"{row['prompts']} prompts, {row['occurrences']} occurrences")
    for fmt, path in paths.items():
        print(f"  {fmt:<8} {path}")
    return 0

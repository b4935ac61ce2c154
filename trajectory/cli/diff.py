"""``trajectory diff``: the contrastive graph of two prompts' evolution files.

Positions before the first differing token are identical by causality (checked, then
left out); from there on every trajectory edge is only in A, only in B, or in both with
its rank change (:func:`trajectory.graph.diff.diff_graph`). Writes ``diff.graphml``,
``diff.gexf``, ``diff.json``, ``diff.png`` and ``diff.html``. No model is loaded.

Examples::

    trajectory diff a.safetensors b.safetensors --T 22 --out results/diff/
"""
from __future__ import annotations

from trajectory.cli import options


def register(sub) -> None:
    p = options.add_parser(
        sub, "diff",
        help="contrastive graph of two prompts' evolution files (edges only in A, only in B, in both)",
        description=(
            "Compare two evolution files of prompts run with the same model and SAEs: check that the positions "
            "before the first differing token agree, then list every trajectory edge from there on as only in "
            "A, only in B or in both (with its rank change). No model is loaded."
        ),
    )
    p.add_argument("a", metavar="A", help="evolution file of prompt A")
    p.add_argument("b", metavar="B", help="evolution file of prompt B")
    p.add_argument("--top-rank", "--T", dest="T", type=int, default=22,
                   help="newcomers need final rank <= T (default: 22)")
    p.add_argument("--through", choices=["attention", "mlp"], default="attention",
                   help="final step of newcomers: the last attention step (default) or after the MLP")
    p.add_argument("--include-bos", action="store_true", help="include edges from the BOS token")
    p.add_argument("--plotly-js", choices=["directory", "inline", "cdn"], default="directory",
                   help="plotly.js for the HTML page (default: one shared plotly.min.js beside it)")
    options.add_out(p, "output folder (default: a 'diff' folder beside A)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from trajectory.evolution.result import Evolution
    from trajectory.graph.diff import diff_graph
    from trajectory.graph.export import export_graph
    from trajectory.render.diff import render_diff_html, render_diff_png

    for name in (args.a, args.b):
        if not Path(name).is_file():
            raise FileNotFoundError(f"no evolution file at {name}; make one with `trajectory evolve`")
    g = diff_graph(Evolution.load(args.a), Evolution.load(args.b), T=args.T, through=args.through,
                   include_bos=args.include_bos)
    out = Path(args.out) if args.out else Path(args.a).parent / "diff"
    paths = {fmt: export_graph(g, out / f"diff.{fmt}") for fmt in ("graphml", "gexf", "json")}
    paths["png"] = render_diff_png(g, out / "diff.png")
    paths["html"] = render_diff_html(g, out / "diff.html", plotly_js=args.plotly_js)
    sides = {s: sum(1 for *_, x in g.edges(data="side") if x == s) for s in ("a", "b", "both")}
    d = g.graph["first_difference"]
    print("the prompts are equal: empty diff" if d is None else
          f"first difference at token {d}: {sides['a']} edges only in A, {sides['b']} only in B, "
          f"{sides['both']} in both (largest activation difference before it: {g.graph['prefix_max_abs_diff']:.3g})")
    for fmt, path in paths.items():
        print(f"  {fmt:<8} {path}")
    return 0

"""Pictures of a diff graph (:mod:`trajectory.graph.diff`): PNG and HTML, three colours.

Tokens on x (``a/b`` where the prompts differ), layers up y, as for trajectory graphs;
a dashed line marks the first differing token (everything left of it is identical in
both prompts and left out). Edges only in prompt A are orange, only in B blue, in both
grey; width = the larger number of trajectories. Hover (HTML): the edge's ranks in A and
B, the rank change and the features by side.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import networkx as nx

from trajectory.render.page import write_page
from trajectory.render.style import GraphView, display_token, html_text, layer_label

__all__ = ["SIDE_COLOURS", "SIDE_NAMES", "render_diff_png", "render_diff_html", "diff_figure"]

SIDE_COLOURS = {"a": "#e66101", "b": "#2166ac", "both": "#8c8c8c"}
SIDE_NAMES = {"a": "only in A", "b": "only in B", "both": "in both"}
DIFF_DIV_ID = "diff-graph"


def _check(g: nx.DiGraph) -> GraphView:
    if g.graph.get("kind") != "diff":
        raise ValueError("this renders graphs made by trajectory.graph.diff.diff_graph (kind='diff')")
    return GraphView(g)


def _width(d: Mapping[str, Any], top: int, lo: float, hi: float) -> float:
    return lo + (hi - lo) * int(d.get("num_trajectories", 1)) / max(top, 1)


def _ids(ids) -> str:
    return ", ".join(str(i) for i in ids[:12]) + (" …" if len(ids) > 12 else "") if ids else "—"


def edge_text(view: GraphView, u, v, d: Mapping[str, Any]) -> str:
    """Hover text of a diff edge (escaped)."""
    t, q = int(d["source_token"]), int(d["target_token"])
    tok = lambda i: html_text(f"'{display_token(view.token(i), max_len=40)}'")  # noqa: E731
    lines = [f"<b>{SIDE_NAMES[d['side']]}</b> · {layer_label(d['layer'])} attention: key {t} {tok(t)} → "
             f"query {q} {tok(q)}",
             f"best rank A {d.get('best_rank_a') if d.get('best_rank_a') is not None else '—'} · "
             f"B {d.get('best_rank_b') if d.get('best_rank_b') is not None else '—'}"
             + (f" · change {d['rank_change']:+d}" if d.get("rank_change") is not None else ""),
             f"trajectories A {d.get('num_trajectories_a', 0)} · B {d.get('num_trajectories_b', 0)}",
             f"features only A: {_ids(d.get('features_only_a') or [])}",
             f"features only B: {_ids(d.get('features_only_b') or [])}",
             f"features in both: {_ids(d.get('features_shared') or [])}"]
    return "<br>".join(lines)


def _heading(g: nx.DiGraph, title: str | None) -> tuple[str, str]:
    from trajectory.render.style import prompt_text

    a, b = prompt_text(g.graph.get("tokens_a") or []), prompt_text(g.graph.get("tokens_b") or [])
    head = title or f"A: {a}  |  B: {b}"
    counts = {s: sum(1 for *_, x in g.edges(data="side") if x == s) for s in SIDE_COLOURS}
    d = g.graph.get("first_difference")
    meta = (f"{g.graph.get('model_name') or ''} · T={g.graph.get('T')} · first difference at token {d} · "
            + ", ".join(f"{counts[s]} {SIDE_NAMES[s]}" for s in SIDE_COLOURS))
    return head, meta


def _png_figure(g: nx.DiGraph, title: str | None, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from trajectory.render.png import figure_size, png_token_label

    view = _check(g)
    fig = Figure(figsize=figure_size(len(view.columns), len(view.rows)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    top = max((int(d.get("num_trajectories", 1)) for *_, d in g.edges(data=True)), default=1)
    edges = sorted(g.edges(data=True), key=lambda e: (e[2]["side"] != "both", e[2].get("num_trajectories", 0)))
    if edges:
        ax.add_collection(LineCollection([[view.xy(u), view.xy(v)] for u, v, _ in edges],
                                         colors=[SIDE_COLOURS[d["side"]] for *_, d in edges],
                                         linewidths=[_width(d, top, 0.8, 5.0) for *_, d in edges],
                                         alpha=0.85, zorder=2))
        nodes = list(g.nodes)
        ax.scatter([view.xy(n)[0] for n in nodes], [view.xy(n)[1] for n in nodes], s=14, c="#222222", zorder=3)
    else:
        ax.text(0.5, 0.5, "no difference after the first differing token" if g.graph.get("first_difference") is not None
                else "the prompts are equal: empty diff", transform=ax.transAxes, ha="center", va="center", fontsize=13)
    d = g.graph.get("first_difference")
    if d is not None:
        ax.axvline(d - 0.5, color="#555555", ls="--", lw=1, zorder=1)
    handles = [Line2D([], [], color=c, lw=3) for c in SIDE_COLOURS.values()]
    fig.legend(handles, list(SIDE_NAMES.values()), loc="outside upper right", ncols=3, fontsize=8, frameon=False)
    ax.set_xticks(view.columns, [png_token_label(view.token(i)) for i in view.columns], rotation=55, ha="right",
                  rotation_mode="anchor", fontsize=9)
    ax.set_yticks(range(len(view.rows)), [layer_label(L) for L in view.rows], fontsize=9)
    ax.set_xlim((view.columns[0] - 0.7) if view.columns else -0.7, (view.columns[-1] + 0.7) if view.columns else 0.7)
    ax.set_ylim(-0.7, len(view.rows) - 0.3)
    ax.set_xlabel("token (A/B where they differ)")
    ax.set_ylabel("layer")
    head, meta = _heading(g, title)
    ax.set_title(f"{head}\n{meta}", fontsize=10, loc="left")
    return fig


def render_diff_png(g: nx.DiGraph, path: str | Path, *, title: str | None = None, dpi: int = 150) -> Path:
    """Draw a diff graph to a PNG (atomically); returns the path."""
    from trajectory.render.png import save_png

    return save_png(lambda: _png_figure(g, title, dpi), path, dpi=dpi)


def diff_figure(g: nx.DiGraph, *, title: str | None = None):
    """The plotly ``Figure`` that :func:`render_diff_html` writes: one line trace per side."""
    import plotly.graph_objects as go

    view = _check(g)
    top = max((int(d.get("num_trajectories", 1)) for *_, d in g.edges(data=True)), default=1)
    traces = []
    for side, colour in SIDE_COLOURS.items():
        edges = [(u, v, d) for u, v, d in g.edges(data=True) if d["side"] == side]
        for i, (u, v, d) in enumerate(edges):
            (x0, y0), (x1, y1) = view.xy(u), view.xy(v)
            traces.append(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", legendgroup=side,
                                     name=SIDE_NAMES[side], showlegend=i == 0,
                                     line=dict(color=colour, width=_width(d, top, 1.0, 6.0)), opacity=0.85))
        if edges:
            pts = [(view.xy(u), view.xy(v), edge_text(view, u, v, d)) for u, v, d in edges]
            xs = [a[0] + f * (b[0] - a[0]) for a, b, _ in pts for f in (0.3, 0.5, 0.7)]
            ys = [a[1] + f * (b[1] - a[1]) for a, b, _ in pts for f in (0.3, 0.5, 0.7)]
            tips = [t for *_, t in pts for _ in range(3)]
            traces.append(go.Scatter(x=xs, y=ys, mode="markers", hovertext=tips, hoverinfo="text", showlegend=False,
                                     meta=tips, customdata=list(range(len(tips))), legendgroup=side,
                                     name=f"{SIDE_NAMES[side]} (hover)", marker=dict(size=10, opacity=0)))
    nodes = list(g.nodes(data=True))
    if nodes:
        traces.append(go.Scatter(
            x=[view.xy(n)[0] for n, _ in nodes], y=[view.xy(n)[1] for n, _ in nodes], mode="markers", showlegend=False,
            hoverinfo="text", name="nodes", marker=dict(size=7, color="#222222"),
            hovertext=[html_text(f"token {n[0]} A '{display_token(str(d.get('token_a')))}' / B "
                                 f"'{display_token(str(d.get('token_b')))}' · {layer_label(n[1])} · newcomers A "
                                 f"{d.get('n_newcomers_a', 0)}, B {d.get('n_newcomers_b', 0)}") for n, d in nodes]))
    fig = go.Figure(traces)
    head, meta = _heading(g, title)
    fd = g.graph.get("first_difference")
    if fd is not None:
        fig.add_vline(x=fd - 0.5, line=dict(color="#555555", dash="dash", width=1))
    if not g.number_of_edges():
        fig.add_annotation(text="no edge differs" if fd is not None else "the prompts are equal: empty diff",
                           xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False)
    fig.update_layout(
        title=dict(text=f"{html_text(head)}<br><sup>{html_text(meta)}</sup>", x=0.01, xanchor="left"),
        template="plotly_white", hovermode="closest", margin=dict(l=60, r=30, t=80, b=110),
        hoverlabel=dict(align="left", bgcolor="white", font=dict(size=12, family="DejaVu Sans Mono, monospace")),
        legend=dict(itemclick=False, itemdoubleclick=False),
        xaxis=dict(tickmode="array", tickvals=view.columns, zeroline=False,
                   title=dict(text="token (A/B where they differ)"),
                   ticktext=[html_text(display_token(view.token(i), max_len=24)) for i in view.columns]),
        yaxis=dict(title=dict(text="layer"), tickmode="array", tickvals=list(range(len(view.rows))),
                   ticktext=[layer_label(L) for L in view.rows], range=[-0.7, len(view.rows) - 0.3], zeroline=False),
    )
    return fig


def render_diff_html(g: nx.DiGraph, path: str | Path, *, title: str | None = None,
                     plotly_js: str | Path = "directory") -> Path:
    """Write a diff graph as an interactive HTML page (atomically); returns the path."""
    view = _check(g)
    head, _ = _heading(g, title)
    return write_page(diff_figure(g, title=title), path, div_id=DIFF_DIV_ID, title="diff: " + head, plotly_js=plotly_js,
                      height=f"{max(560, 42 * len(view.rows) + 230)}px",
                      config={"scrollZoom": True, "displaylogo": False, "responsive": True},
                      hint="Orange: edges only in prompt A; blue: only in B; grey: in both "
                           "(hover for the rank change).")

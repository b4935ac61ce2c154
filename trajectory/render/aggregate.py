"""Pictures of an aggregated feature-flow graph (:mod:`trajectory.graph.aggregate`): PNG and HTML.

Layered layout: one row per layer (``emb`` at the bottom), the features of a layer
side by side, the most frequent (most prompts) in the middle. Only the ``top_n`` edges
with the most prompts are drawn (ties: occurrences, then best rank), with the nodes they
join; an edge's width is its number of prompts, its colour its best final rank (red =
rank 1 → blue = rank T, as in trajectory graphs); a node's size is its number of
prompts; token nodes (embeddings, streams without newcomers) are grey squares labelled
by their token. Hover (HTML) shows a node's prompts, occurrences, ranks, the
histograms of key tokens that brought it and tokens it arrived at, and its explanation;
a click pins the full text in a side panel.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import networkx as nx

from trajectory.render.page import write_page
from trajectory.render.style import (
    display_token,
    html_text,
    layer_label,
    rank_colour,
    rank_colour_stops,
    rank_ticks,
    wrap,
)

__all__ = ["aggregate_view", "render_aggregate_png", "render_aggregate_html", "aggregate_figure", "DEFAULT_TOP_N"]

#: edges drawn by default
DEFAULT_TOP_N = 120
AGGREGATE_DIV_ID = "aggregate-graph"
_TOKEN_COLOUR = "#9a9a9a"


def aggregate_view(g: nx.DiGraph, top_n: int = DEFAULT_TOP_N
                   ) -> tuple[nx.DiGraph, dict[Any, tuple[float, float]], list[int]]:
    """The drawn part of an aggregate graph: ``(subgraph, positions, rows)``.

    The subgraph holds the ``top_n`` edges with the most prompts and their end nodes
    (without edges: the ``top_n`` nodes with the most prompts). ``positions[node] =
    (x, y)``: ``y`` the row of its layer in ``rows`` (layers ascending, ``-1`` =
    embeddings), ``x`` its place in the layer, centred on 0, most prompts in the middle.
    """
    if g.graph.get("kind") != "aggregate":
        raise ValueError("aggregate_view draws graphs made by trajectory.graph.aggregate (kind='aggregate')")
    edges = sorted(g.edges(data=True), key=lambda e: (-e[2]["prompts"], -e[2]["occurrences"],
                                                     e[2].get("best_rank") or 1 << 30, str(e[0]), str(e[1])))
    edges = edges[:max(int(top_n), 0)]
    if edges:
        sub = g.edge_subgraph([(u, v) for u, v, _ in edges]).copy()
    else:
        keep = sorted(g.nodes(data=True), key=lambda nd: (-nd[1]["prompts"], str(nd[0])))[:max(int(top_n), 0)]
        sub = g.subgraph([n for n, _ in keep]).copy()
    # every layer from the embeddings to the highest drawn, so rows are evenly spaced by layer
    rows = list(range(-1, max((int(d["layer"]) for _, d in sub.nodes(data=True)), default=-1) + 1))
    row_of = {L: i for i, L in enumerate(rows)}
    pos: dict[Any, tuple[float, float]] = {}
    for L in rows:
        members = sorted((n for n, d in sub.nodes(data=True) if d["layer"] == L),
                         key=lambda n: (-sub.nodes[n]["prompts"], str(n)))
        # most prompts in the middle, then alternately right and left
        slots = [((i + 1) // 2) * (1 if i % 2 else -1) for i in range(len(members))]
        for n, x in zip(members, slots):
            pos[n] = (float(x), float(row_of[L]))
    return sub, pos, rows


def node_label(n, d: Mapping[str, Any]) -> str:
    """``f17`` for a feature, the visible token for a token node."""
    return f"f{d['feature']}" if d.get("kind") == "feature" else display_token(str(d.get("token") or n[1]), max_len=14)


def _histogram_text(hist: Mapping[str, int], top: int) -> str:
    items = list(hist.items())
    shown = ", ".join(f"'{display_token(k, max_len=24)}' ×{v}" for k, v in items[:top])
    return shown + (f", … ({len(items) - top} more)" if len(items) > top else "")


def node_text(g: nx.DiGraph, n, d: Mapping[str, Any], *, full: bool = False) -> str:
    """Hover text of a node (plotly HTML subset, every outside text escaped)."""
    total = int(g.graph.get("n_prompts") or 0)
    top = 1000 if full else 6
    if d.get("kind") != "feature":
        what = "embedding" if d.get("kind") == "embedding" else f"{layer_label(d['layer'])} stream (no newcomer)"
        return (f"<b>{html_text(what)} of '{html_text(display_token(str(d.get('token')), max_len=40))}'</b><br>"
                f"source in {d['prompts']} of {total} prompts · {d['occurrences']} occurrences")
    lines = [f"<b>{layer_label(d['layer'])} feature {d['feature']}</b> · newcomer in {d['prompts']} of {total} "
             f"prompts · {d['occurrences']} occurrences",
             f"final rank: mean {float(d['mean_rank'] or 0):.3g}, best {d['best_rank']}"
             + (f" · mean act {float(d['mean_activation']):.3g}" if d.get("mean_activation") is not None else "")]
    if d.get("key_tokens"):
        lines.append("brought by key tokens: " + html_text(_histogram_text(d["key_tokens"], top)))
    if d.get("via_mlp"):
        lines.append(f"through the MLP: {d['via_mlp']}")
    if d.get("query_tokens"):
        lines.append("arrives at: " + html_text(_histogram_text(d["query_tokens"], top)))
    if d.get("explanation"):
        text = wrap(d["explanation"], 80)
        lines += ["&nbsp;&nbsp;" + html_text(t) for t in (text if full else text[:2])]
    return "<br>".join(lines)


def edge_text(g: nx.DiGraph, u, v, d: Mapping[str, Any], *, full: bool = False) -> str:
    """Hover text of an edge."""
    du, dv = g.nodes[u], g.nodes[v]
    name = lambda n, dd: html_text(f"{layer_label(dd['layer'])} {node_label(n, dd)}")  # noqa: E731
    lines = [f"<b>{name(u, du)} → {name(v, dv)}</b> (layer {d['layer']} attention)",
             f"in {d['prompts']} of {int(g.graph.get('n_prompts') or 0)} prompts · {d['occurrences']} occurrences · "
             f"target rank mean {float(d.get('mean_rank') or 0):.3g}, best {d.get('best_rank')}",
             "key tokens: " + html_text(_histogram_text(d.get("key_tokens") or {}, 1000 if full else 6))]
    for n, dd in ((u, du), (v, dv)):
        if dd.get("explanation"):
            text = wrap(dd["explanation"], 80)
            lines.append(f"{name(n, dd)}: " + html_text(text[0] if not full else " ".join(text)))
    return "<br>".join(lines)


def _widths(sub: nx.DiGraph, lo: float, hi: float) -> dict:
    top = max((d["prompts"] for *_, d in sub.edges(data=True)), default=1)
    return {(u, v): lo + (hi - lo) * d["prompts"] / max(top, 1) for u, v, d in sub.edges(data=True)}


def _title(g: nx.DiGraph, sub: nx.DiGraph, title: str | None) -> tuple[str, str]:
    head = title or f"aggregated feature flows of {g.graph.get('n_prompts')} prompts"
    meta = [str(g.graph.get("model_name") or ""), f"T={g.graph.get('T')}", f"through {g.graph.get('through')}",
            f"{g.number_of_nodes()} nodes, {g.number_of_edges()} edges",
            f"drawn: the {sub.number_of_edges()} edges in the most prompts"]
    return head, " · ".join(m for m in meta if m)


def _png_figure(g: nx.DiGraph, top_n: int, title: str | None, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.figure import Figure

    sub, pos, rows = aggregate_view(g, top_n)
    width_cols = max([abs(x) for x, _ in pos.values()] + [1.0])
    fig = Figure(figsize=(min(60.0, max(8.0, 3 + 1.1 * width_cols)), min(40.0, max(5.0, 2.5 + 0.7 * len(rows)))),
                 dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    T = int(g.graph.get("T") or 2)
    widths = _widths(sub, 0.6, 6.0)
    edges = sorted(sub.edges(data=True), key=lambda e: e[2]["prompts"])
    if edges:
        ax.add_collection(LineCollection(
            [[pos[u], pos[v]] for u, v, _ in edges],
            colors=[rank_colour(d.get("best_rank") or T, T) for *_, d in edges],
            linewidths=[widths[(u, v)] for u, v, _ in edges], alpha=0.75, zorder=2))
        cmap = LinearSegmentedColormap.from_list("rank", rank_colour_stops())
        import matplotlib

        cbar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=Normalize(1, max(T, 2)), cmap=cmap), ax=ax, pad=0.01,
                            fraction=0.04)
        cbar.set_ticks(rank_ticks(max(T, 2)))
        cbar.set_label("best final rank")
        cbar.ax.invert_yaxis()
    else:
        ax.text(0.5, 0.5, "no recurring flows", transform=ax.transAxes, ha="center", va="center", fontsize=13)
    top = max((d["prompts"] for _, d in sub.nodes(data=True)), default=1)
    for n, d in sub.nodes(data=True):
        x, y = pos[n]
        feature = d.get("kind") == "feature"
        ax.scatter([x], [y], s=30 + 250 * d["prompts"] / top, c="#222222" if feature else _TOKEN_COLOUR,
                   marker="o" if feature else "s", zorder=3, edgecolors="white", linewidths=0.6)
        ax.annotate(node_label(n, d), (x, y), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=7,
                    zorder=4)
    ax.set_yticks(range(len(rows)), [layer_label(L) for L in rows])
    xs = [x for x, _ in pos.values()] or [0.0]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xticks([])
    ax.set_ylabel("layer")
    for spine in ("top", "right", "bottom"):
        ax.spines[spine].set_visible(False)
    head, meta = _title(g, sub, title)
    ax.set_title(f"{head}\n{meta}\nedge width = prompts, node size = prompts", fontsize=10, loc="left")
    return fig


def render_aggregate_png(g: nx.DiGraph, path: str | Path, *, top_n: int = DEFAULT_TOP_N, title: str | None = None,
                         dpi: int = 150) -> Path:
    """Draw an aggregate graph to a PNG (atomically); returns the path. ``top_n``: edges drawn."""
    from trajectory.render.png import save_png

    return save_png(lambda: _png_figure(g, top_n, title, dpi), path, dpi=dpi)


def aggregate_figure(g: nx.DiGraph, *, top_n: int = DEFAULT_TOP_N, title: str | None = None):
    """The plotly ``Figure`` that :func:`render_aggregate_html` writes."""
    import plotly.graph_objects as go

    sub, pos, rows = aggregate_view(g, top_n)
    T = int(g.graph.get("T") or 2)
    widths = _widths(sub, 1.0, 8.0)
    traces = []
    mx, my, tips, panels = [], [], [], []
    for u, v, d in sorted(sub.edges(data=True), key=lambda e: e[2]["prompts"]):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        traces.append(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(color=rank_colour(d.get("best_rank") or T, T), width=widths[(u, v)]),
                                 opacity=0.75))
        for f in (0.3, 0.5, 0.7):  # hover points along the edge
            mx.append(x0 + f * (x1 - x0))
            my.append(y0 + f * (y1 - y0))
            tips.append(edge_text(sub, u, v, d))
            panels.append(edge_text(sub, u, v, d, full=True))
    if mx:
        traces.append(go.Scatter(x=mx, y=my, mode="markers", hovertext=tips, hoverinfo="text", showlegend=False,
                                 meta=panels, customdata=list(range(len(panels))), name="edges",
                                 marker=dict(size=10, opacity=0)))
    nodes = sorted(sub.nodes(data=True), key=lambda nd: (pos[nd[0]][1], pos[nd[0]][0]))
    top = max((d["prompts"] for _, d in nodes), default=1)
    traces.append(go.Scatter(
        x=[pos[n][0] for n, _ in nodes], y=[pos[n][1] for n, _ in nodes], mode="markers+text", showlegend=False,
        text=[html_text(node_label(n, d)) for n, d in nodes], textposition="top center", textfont=dict(size=9),
        hovertext=[node_text(sub, n, d) for n, d in nodes], hoverinfo="text", name="nodes",
        meta=[node_text(sub, n, d, full=True) for n, d in nodes], customdata=list(range(len(nodes))),
        marker=dict(size=[8 + 18 * d["prompts"] / top for _, d in nodes],
                    color=["#222222" if d.get("kind") == "feature" else _TOKEN_COLOUR for _, d in nodes],
                    symbol=["circle" if d.get("kind") == "feature" else "square" for _, d in nodes],
                    line=dict(color="white", width=1)),
    ))
    fig = go.Figure(traces)
    head, meta = _title(g, sub, title)
    fig.update_layout(
        title=dict(text=f"{html_text(head)}<br><sup>{html_text(meta)}</sup>", x=0.01, xanchor="left"),
        template="plotly_white", hovermode="closest", dragmode="zoom", margin=dict(l=60, r=30, t=80, b=40),
        hoverlabel=dict(align="left", bgcolor="white", font=dict(size=12, family="DejaVu Sans Mono, monospace")),
        xaxis=dict(visible=False),
        yaxis=dict(title=dict(text="layer"), tickmode="array", tickvals=list(range(len(rows))),
                   ticktext=[layer_label(L) for L in rows], range=[-0.7, len(rows) - 0.3], zeroline=False),
    )
    if not sub.number_of_edges():
        fig.add_annotation(text="no recurring flows", xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False)
    return fig


def render_aggregate_html(g: nx.DiGraph, path: str | Path, *, top_n: int = DEFAULT_TOP_N, title: str | None = None,
                          plotly_js: str | Path = "directory") -> Path:
    """Write an aggregate graph as an interactive HTML page (atomically); returns the path.
    ``plotly_js`` as in :func:`trajectory.render.render_html` (``"inline"``: one self-contained file)."""
    sub, _, rows = aggregate_view(g, top_n)
    head, _ = _title(g, sub, title)
    return write_page(
        aggregate_figure(g, top_n=top_n, title=title), path, div_id=AGGREGATE_DIV_ID, title=head,
        plotly_js=plotly_js, height=f"{max(560, 60 * len(rows) + 200)}px",
        config={"scrollZoom": True, "displaylogo": False, "responsive": True},
        hint="Hover a feature for its prompts, ranks, the key tokens that bring it and its explanation, or an edge "
             "for how often the flow recurs; click to pin the full text.",
    )

"""Self-contained interactive HTML of a trajectory graph (plotly; plotly.js inlined).

The page works offline (no CDN, no fonts or scripts fetched). Zoom with the mouse wheel
or a drag, pan with the pan tool; hover a node to see its token, layer and the newcomer
features that arrived there (activation, final rank, the key token that brought each
one, explanation); hover the middle of an edge for the features it carries.

Every string that comes from tokens, corpora or the network goes through
:func:`trajectory.render.style.html_text` (``html.escape``) before plotly sees it.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

from trajectory.io import atomic_write
from trajectory.render.style import (
    GraphView,
    display_token,
    html_text,
    layer_label,
    prompt_text,
    rank_colour,
    rank_colour_stops,
    rank_ticks,
    wrap,
)

#: ``id`` of the plotly graph ``<div>`` in the written page.
GRAPH_DIV_ID = "trajectory-graph"
#: At most this many features are listed in one hover label.
MAX_HOVER_FEATURES = 15


def _tok(view: GraphView, i: int) -> str:
    """``'tok'`` (escaped, visible) for hover text."""
    return html_text(f"'{display_token(view.token(int(i)), max_len=40)}'")


def _feature_lines(view: GraphView, feats: Iterable[Mapping[str, Any]], *, with_source: bool) -> list[str]:
    feats = sorted(feats, key=lambda f: (int(f.get("rank", 0) or 0), int(f.get("feature", 0))))
    lines = []
    for f in feats[:MAX_HOVER_FEATURES]:
        head = f"#{int(f.get('rank', 0))} feature {int(f.get('feature', -1))} · act {float(f.get('activation', 0.0)):.3g}"
        if with_source and f.get("source_token") is not None:
            head += f" · from key {int(f['source_token'])} {_tok(view, f['source_token'])}"
        if f.get("first_step") is not None:
            head += f" (step {int(f['first_step'])})"
        lines.append(f"<b>{head}</b>")
        expl = f.get("explanation")
        if expl:  # a missing explanation just leaves the line out
            text = wrap(expl, 80)
            text = text[:3] if len(text) <= 3 else text[:2] + [text[2] + " …"]
            lines.extend("&nbsp;&nbsp;&nbsp;" + html_text(t) for t in text)
    if len(feats) > MAX_HOVER_FEATURES:
        lines.append(f"… and {len(feats) - MAX_HOVER_FEATURES} more")
    return lines


def node_hover(view: GraphView, node, d: Mapping[str, Any]) -> str:
    """Hover text of one node (plotly HTML subset; all outside text escaped)."""
    t, layer = int(d.get("token_index", node[0])), int(d.get("layer", node[1]))
    lines = [f"<b>{_tok(view, t)}</b> · token {t} · {layer_label(layer)}"]
    new = list(d.get("newcomers") or [])
    mlp = list(d.get("mlp_newcomers") or [])
    if new:
        lines.append(f"{len(new)} newcomer feature{'s' if len(new) != 1 else ''} through attention:")
        lines += _feature_lines(view, new, with_source=True)
    if mlp:
        lines.append(f"{len(mlp)} newcomer feature{'s' if len(mlp) != 1 else ''} through the MLP:")
        lines += _feature_lines(view, mlp, with_source=False)
    if not new and not mlp:
        out = sorted(view.g.successors(node))
        if out:
            lines.append("no newcomers arrive here; its features reach " + ", ".join(
                f"{_tok(view, v[0])} {layer_label(v[1])}" for v in out[:8]) + (" …" if len(out) > 8 else ""))
        else:
            lines.append("no newcomers")
    return "<br>".join(lines)


def edge_hover(view: GraphView, u, v, d: Mapping[str, Any]) -> str:
    """Hover text of one edge ``(t, L-1) → (q, L)``."""
    t, q = int(d.get("source_token", u[0])), int(d.get("target_token", v[0]))
    layer = int(d.get("layer", v[1]))
    lines = [
        f"<b>{layer_label(layer)} attention</b>: key {t} {_tok(view, t)} → query {q} {_tok(view, q)}",
        f"prefix length {int(d.get('prefix_length', q + 1))} · {int(d.get('num_trajectories', 0))} trajector"
        f"{'y' if int(d.get('num_trajectories', 0)) == 1 else 'ies'} · best final rank {int(d.get('best_rank', 0))}",
    ]
    lines += _feature_lines(view, d.get("features") or [], with_source=False)
    return "<br>".join(lines)


def build_figure(g, *, title: str | None = None):
    """The plotly ``Figure`` of a trajectory graph (what :func:`render_html` writes)."""
    import plotly.graph_objects as go

    view = GraphView(g)
    traces = _edge_traces(view)
    if g.number_of_nodes():
        traces.append(_node_trace(g, view))
    fig = go.Figure(traces)
    fig.update_layout(**_layout(view, title))
    if not view.edges():
        T = f" with final rank ≤ {int(view.T)}" if view.T is not None else ""
        fig.add_annotation(text=f"no newcomer trajectories{T} (empty trajectory graph)", xref="paper", yref="paper",
                           x=0.5, y=0.5, showarrow=False, font=dict(size=16, color="#444444"),
                           bgcolor="#f4f4f4", bordercolor="#bbbbbb", borderpad=8)
    return fig


def _edge_traces(view: GraphView) -> list:
    """Edge lines, one trace per (best rank, count) so each gets its colour and width, and
    invisible points at edge midpoints that carry the edge hover (and the colour bar)."""
    import plotly.graph_objects as go

    top, cmax = view.rank_max(), view.count_max()
    traces: list = []
    groups: dict[tuple[int, int], list] = defaultdict(list)
    for u, v, d in view.edges():
        groups[(int(d.get("best_rank", 1) or 1), int(d.get("num_trajectories", 1) or 1))].append((u, v))
    for (rank, count), pairs in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        xs, ys = [], []
        for u, v in pairs:
            (x0, y0), (x1, y1) = view.xy(u), view.xy(v)
            xs += [x0, x1, None]
            ys += [y0, y1, None]
        traces.append(go.Scatter(
            x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
            line=dict(color=rank_colour(rank, top), width=1.0 + 5.0 * count / cmax), opacity=0.8,
            name=f"rank {rank}, {count} trajectories",
        ))
    edges = view.edges()
    if edges:
        mids = [tuple((a + b) / 2 for a, b in zip(view.xy(u), view.xy(v))) for u, v, _ in edges]
        traces.append(go.Scatter(
            x=[m[0] for m in mids], y=[m[1] for m in mids], mode="markers", name="edges",
            hovertext=[edge_hover(view, u, v, d) for u, v, d in edges], hoverinfo="text", showlegend=False,
            # colour = -rank so that rank 1 (red) sits at the top of the colour bar
            marker=dict(
                size=14, opacity=0, color=[-int(d.get("best_rank", 1) or 1) for _, _, d in edges],
                cmin=-top, cmax=-1, colorscale=[[1.0 - f, c] for f, c in reversed(rank_colour_stops())],
                showscale=True,
                colorbar=dict(title=dict(text="best final<br>rank", side="top"), thickness=14, len=0.8,
                              tickmode="array", tickvals=[-t for t in rank_ticks(top)],
                              ticktext=[str(t) for t in rank_ticks(top)]),
            ),
        ))
    return traces


def _node_trace(g, view: GraphView):
    """Nodes sized by their newcomer count (grey where none arrived), with hover text."""
    import plotly.graph_objects as go

    nodes = sorted(g.nodes(data=True), key=lambda nd: (nd[0][1], nd[0][0]))
    sizes, colours = [], []
    for _, d in nodes:
        n_new = int(d.get("n_newcomers", len(d.get("newcomers") or [])) or 0)
        sizes.append(7 + 2.2 * min(n_new, 12))
        colours.append("#222222" if n_new else "#9a9a9a")
    return go.Scatter(
        x=[view.xy(n)[0] for n, _ in nodes], y=[view.xy(n)[1] for n, _ in nodes], mode="markers", name="nodes",
        hovertext=[node_hover(view, n, d) for n, d in nodes], hoverinfo="text", showlegend=False,
        marker=dict(size=sizes, color=colours, line=dict(color="white", width=1)),
    )


def _layout(view: GraphView, title: str | None) -> dict:
    """Title, axes (tokens on x, layers on y) and hover style."""
    head = title if title is not None else (prompt_text(view.tokens, max_len=160) or "trajectory graph")
    return dict(
        title=dict(text=f"{html_text(head)}<br><sup>{html_text(view.subtitle())}</sup>", x=0.01, xanchor="left"),
        template="plotly_white",
        hovermode="closest",
        hoverlabel=dict(align="left", bgcolor="white", font=dict(size=12, family="DejaVu Sans Mono, monospace")),
        dragmode="zoom",
        margin=dict(l=60, r=30, t=80, b=110),
        xaxis=dict(
            title=dict(text="token (position in the prompt)"),
            tickmode="array", tickvals=view.columns,
            ticktext=[html_text(display_token(view.token(i), max_len=20)) for i in view.columns],
            tickangle=-55 if len(view.columns) > 12 else 0,
            range=[(view.columns[0] if view.columns else 0) - 0.7, (view.columns[-1] if view.columns else 0) + 0.7],
            zeroline=False,
        ),
        yaxis=dict(
            title=dict(text="layer"), tickmode="array", tickvals=list(range(len(view.rows))),
            ticktext=[layer_label(L) for L in view.rows], range=[-0.7, len(view.rows) - 0.3], zeroline=False,
        ),
    )


def render_html(g, path: str | Path, *, title: str | None = None) -> Path:
    """Write a trajectory graph as one self-contained interactive HTML page; returns the path.

    Parameters
    ----------
    g: a trajectory graph (schema in ``trajectory.graph``); an empty graph gives a page
        that says so.
    path: output file (written atomically). About 5 MB: plotly.js is inlined so the page
        opens without network.
    title: first title line (treated as text and escaped); default: the prompt.
    """
    view = GraphView(g)
    fig = build_figure(g, title=title)
    height = max(520, 42 * len(view.rows) + 230)
    page = fig.to_html(
        include_plotlyjs=True,
        full_html=True,
        div_id=GRAPH_DIV_ID,
        default_width="100%",
        default_height=f"{height}px",
        config={"scrollZoom": True, "displaylogo": False, "responsive": True,
                "toImageButtonOptions": {"format": "png", "filename": "trajectory_graph", "scale": 2}},
    )
    page_title = html_text(title if title is not None else "trajectory graph: " + (prompt_text(view.tokens, max_len=80)))
    page = page.replace("<head>", f"<head>\n    <title>{page_title}</title>", 1)
    path = Path(path)
    with atomic_write(path) as fh:
        fh.write(page)
    return path

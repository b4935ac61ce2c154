"""Interactive HTML of a trajectory graph (plotly).

Zoom with the mouse wheel or a drag, pan with the pan tool. Hover a node for its token,
layer and the newcomer features that arrived there (the strongest
:data:`MAX_HOVER_FEATURES`, with activation, final rank, the key token that brought each
one and the start of its explanation); hover anywhere along an edge for the features it
carries. A click on a node or an edge pins its full list, explanations whole, in a side
panel; with ``dashboard=`` (a feature dashboard folder, :mod:`trajectory.render.feature_links`)
each feature id there links to its card. Where two edges cross at a hover point of both,
its tooltip names both (their features on click).

The page loads plotly.js per ``plotly_js`` (:mod:`trajectory.render.page`): by default
from one shared ``plotly.min.js`` next to it, so it opens offline.

Every string that comes from tokens, corpora or the network goes through
:func:`trajectory.render.style.html_text` (``html.escape``) before plotly sees it.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

from trajectory.render.feature_links import DashboardLinks, PageLinks, graph_feature_layers
from trajectory.render.page import write_page
from trajectory.render.style import (
    GraphView,
    display_token,
    html_text,
    layer_label,
    prompt_text,
    rank_colour,
    rank_colour_stops,
    rank_ticks,
    trajectories_text,
    wrap,
)

#: ``id`` of the plotly graph ``<div>`` in the written page.
GRAPH_DIV_ID = "trajectory-graph"
#: At most this many features are listed in one tooltip; a click shows them all.
MAX_HOVER_FEATURES = 5
#: Hover points of an edge lie about this many pixels apart (at the page's height and a
#: window :data:`ASSUMED_PLOT_WIDTH` px wide), well under plotly's hover distance (20 px),
#: and never fewer than 9 per edge (at 0.1, 0.2, ..., 0.9 of its length); always an odd
#: number, so that one sits at the midpoint.
HOVER_POINT_SPACING = 12
#: Width (px) of the plot area the hover points are spaced for; wider windows stretch the
#: gaps (24 px at twice this), still within reach of the hover.
ASSUMED_PLOT_WIDTH = 1000
_SEPARATOR = "<br>────────────<br>"


def _tok(view: GraphView, i: int) -> str:
    """``'tok'`` (escaped, visible) for hover text."""
    return html_text(f"'{display_token(view.token(int(i)), max_len=40)}'")


def _feature_lines(view: GraphView, feats: Iterable[Mapping[str, Any]], *, with_source: bool, full: bool,
                   layer: int = -1, links: PageLinks | None = None) -> list[str]:
    """One line per feature (strongest first) with its explanation: the first
    :data:`MAX_HOVER_FEATURES` and one explanation line each for a tooltip, all of it when
    ``full`` (the click panel; there each feature id links to its dashboard card at
    ``layer`` when ``links`` has one)."""
    feats = sorted(feats, key=lambda f: (int(f.get("rank", 0) or 0), int(f.get("feature", 0))))
    shown = feats if full else feats[:MAX_HOVER_FEATURES]
    lines = []
    for f in shown:
        fid = int(f.get("feature", -1))
        name = links.feature_html(layer, fid) if (links is not None and full) else f"feature {fid}"
        head = f"#{int(f.get('rank', 0))} {name} · act {float(f.get('activation', 0.0)):.3g}"
        if with_source and f.get("source_token") is not None:
            head += f" · from key {int(f['source_token'])} {_tok(view, f['source_token'])}"
        if f.get("first_step") is not None:
            head += f" (step {int(f['first_step'])})"
        lines.append(f"<b>{head}</b>")
        expl = f.get("explanation")
        if expl:  # a missing explanation just leaves the line out
            text = wrap(expl, 80)
            text = text if full else [text[0] + (" …" if len(text) > 1 else "")]
            lines.extend("&nbsp;&nbsp;&nbsp;" + html_text(t) for t in text)
    if len(feats) > len(shown):
        lines.append(f"… and {len(feats) - len(shown)} more (click for the full list)")
    return lines


def _arrivals(n: int, how: str) -> str:
    return f"{n} newcomer feature{'s' if n != 1 else ''} through {how}:"


def _link_note(links: PageLinks | None, layer: int, feats: Iterable[Mapping[str, Any]]) -> list[str]:
    """The panel's line saying why some features have no dashboard link (none: ``[]``)."""
    note = links.note(layer, [int(f.get("feature", -1)) for f in feats]) if links is not None else None
    return [f"<i>{html_text(note)}</i>"] if note else []


def node_hover(view: GraphView, node, d: Mapping[str, Any], *, full: bool = False,
               links: PageLinks | None = None) -> str:
    """Hover text of one node (plotly HTML subset; all outside text escaped); ``full``:
    every feature and whole explanations (the click panel), feature ids linked to their
    dashboard cards with ``links``."""
    t, layer = int(d.get("token_index", node[0])), int(d.get("layer", node[1]))
    lines = [f"<b>{_tok(view, t)}</b> · token {t} · {layer_label(layer)}"]
    new = list(d.get("newcomers") or [])
    mlp = list(d.get("mlp_newcomers") or [])
    opts = dict(full=full, layer=layer, links=links)
    if new:
        lines += [_arrivals(len(new), "attention")] + _feature_lines(view, new, with_source=True, **opts)
    if mlp:
        lines += [_arrivals(len(mlp), "the MLP")] + _feature_lines(view, mlp, with_source=False, **opts)
    if full:
        lines += _link_note(links, layer, new + mlp)
    if not new and not mlp:
        out = sorted(view.g.successors(node))
        if out:
            lines.append("no newcomers arrive here; its features reach " + ", ".join(
                f"{_tok(view, v[0])} {layer_label(v[1])}" for v in out[:8]) + (" …" if len(out) > 8 else ""))
        else:
            lines.append("no newcomers")
    return "<br>".join(lines)


def edge_hover(view: GraphView, u, v, d: Mapping[str, Any], *, full: bool = False, heading: bool = False,
               links: PageLinks | None = None) -> str:
    """Hover text of one edge ``(t, L-1) → (q, L)``; ``full`` and ``links`` as in
    :func:`node_hover`; ``heading``: only its two heading lines (where several edges share
    a tooltip)."""
    t, q = int(d.get("source_token", u[0])), int(d.get("target_token", v[0]))
    layer = int(d.get("layer", v[1]))
    count = int(d.get("num_trajectories", 0))
    lines = [
        f"<b>{layer_label(layer)} attention</b>: key {t} {_tok(view, t)} → query {q} {_tok(view, q)}",
        f"prefix length {int(d.get('prefix_length', q + 1))} · {trajectories_text(count)} (newcomer feature"
        f"{'' if count == 1 else 's'} carried) · best final rank {int(d.get('best_rank', 0))}",
    ]
    if d.get("knockout_kl") is not None:  # annotated by trajectory.interventions.edge_effects
        lines.append(f"knock-out of this key: KL {float(d['knockout_kl']):.3g} at the last token, "
                     f"{float(d.get('knockout_kl_query') or 0):.3g} at the query; top-1 logit "
                     f"{float(d.get('knockout_logit_delta') or 0):+.3g}; newcomers lost "
                     f"{float(d.get('newcomers_lost') or 0):.0%}")
    if not heading:
        feats = list(d.get("features") or [])
        lines += _feature_lines(view, feats, with_source=False, full=full, layer=layer, links=links)
        if full:
            lines += _link_note(links, layer, feats)
    return "<br>".join(lines)


def build_figure(g, *, title: str | None = None, links: PageLinks | None = None):
    """The plotly ``Figure`` of a trajectory graph (what :func:`render_html` writes);
    ``links``: the click panel links feature ids to their dashboard cards."""
    import plotly.graph_objects as go

    view = GraphView(g)
    traces = _edge_traces(view, links)
    if g.number_of_nodes():
        traces.append(_node_trace(g, view, links))
    traces += _legend_traces(view)
    fig = go.Figure(traces)
    fig.update_layout(**_layout(view, title))
    if not view.edges():
        T = f" with final rank ≤ {int(view.T)}" if view.T is not None else ""
        fig.add_annotation(text=f"no newcomer trajectories{T} (empty trajectory graph)", xref="paper", yref="paper",
                           x=0.5, y=0.5, showarrow=False, font=dict(size=16, color="#444444"),
                           bgcolor="#f4f4f4", bordercolor="#bbbbbb", borderpad=8)
    return fig


def edge_width(count: float, cmax: float) -> float:
    """Line width (px) of an edge whose width quantity is ``count`` (trajectories, or its
    knock-out KL); ``cmax`` is the graph's largest."""
    return 1.0 + 5.0 * count / max(cmax, 1)


def node_size(n_newcomers: int) -> float:
    """Marker diameter (px) of a node where ``n_newcomers`` features arrive (12 or more: the largest)."""
    return 7 + 2.2 * min(n_newcomers, 12)


def hover_points(view: GraphView) -> list[tuple[float, float, tuple[int, ...]]]:
    """Invisible hover points along every edge: ``(x, y, edges)``, ``edges`` being the
    indices into ``view.edges()`` of the edges that have a point there, strongest first.

    Each edge gets points at equal fractions of its length, at least 9 (0.1, 0.2, ...,
    0.9) and about :data:`HOVER_POINT_SPACING` pixels apart on screen, so it answers
    hover anywhere along it. Where two edges have a point at the same place (crossing
    edges with coinciding midpoints), that one point names both; every edge keeps its
    other points, so each stays reachable. Points merely close to another edge are left
    alone: the cursor picks the nearer one, which is the edge it is on.
    """
    at: dict[tuple[float, float], list[int]] = defaultdict(list)
    # pixels per token column and per layer row (axis ranges as in _layout, margins as there)
    px_x = ASSUMED_PLOT_WIDTH / (len(view.columns) + 0.4)
    px_y = (page_height(view) - 190) / (len(view.rows) + 0.4)
    for i, (u, v, _) in enumerate(view.edges()):
        (x0, y0), (x1, y1) = view.xy(u), view.xy(v)
        m = max(9, math.ceil(math.hypot((x1 - x0) * px_x, (y1 - y0) * px_y) / HOVER_POINT_SPACING))
        m += 1 - m % 2  # odd, so that one point sits at the midpoint
        for j in range(1, m + 1):
            f = j / (m + 1)
            # rounded to far below a pixel, so that float noise does not split one place in two
            at[(round(x0 + f * (x1 - x0), 9), round(y0 + f * (y1 - y0), 9))].append(i)
    return [(x, y, tuple(sorted(set(here), reverse=True))) for (x, y), here in at.items()]  # edges(): weakest first


def _edge_traces(view: GraphView, links: PageLinks | None = None) -> list:
    """Edge lines, one trace per (best rank, count) so each gets its colour and width;
    then one invisible hover trace per edge (or set of crossing edges) with its points
    along the edge, its tooltip and its click text; and the rank colour bar."""
    import plotly.graph_objects as go

    top, cmax = view.rank_max(), view.width_max()
    edges = view.edges()
    traces: list = []
    groups: dict[tuple[int, float], list] = defaultdict(list)
    for u, v, d in edges:
        groups[(int(d.get("best_rank", 1) or 1), float(f"{view.width_value(d):.3g}"))].append((u, v))
    for (rank, count), pairs in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        xs, ys = [], []
        for u, v in pairs:
            (x0, y0), (x1, y1) = view.xy(u), view.xy(v)
            xs += [x0, x1, None]
            ys += [y0, y1, None]
        traces.append(go.Scatter(
            x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
            line=dict(color=rank_colour(rank, top), width=edge_width(count, cmax)), opacity=0.8,
            name=f"rank {rank}, " + (trajectories_text(int(count)) if view.width_by == "trajectories"
                                     else f"KL {count:.3g}"),
        ))
    if not edges:
        return traces
    at: dict[tuple[int, ...], list[tuple[float, float]]] = defaultdict(list)
    for x, y, here in hover_points(view):
        at[here].append((x, y))
    for here, pts in at.items():
        if len(here) == 1:
            tip = edge_hover(view, *edges[here[0]])
        else:  # crossing edges: a short tooltip naming each, their features on click
            tip = (f"<b>{len(here)} edges cross here</b> (click for their features)<br>"
                   + _SEPARATOR.join(edge_hover(view, *edges[i], heading=True) for i in here))
        panel = _SEPARATOR.join(edge_hover(view, *edges[i], full=True, links=links) for i in here)
        traces.append(go.Scatter(
            # 1/10000 of a column or row is far below a pixel; fewer digits, a smaller page
            x=[round(p[0], 4) for p in pts], y=[round(p[1], 4) for p in pts], mode="markers", showlegend=False,
            name="edge " + " + ".join(f"{edges[i][0]}→{edges[i][1]}" for i in here),
            # one text per trace, not per point: the page stays small with many points
            hovertext=tip, hoverinfo="text", meta=panel,
            marker=dict(size=12, opacity=0, color="#000000"),
        ))
    # the colour bar on its own invisible trace; colour = -rank so that rank 1 (red) sits at the top
    traces.append(go.Scatter(
        x=[None], y=[None], mode="markers", name="rank scale", hoverinfo="skip", showlegend=False,
        marker=dict(size=0, opacity=0, color=[-1], cmin=-top, cmax=-1, showscale=True,
                    colorscale=[[1.0 - f, c] for f, c in reversed(rank_colour_stops())],
                    colorbar=dict(title=dict(text="best final<br>rank", side="top"), thickness=14, len=0.45,
                                  y=1.0, yanchor="top", tickmode="array", tickvals=[-t for t in rank_ticks(top)],
                                  ticktext=[str(t) for t in rank_ticks(top)])),
    ))
    return traces


def _node_trace(g, view: GraphView, links: PageLinks | None = None):
    """Nodes sized by their newcomer count (grey where none arrived), with hover and click text."""
    import plotly.graph_objects as go

    nodes = sorted(g.nodes(data=True), key=lambda nd: (nd[0][1], nd[0][0]))
    sizes, colours = [], []
    for _, d in nodes:
        n_new = int(d.get("n_newcomers", len(d.get("newcomers") or [])) or 0)
        sizes.append(node_size(n_new))
        colours.append("#222222" if n_new else "#9a9a9a")
    return go.Scatter(
        x=[view.xy(n)[0] for n, _ in nodes], y=[view.xy(n)[1] for n, _ in nodes], mode="markers", name="nodes",
        hovertext=[node_hover(view, n, d) for n, d in nodes], hoverinfo="text", showlegend=False,
        meta=[node_hover(view, n, d, full=True, links=links) for n, d in nodes], customdata=list(range(len(nodes))),
        marker=dict(size=sizes, color=colours, line=dict(color="white", width=1)),
    )


def _legend_traces(view: GraphView) -> list:
    """Data-less traces that only draw the legend: what edge width, node size and grey nodes mean."""
    import plotly.graph_objects as go

    traces = []
    cmax = view.width_max()
    width_title = view.width_title("<br>")
    for c, label in view.width_legend() if view.edges() else []:
        traces.append(go.Scatter(
            x=[None], y=[None], mode="lines", name=label, legendgroup="width",
            legendgrouptitle=dict(text=width_title), line=dict(color="#555555", width=edge_width(c, cmax)),
        ))
    node_title = "node size = newcomer features<br>arriving there"
    for n in (1, 6, 12) if view.g.number_of_nodes() else ():
        traces.append(go.Scatter(
            x=[None], y=[None], mode="markers", legendgroup="nodes", legendgrouptitle=dict(text=node_title),
            name=f"{n}{' or more' if n == 12 else ''} newcomer{'s' if n != 1 else ''}",
            marker=dict(size=node_size(n), color="#222222"),
        ))
    if view.g.number_of_nodes():
        traces.append(go.Scatter(
            x=[None], y=[None], mode="markers", legendgroup="nodes", name="grey: no newcomer arrives<br>"
            "(a source that passes features on)", marker=dict(size=node_size(0), color="#9a9a9a"),
        ))
    for t in traces:
        t.update(showlegend=True, hoverinfo="skip")
    return traces


def page_height(view: GraphView) -> int:
    """Height (px) of the graph on the page: room for every layer row."""
    return max(560, 42 * len(view.rows) + 230)


def _layout(view: GraphView, title: str | None) -> dict:
    """Title, axes (tokens on x, layers on y), legend and hover style."""
    head = title if title is not None else (prompt_text(view.tokens, max_len=160) or "trajectory graph")
    return dict(
        title=dict(text=f"{html_text(head)}<br><sup>{html_text(view.subtitle())}</sup>", x=0.01, xanchor="left"),
        template="plotly_white",
        hovermode="closest",
        hoverlabel=dict(align="left", bgcolor="white", font=dict(size=12, family="DejaVu Sans Mono, monospace")),
        dragmode="zoom",
        margin=dict(l=60, r=30, t=80, b=110),
        # the legend only explains; clicking it must not hide anything
        legend=dict(x=1.02, y=0.5, yanchor="top", itemclick=False, itemdoubleclick=False, font=dict(size=11),
                    itemsizing="trace", tracegroupgap=12),
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


def dashboard_links(dashboard: "str | Path | DashboardLinks | None", g, page: str | Path) -> PageLinks | None:
    """The dashboard links of graph ``g``'s page at ``page``: ``dashboard`` is a dashboard
    folder (opened here; warns about missing pages and cards of the graph's features), an
    already opened :class:`DashboardLinks`, or ``None`` (no links)."""
    if dashboard is None:
        return None
    if not isinstance(dashboard, DashboardLinks):
        wanted = graph_feature_layers(g)
        dashboard = DashboardLinks.open(dashboard, wanted)
        dashboard.warn_unlinked(wanted)
    return dashboard.for_page(page)


def render_html(g, path: str | Path, *, title: str | None = None, plotly_js: str | Path = "directory",
                dashboard: "str | Path | DashboardLinks | None" = None) -> Path:
    """Write a trajectory graph as an interactive HTML page (atomically); returns the path.

    Parameters
    ----------
    g: a trajectory graph (schema in ``trajectory.graph``); an empty graph gives a page
        that says so.
    path: output file.
    title: first title line (treated as text and escaped); default: the prompt.
    plotly_js: where the page loads plotly.js from: ``"directory"`` (default; one shared
        ``plotly.min.js`` beside the page, written if missing or different; opens
        offline), ``"inline"`` (a self-contained page of about 5 MB), ``"cdn"`` (needs the
        network), or a path to a shared ``.js`` copy (see :mod:`trajectory.render.page`).
    dashboard: a feature dashboard folder (``trajectory dashboard --out``) or its
        :class:`~trajectory.render.feature_links.DashboardLinks`: the click panel then
        links each feature id to its card, ``<dashboard>/layer_06.html#f123``, relative
        to the page where possible (move the two folders together). Layers without a
        page and features without a card are logged and named in the panel, unlinked.
    """
    view = GraphView(g)
    links = dashboard_links(dashboard, g, path)
    page_title = title if title is not None else "trajectory graph: " + prompt_text(view.tokens, max_len=80)
    hint = ("Hover a node or any point of an edge for its strongest features; click it to pin the full list "
            "in a side panel")
    hint += (f", where each feature id links to its card in the feature dashboard ({links.links.folder})."
             if links is not None else ".")
    return write_page(
        build_figure(g, title=title, links=links), path, div_id=GRAPH_DIV_ID, title=page_title, plotly_js=plotly_js,
        height=f"{page_height(view)}px",
        config={"scrollZoom": True, "displaylogo": False, "responsive": True,
                "toImageButtonOptions": {"format": "png", "filename": "trajectory_graph", "scale": 2}},
        hint=hint,
    )

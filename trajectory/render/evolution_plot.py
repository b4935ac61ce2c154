"""The per-layer evolution plot: rank of each feature across the steps of one prefix.

For one layer L and prefix length n (query q = n - 1) the x axis holds the steps of
:meth:`trajectory.evolution.Evolution.steps` (``initial``, ``key 0 '<bos>'``, ...,
``key q 'tok'``, ``mlp``) and the y axis the 1-based rank of a feature in that step's
top-k (rank 1 at the top, log scale so the top ranks get the room). One line per
feature; a gap where the feature is out of the top-k. Newcomers (see
``trajectory.newcomers``) are coloured, all other features light grey; only features
that reach rank ≤ ``top`` at some step are drawn, so the picture stays readable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from trajectory.render.feature_links import DashboardLinks, PageLinks
from trajectory.render.page import write_page
from trajectory.render.style import display_token, html_text, wrap

#: ``id`` of the plotly graph ``<div>`` in the written page.
EVOLUTION_DIV_ID = "evolution-plot"

_PALETTE = (
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
    "#800000", "#469990", "#000075", "#bfef45", "#808000", "#e6beff", "#ffd8b1", "#aaffc3",
)


@dataclass
class RankLines:
    """The data of one evolution plot.

    Attributes:
        layer, n: the layer and prefix length shown; ``query = n - 1``.
        tokens: the prompt's tokens (BOS first).
        features: features drawn, newcomers first (by final rank), then the others.
        ranks: ``float [len(features), n + 2]`` 1-based rank per step, ``nan`` where absent.
        activations: ``float [len(features), n + 2]`` activation per step, ``nan`` where absent.
        newcomers: the highlighted features (a subset of ``features``).
        top: features reaching rank ≤ ``top`` at some step are drawn.
        T, through: the newcomer rule used (final rank ≤ T at the last attention or ``mlp`` step).
        final_step: index of the step the newcomer rule checks (``n`` or ``n + 1``).
        kept: the evolution's top-k (how many active features each step keeps).
        max_active: the most features active at any step shown (may exceed ``kept``).
        sae: what the evolution recorded about this layer's SAE (``metadata["saes"]``;
            ``architecture``, ``d_sae``, ``k`` for a TopK SAE when recorded), or ``{}``.
    """

    layer: int
    n: int
    tokens: list[str]
    features: list[int]
    ranks: np.ndarray
    activations: np.ndarray
    newcomers: list[int]
    top: int
    T: int
    through: str
    final_step: int
    model_name: str = ""
    explanations: dict[int, str] = field(default_factory=dict)
    kept: int | None = None
    max_active: int | None = None
    sae: dict[str, Any] = field(default_factory=dict)

    def step_labels(self, token_label=None) -> list[str]:
        """``initial``, ``key j 'tok'`` ..., ``mlp`` with tokens shown visibly (not escaped for HTML)."""
        show = token_label or (lambda t: display_token(t, max_len=16))
        return ["initial"] + [f"key {j} '{show(self.tokens[j])}'" for j in range(self.n)] + ["mlp"]

    def first_step(self, i: int) -> int | None:
        """First step (> 0) at which feature row ``i`` is present."""
        hit = np.flatnonzero(~np.isnan(self.ranks[i, 1:]))
        return int(hit[0]) + 1 if hit.size else None


def rank_lines(
    evo,
    layer: int,
    n: int,
    *,
    T: int = 22,
    through: str = "attention",
    top: int | None = None,
    newcomers: Iterable[Any] | None = None,
    explanations: Mapping[int, str] | None = None,
) -> RankLines:
    """Collect the ranks to plot for (layer, n) of an :class:`~trajectory.evolution.Evolution`.

    ``newcomers``: features (ints, or objects with ``.feature``) to highlight; default
    ``trajectory.newcomers.find_newcomers(evo, n, layer, T=T, through=through)``.
    ``top``: draw features that reach rank ≤ ``top`` at some step (default ``T``);
    newcomers are always drawn.
    """
    if through not in ("attention", "mlp"):
        raise ValueError(f"through must be 'attention' or 'mlp', not {through!r}")
    n_steps = n + 2
    per_step: list[dict[int, tuple[int, float]]] = []  # step -> feature -> (rank, activation)
    for s in range(n_steps):
        idx, val = evo.topk(n, layer, s)  # raises a clear ValueError for a bad layer or n
        per_step.append({int(i): (r, float(v)) for r, (i, v) in enumerate(zip(idx.tolist(), val.tolist()), start=1)})
    max_active = max(evo.n_active(n, layer, s) for s in range(n_steps))
    if newcomers is None:
        from trajectory.newcomers import find_newcomers

        newcomers = find_newcomers(evo, n, layer, T=T, through=through)
    new = [int(getattr(f, "feature", f)) for f in newcomers]
    top = int(top if top is not None else T)
    shown = set(new)
    for step in per_step:
        shown.update(f for f, (r, _) in step.items() if r <= top)
    final_step = n if through == "attention" else n + 1

    def final_rank(f: int) -> float:
        return per_step[final_step].get(f, (math.inf, 0.0))[0]

    others = sorted(shown - set(new), key=lambda f: (min(step.get(f, (math.inf,))[0] for step in per_step), f))
    order = sorted(dict.fromkeys(new), key=lambda f: (final_rank(f), f)) + others
    ranks = np.full((len(order), n_steps), np.nan)
    acts = np.full((len(order), n_steps), np.nan)
    for i, f in enumerate(order):
        for s, step in enumerate(per_step):
            if f in step:
                ranks[i, s], acts[i, s] = step[f]
    return RankLines(
        layer=int(layer), n=int(n), tokens=list(evo.tokens), features=order, ranks=ranks, activations=acts,
        newcomers=[f for f in order if f in set(new)], top=top, T=int(T), through=through, final_step=final_step,
        model_name=str(evo.model_name or ""), explanations={int(k): str(v) for k, v in (explanations or {}).items() if v},
        kept=int(evo.k), max_active=int(max_active), sae=dict((evo.metadata.get("saes") or {}).get(str(layer)) or {}),
    )


def rank_axis_label(lines: RankLines) -> str:
    """The rank axis title, saying what is true of this plot: ranks are among the active
    features; how many the evolution keeps (its top-k), how many a TopK SAE can activate
    (its own k, when the evolution recorded it), and how many were active here at most.

    >>> rank_axis_label(RankLines(2, 3, [], [], np.zeros((0, 5)), np.zeros((0, 5)), [], 22, 22, "attention", 3,
    ...                 kept=400, max_active=64, sae={"architecture": "TopKSAE", "k": 64}))
    'rank among active features (1 = strongest)\\ntop 400 kept · TopK SAE: at most 64 active · here at most 64 active'
    """
    parts = [f"top {lines.kept} kept"] if lines.kept else []
    sae_k = lines.sae.get("k")
    if sae_k and "topk" in str(lines.sae.get("architecture", "topk")).lower():
        parts.append(f"TopK SAE: at most {int(sae_k)} active")
    if lines.max_active is not None:
        parts.append(f"here at most {lines.max_active} active")
    return "rank among active features (1 = strongest)" + ("\n" + " · ".join(parts) if parts else "")


def _y_ticks(max_rank: float) -> list[int]:
    return [t for t in (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000, 5000, 10000) if t <= max(max_rank, 1)]


def _titles(lines: RankLines, title: str | None) -> tuple[str, str]:
    q = lines.n - 1
    head = title if title is not None else (
        f"Layer {lines.layer}, prefix length {lines.n}: query {q} '{display_token(lines.tokens[q], max_len=30)}'"
        + (f" · {lines.model_name}" if lines.model_name else ""))
    sub = (f"rank of each feature across the steps; {len(lines.newcomers)} newcomer"
           f"{'s' if len(lines.newcomers) != 1 else ''} (final rank ≤ {lines.T} at the "
           f"{'last attention' if lines.through == 'attention' else 'mlp'} step) in colour, "
           f"other features reaching rank ≤ {lines.top} in grey")
    return head, sub


def evolution_plot_png(evo, layer: int, n: int, path: str | Path, *, title: str | None = None, dpi: int = 150,
                       **lines_options: Any) -> Path:
    """Draw the evolution plot of (layer, n) to a PNG (written atomically); returns the path.

    ``lines_options`` go to :func:`rank_lines`: ``T`` (default 22), ``through``, ``top``,
    ``newcomers`` and ``explanations`` (feature -> text, labelling the newcomers in the legend).
    """
    from trajectory.render.png import save_png

    lines = rank_lines(evo, layer, n, **lines_options)
    return save_png(lambda: evolution_png_figure(lines, title=title, dpi=dpi), path, dpi=dpi)


def evolution_png_figure(lines: RankLines, *, title: str | None = None, dpi: int = 150):
    """The matplotlib ``Figure`` that :func:`evolution_plot_png` saves (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from trajectory.render.png import png_token_label

    S = lines.n + 2
    labels = lines.step_labels(png_token_label)
    width = min(70.0, max(11.0 if lines.newcomers else 9.0, (7.0 if lines.newcomers else 4.5) + 0.36 * S))
    fig = Figure(figsize=(width, 6.5), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _draw_rank_lines(ax, lines, labels)
    _rank_axes(ax, lines, labels)
    head, sub = _titles(lines, title)
    sub = "\n".join(wrap(sub, int(width * 9)))
    ax.set_title(f"{display_token(head, max_len=200, mark_spaces=False)}\n{sub}", fontsize=10, loc="left")
    if lines.newcomers:
        fig.legend(loc="outside right upper", fontsize=8, title="newcomers", title_fontsize=9, frameon=False)
    if not lines.features:
        ax.text(0.5, 0.5, "no active features at this layer and prefix", transform=ax.transAxes,
                ha="center", va="center", fontsize=13, color="#444444",
                bbox=dict(boxstyle="round,pad=0.6", fc="#f4f4f4", ec="#bbbbbb"))
    return fig


def _draw_rank_lines(ax, lines: RankLines, labels: list[str]) -> None:
    """Grey lines for the other features, coloured labelled lines for the newcomers."""
    x = np.arange(lines.n + 2)
    new = set(lines.newcomers)
    for i, f in enumerate(lines.features):
        if f not in new:
            ax.plot(x, lines.ranks[i], color="#b5b5b5", lw=0.8, alpha=0.6, marker="o", ms=1.5, zorder=1)
    for c, f in enumerate(lines.newcomers):
        i = lines.features.index(f)
        first = lines.first_step(i)
        label = f"{f} → rank {int(lines.ranks[i, lines.final_step])}, enters at {labels[first] if first else '?'}"
        if f in lines.explanations:
            label += "\n    " + "\n    ".join(wrap(lines.explanations[f], 48)[:2])
        ax.plot(x, lines.ranks[i], color=_PALETTE[c % len(_PALETTE)], lw=2.2, marker="o", ms=4, zorder=3, label=label)


def _rank_axes(ax, lines: RankLines, labels: list[str]) -> None:
    """Log rank axis (rank 1 at the top) with the T line, steps on x, the final step marked."""
    from matplotlib.ticker import FixedLocator, NullLocator

    S = lines.n + 2
    max_rank = np.nanmax(lines.ranks) if np.isfinite(lines.ranks).any() else lines.T
    ax.set_yscale("log")
    ax.set_ylim(max(max_rank, lines.T) * 1.25, 0.8)  # rank 1 at the top
    ax.yaxis.set_major_locator(FixedLocator(_y_ticks(max(max_rank, lines.T))))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_yticklabels([str(t) for t in _y_ticks(max(max_rank, lines.T))])
    ax.axhline(lines.T, color="#666666", ls="--", lw=1, zorder=2)
    ax.text(S - 0.5, lines.T, f" T = {lines.T}", va="center", ha="left", fontsize=8, color="#444444")
    ax.axvspan(lines.final_step - 0.4, lines.final_step + 0.4, color="#fff2b3", zorder=0)
    ax.text(lines.final_step, 1.0, "final\nstep", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
            fontsize=7, color="#8a6d00")
    ax.set_xticks(np.arange(S), labels, rotation=60 if S > 8 else 30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_xlim(-0.5, S - 0.5)
    ax.set_xlabel("step (SAE input after adding each key token's attention contribution, then the MLP)")
    ax.set_ylabel(rank_axis_label(lines))
    ax.grid(axis="y", color="#eeeeee", lw=0.6)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)


def _template_text(text: str) -> str:
    """Escaped text made safe inside a plotly ``hovertemplate``: ``%`` as an entity, so
    that a token or explanation holding ``%{...}`` is shown, not substituted."""
    return text.replace("%", "&#37;")


def _feature_panel(lines: RankLines, i: int, links: PageLinks) -> str:
    """Click-panel text of feature row ``i``: id linked to its dashboard card, final rank,
    first step and the whole explanation (renderer markup; outside text escaped)."""
    f = lines.features[i]
    final = lines.ranks[i, lines.final_step]
    head = f"<b>{links.feature_html(lines.layer, f)}</b>" + (" (newcomer)" if f in lines.newcomers else "")
    head += f" · final rank {int(final)}" if not math.isnan(final) else " · absent at the final step"
    step = lines.first_step(i) if f in lines.newcomers else None
    if step is not None:  # the key token that brought the newcomer (step j + 1 adds key j), or the MLP
        head += (f" · from key {step - 1} '{html_text(display_token(lines.tokens[step - 1], max_len=40))}'"
                 if step <= lines.n else " · from the MLP")
    out = [head] + ["&nbsp;&nbsp;&nbsp;" + html_text(t) for t in wrap(lines.explanations.get(f) or "", 80) if t]
    note = links.note(lines.layer, [f])
    return "<br>".join(out + ([f"<i>{html_text(note)}</i>"] if note else []))


def _evolution_traces(lines: RankLines, links: PageLinks | None = None) -> list:
    """One trace per feature: grey for the others (one legend entry for all), coloured and
    named for the newcomers. The hover text is one template per trace (feature, newcomer,
    explanation) filled per point with the step, rank and activation, so a page with
    explanations stays small. With ``links``, a click on a line pins its feature (linked
    to its dashboard card) in the side panel."""
    import plotly.graph_objects as go

    S = lines.n + 2
    long_labels = [html_text(s) for s in lines.step_labels(lambda t: display_token(t, max_len=60))]
    new = set(lines.newcomers)
    # grey lines first, so the newcomers are drawn on top
    order = [i for i, f in enumerate(lines.features) if f not in new]
    order += [lines.features.index(f) for f in lines.newcomers]
    traces = []
    for i in order:
        f = lines.features[i]
        ys = [None if math.isnan(r) else float(r) for r in lines.ranks[i]]
        template = (f"<b>feature {f}</b>{' (newcomer)' if f in new else ''}<br>"
                    "%{text}<br>rank %{y:d} · act %{customdata:.3g}")
        if f in lines.explanations:
            template += "".join("<br>" + _template_text(html_text(t)) for t in wrap(lines.explanations[f], 70)[:3])
        common = dict(x=list(range(S)), y=ys, mode="lines+markers", connectgaps=False,
                      hovertemplate=template + "<extra></extra>",
                      text=[long_labels[s] if ys[s] is not None else "" for s in range(S)],
                      # 4 significant digits: the hover shows 3, and the page stays small
                      customdata=[None if y is None else float(f"{lines.activations[i, s]:.4g}")
                                  for s, y in enumerate(ys)])
        if links is not None:
            common["meta"] = _feature_panel(lines, i, links)
        if f in new:
            c = lines.newcomers.index(f)
            name = f"{f} → rank {int(lines.ranks[i, lines.final_step])}"
            if f in lines.explanations:
                name += ": " + html_text(wrap(lines.explanations[f], 40)[0])
            traces.append(go.Scatter(name=name, line=dict(color=_PALETTE[c % len(_PALETTE)], width=3),
                                     marker=dict(size=7), **common))
        else:
            traces.append(go.Scatter(name="other features", legendgroup="other", showlegend=not traces,
                                     line=dict(color="rgba(150,150,150,0.45)", width=1),
                                     marker=dict(size=3, color="rgba(150,150,150,0.6)"), **common))
    return traces


def build_evolution_figure(lines: RankLines, *, title: str | None = None, links: PageLinks | None = None):
    """The plotly ``Figure`` of an evolution plot (what :func:`evolution_plot_html` writes);
    ``links``: a click on a line pins its feature, linked to its dashboard card."""
    import plotly.graph_objects as go

    S = lines.n + 2
    labels = [html_text(s) for s in lines.step_labels()]
    x = list(range(S))
    traces = _evolution_traces(lines, links)
    max_rank = float(np.nanmax(lines.ranks)) if np.isfinite(lines.ranks).any() else float(lines.T)
    ticks = _y_ticks(max(max_rank, lines.T))
    head, sub = _titles(lines, title)
    fig = go.Figure(traces)
    fig.update_layout(
        title=dict(text=f"{html_text(head)}<br><sup>{html_text(sub)}</sup>", x=0.01, xanchor="left"),
        template="plotly_white", hovermode="closest", hoverlabel=dict(align="left"),
        legend=dict(title=dict(text="newcomers")),
        xaxis=dict(title=dict(text="step"), tickmode="array", tickvals=x, ticktext=labels,
                   tickangle=-55 if S > 8 else 0, range=[-0.5, S - 0.5]),
        yaxis=dict(title=dict(text="<br>".join(map(html_text, rank_axis_label(lines).split("\n")))), type="log",
                   range=[math.log10(max(max_rank, lines.T) * 1.25), math.log10(0.8)],
                   tickmode="array", tickvals=ticks, ticktext=[str(t) for t in ticks]),
        shapes=[dict(type="line", xref="paper", x0=0, x1=1, y0=lines.T, y1=lines.T,
                     line=dict(color="#666666", dash="dash", width=1)),
                dict(type="rect", xref="x", yref="paper", x0=lines.final_step - 0.4, x1=lines.final_step + 0.4,
                     y0=0, y1=1, fillcolor="#fff2b3", opacity=0.6, line=dict(width=0), layer="below")],
        annotations=[dict(text=f"T = {lines.T}", x=1, xref="paper", xanchor="right", y=math.log10(lines.T),
                          yanchor="bottom", showarrow=False, font=dict(size=10, color="#444444")),
                     dict(text="final step", x=lines.final_step, xref="x", y=1, yref="paper", yanchor="bottom",
                          showarrow=False, font=dict(size=10, color="#8a6d00"))],
    )
    if not lines.features:
        fig.add_annotation(text="no active features at this layer and prefix", xref="paper", yref="paper",
                           x=0.5, y=0.5, showarrow=False, font=dict(size=16))
    return fig


def evolution_plot_html(evo, layer: int, n: int, path: str | Path, *, title: str | None = None,
                        plotly_js: str | Path = "directory", dashboard: "str | Path | DashboardLinks | None" = None,
                        **lines_options: Any) -> Path:
    """Write the evolution plot of (layer, n) as an HTML page (atomically); returns the path.

    Hover a point for the feature, step, rank, activation and explanation. ``plotly_js``
    as for :func:`trajectory.render.render_html` (default ``"directory"``: one shared
    ``plotly.min.js`` beside the page; a path to a ``.js`` file lets pages of several
    folders share one copy). ``dashboard``: a feature dashboard folder (or its
    :class:`~trajectory.render.feature_links.DashboardLinks`): a click on a line pins its
    feature in a side panel with a link to its card (relative to the page where possible).
    Other options as :func:`evolution_plot_png`.
    """
    lines = rank_lines(evo, layer, n, **lines_options)
    head, _ = _titles(lines, title)
    links = None
    if dashboard is not None:
        if not isinstance(dashboard, DashboardLinks):
            dashboard = DashboardLinks.open(dashboard, [layer])
            dashboard.warn_unlinked({layer: lines.newcomers})
        links = dashboard.for_page(path)
    hint = "Click a line to pin its feature, linked to its dashboard card, in a side panel." if links else ""
    return write_page(build_evolution_figure(lines, title=title, links=links), path, div_id=EVOLUTION_DIV_ID,
                      title=head, plotly_js=plotly_js, height="720px", hint=hint,
                      config={"scrollZoom": True, "displaylogo": False, "responsive": True})

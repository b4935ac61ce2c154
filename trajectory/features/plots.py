"""PNG figures of feature analyses (matplotlib Figures on the Agg canvas; no pyplot state).

* ``feature_{N}_real.png`` / ``feature_{N}_synthetic.png`` (:func:`plot_feature`):
  statistics panel, activation histogram (real) or per-restart activations
  (synthetic), token examples coloured by activation, logit effects.
* ``summary_real.png`` (:func:`plot_summary`): per-feature bars (max, density,
  mean when active, decoder norm — or, when every decoder row has the same norm, the
  cosine to the nearest other decoder direction).
* ``statistics_real.png`` (:func:`plot_statistics`): distributions over features.
* ``real_vs_synthetic_comparison.png`` (:func:`plot_comparison`).

Each ``plot_*`` saves the Figure its ``*_figure`` builder returns, so tests can read the
drawing itself (titles, texts, bar heights). Token text is made safe before drawing
(:mod:`trajectory.features.glyphs`): control characters are escaped, characters the
monospace font lacks are drawn with an installed font that has them, and characters
no installed font has are written ``⟨U+XXXX⟩`` with a note on the figure; math text
is off, so no token can break a figure.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from trajectory.features.glyphs import (
    FONT, MISSING_GLYPH_NOTE, display_token, display_width, font_families, tick_label,
)
from trajectory.features.report import FeatureReport, FeatureStats, corpus_description

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from trajectory.features.comparison import Comparison

__all__ = ["figure_context", "feature_figure", "summary_figure", "statistics_figure", "comparison_figure", "plot_feature",
           "plot_summary", "plot_statistics", "plot_comparison", "render_real", "render_synthetic",
           "render_comparison", "display_token"]

DPI = 100
FEATURE_SIZE = (14, 10)  # inches -> 1400 x 1000 px
SUMMARY_SIZE = (14, 8)
#: titles of the panels tests and readers look for
HISTOGRAM_TITLE = "histogram of non-zero activations (log bins)"
DECODER_NORM_TITLE = "decoder norm"
NEIGHBOUR_TITLE = "cosine to the nearest other feature's decoder direction"


def _figure(size: tuple[float, float]) -> "Figure":
    """A Figure on the Agg canvas, outside pyplot (nothing to close, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: "Figure", path: Path) -> Path:
    from trajectory.io import atomic_path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Glyph missing" cannot happen, but never fail on a warning
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return Path(path)


def _uniform(values: list[float]) -> bool:
    """All (at least one) values equal to within 0.1%: a panel of them shows nothing."""
    return bool(values) and max(values) - min(values) <= 1e-3 * max(abs(max(values)), 1e-12)


def _stats_text(s: FeatureStats) -> str:
    if s.mode == "real":
        lines = [
            f"feature {s.feature} (real)",
            f"max activation   {s.max_activation:.4g}",
            f"mean (all)       {s.mean_activation:.4g}",
            f"mean when active {s.mean_active:.4g}",
            f"density          {s.density:.3%}",
            f"sparsity         {s.sparsity:.3%}",
            f"active tokens    {s.n_active:,} / {s.n_tokens:,}",
            f"decoder norm     {s.decoder_norm:.4g}",
        ]
        if s.decoder_neighbour is not None:
            lines.append(f"nearest decoder  {s.decoder_neighbour} (cos {s.decoder_neighbour_cosine:.3f})")
    else:
        lines = [
            f"feature {s.feature} (synthetic)",
            f"synthetic act.   {s.max_activation:.4g}",
            f"relaxed obj.     {s.relaxed_activation:.4g}" if s.relaxed_activation is not None else "relaxed obj.     -",
            f"best real act.   {s.best_real_activation:.4g}" if s.best_real_activation is not None else "best real act.   -",
        ]
        if s.best_real_activation:
            lines.append(f"synthetic / real {s.max_activation / s.best_real_activation:.3g}x")
        lines += [f"restarts         {len(s.examples)}", f"decoder norm     {s.decoder_norm:.4g}"]
        if s.time_s is not None:
            lines.append(f"time             {s.time_s:.1f} s")
    return "\n".join(lines)


def _draw_examples(ax, s: FeatureStats, max_rows: int = 10) -> list[str]:
    """Token windows, each token's background coloured by its activation; returns the
    token texts drawn."""
    import matplotlib
    from matplotlib.colors import Normalize

    ax.set_axis_off()
    ax.set_xlim(0, 1)
    examples = s.examples[:max_rows]
    title = "top-activating contexts (peak token boxed)" if s.mode == "real" else "projected sequences per restart (peak token boxed)"
    ax.set_title(title, loc="left", fontsize=11)
    if not examples:
        ax.text(0.5, 0.5, "the feature never fired on this corpus", ha="center", va="center", fontsize=12, parse_math=False)
        return []
    vmax = max([s.max_activation] + [max(e.activations, default=0.0) for e in examples]) or 1.0
    norm, cmap = Normalize(0.0, vmax), matplotlib.colormaps["Reds"]
    fig = ax.figure
    width_pt = ax.get_position().width * fig.get_figwidth() * 72
    fs = 9
    char_w = 0.6 * fs / width_pt  # monospace advance in axes fraction
    label_w = 11 * char_w
    n = len(examples)
    ax.set_ylim(n, 0)
    drawn = []
    for row, e in enumerate(examples):
        y = row + 0.5
        ax.text(0, y, f"{e.activation:8.3g} ", fontsize=fs, family=FONT, va="center", parse_math=False)
        x = label_w
        shown = [display_token(t, 16) for t in e.tokens]
        family = font_families(shown)
        # keep the peak in view: drop leading tokens until the row fits
        first = 0
        while first < e.peak and label_w + sum(display_width(t) + 1.3 for t in shown[first:]) * char_w > 1.0:
            first += 1
        for i in range(first, len(shown)):
            text = shown[i]
            w = (display_width(text) + 1.3) * char_w
            if x + w > 1.0:
                ax.text(x, y, "…", fontsize=fs, family=FONT, va="center", parse_math=False)
                break
            a = e.activations[i] if i < len(e.activations) else 0.0
            color = cmap(norm(max(a, 0.0)) * 0.85)
            ax.text(x, y, text, fontsize=fs, family=family, va="center", parse_math=False,
                    bbox=dict(boxstyle="square,pad=0.15", fc=color, ec="black" if i == e.peak else color, lw=1.2 if i == e.peak else 0))
            drawn.append(text)
            x += w
    return drawn


def _draw_logits(ax, pairs, title: str, color: str) -> list[str]:
    """Horizontal bars of ``(token, logit effect)`` pairs, first on top; returns the labels."""
    ax.set_title(title, fontsize=11)
    if not pairs:
        ax.text(0.5, 0.5, "no logit effects\n(SAE does not read the residual stream)", ha="center", va="center", parse_math=False)
        ax.set_axis_off()
        return []
    labels = [tick_label(t) for t, _ in pairs][::-1]
    vals = [v for _, v in pairs][::-1]
    ax.barh(range(len(vals)), vals, color=color)
    ax.set_yticks(range(len(vals)))
    ax.set_yticklabels(labels, fontsize=8, family=font_families(labels))
    ax.tick_params(axis="x", labelsize=8)
    ax.axvline(0, color="black", lw=0.5)
    return labels


def _draw_activity(ax, s: FeatureStats) -> None:
    """Real: histogram of the non-zero activations; synthetic: each restart's activation."""
    if s.mode == "real":
        if s.histogram_counts:
            edges = s.histogram_edges
            ax.bar(edges[:-1], s.histogram_counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge",
                   color="tab:red", alpha=0.8)
            ax.set_yscale("log" if max(s.histogram_counts) > 50 else "linear")
            if edges[0] > 0:  # the real scan's bins are log-spaced (trajectory.features.corpus_scan.HIST_EDGES)
                ax.set_xscale("log")
        else:
            ax.text(0.5, 0.5, "no non-zero activations", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(HISTOGRAM_TITLE, fontsize=11)
        ax.set_xlabel("activation")
        ax.set_ylabel("tokens")
        return
    vals = [e.activation for e in s.examples]
    ax.bar(range(len(vals)), vals, color="tab:purple")
    if s.best_real_activation is not None:
        ax.axhline(s.best_real_activation, color="tab:red", ls="--", label="best real")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(vals)))
    ax.set_xticklabels([f"restart {e.context}" for e in s.examples], fontsize=8)
    ax.set_title("activation of each restart's projected sequence", fontsize=11)
    ax.set_ylabel("activation")


def feature_figure(s: FeatureStats, *, context: str = "", final_norm: str = "weight") -> "Figure":
    """One feature's Figure (1400 x 1000 px): statistics, histogram or restarts,
    coloured token examples, promoted and suppressed tokens (``final_norm``: how the
    logit effects were computed, for the figure's note). A note at the bottom explains
    ``⟨U+XXXX⟩`` when a token holds a character no installed font has."""
    fig = _figure(FEATURE_SIZE)
    gs = fig.add_gridspec(3, 3, height_ratios=[1.0, 1.5, 1.1], hspace=0.45, wspace=0.45)
    fig.suptitle(f"Feature {s.feature} — {s.mode}" + (f" — {context}" if context else ""), fontsize=14,
                 fontweight="bold", parse_math=False)
    ax = fig.add_subplot(gs[0, 0])
    ax.set_axis_off()
    ax.set_title("statistics", loc="left", fontsize=11)
    ax.text(0, 1, _stats_text(s), va="top", ha="left", family=FONT, fontsize=9.5, parse_math=False, transform=ax.transAxes)
    _draw_activity(fig.add_subplot(gs[0, 1:]), s)
    shown = _draw_examples(fig.add_subplot(gs[1, :]), s)
    shown += _draw_logits(fig.add_subplot(gs[2, 0]), s.top_logits, "promoted tokens (logit effect)", "tab:green")
    shown += _draw_logits(fig.add_subplot(gs[2, 2]), s.bottom_logits, "suppressed tokens (logit effect)", "tab:blue")
    ax = fig.add_subplot(gs[2, 1])
    ax.set_axis_off()
    note = ("logit effect =\nfinal-norm weight ⊙ W_dec[f] @ W_U\n(unit scale)" if final_norm == "weight"
            else "logit effect =\nW_dec[f] @ W_U\n(final norm ignored)")
    ax.text(0.5, 0.5, note, ha="center", va="center",
            fontsize=9, parse_math=False, transform=ax.transAxes, color="dimgray")
    if any("⟨U+" in t for t in shown):
        fig.text(0.01, 0.01, MISSING_GLYPH_NOTE, fontsize=9, color="dimgray", family=FONT, parse_math=False)
    return fig


def plot_feature(s: FeatureStats, path: str | Path, *, context: str = "", final_norm: str = "weight") -> Path:
    """Save :func:`feature_figure` of ``s`` as a PNG at ``path``; returns the path."""
    return _save(feature_figure(s, context=context, final_norm=final_norm), Path(path))


def _feature_axis(ax, feats: list[int]) -> None:
    step = max(1, math.ceil(len(feats) / 40))
    ax.set_xticks(range(0, len(feats), step))
    ax.set_xticklabels([str(f) for f in feats[::step]], rotation=90 if len(feats) > 15 else 0, fontsize=8)
    ax.set_xlabel("feature")


def _decoder_panel(report: FeatureReport) -> tuple[str, list[float] | None]:
    """What the decoder panels show: ``(title, one value per feature)``. The decoder
    norms when they differ; when they are all the same (SAEs with unit-norm decoders),
    the cosine of each feature's decoder to its nearest other feature's (how distinct
    its direction is); ``(text, None)`` for reports from before that was recorded."""
    stats = [report[f] for f in report.feature_ids]
    norms = [s.decoder_norm for s in stats]
    if not _uniform(norms):
        return DECODER_NORM_TITLE, norms
    same = f"(every decoder row has norm {norms[0]:.3g})" if norms else ""
    cosines = [s.decoder_neighbour_cosine for s in stats]
    if cosines and all(c is not None for c in cosines):
        return f"{NEIGHBOUR_TITLE}\n{same}", cosines
    return f"{DECODER_NORM_TITLE} {same}:\nnothing to compare; rerun `trajectory real` for decoder cosines", None


def summary_figure(report: FeatureReport) -> "Figure":
    """Per-feature bars: max activation, density (log), mean when active, and decoder
    norm or nearest-decoder cosine (:func:`_decoder_panel`)."""
    feats = report.feature_ids
    fig = _figure(SUMMARY_SIZE)
    axes = fig.subplots(2, 2)
    fig.suptitle(f"{report.mode} analysis of {len(feats)} features — {report.hook_name} of {report.model_name}",
                 fontsize=13, parse_math=False)
    decoder_title, decoder_vals = _decoder_panel(report)
    panels = [
        ("max activation", [report[f].max_activation for f in feats], "tab:red", False),
        ("density (share of tokens active)", [report[f].density for f in feats], "tab:orange", True),
        ("mean activation when active", [report[f].mean_active for f in feats], "tab:purple", False),
        (decoder_title, decoder_vals, "tab:gray", False),
    ]
    for ax, (title, vals, color, log) in zip(axes.flat, panels):
        ax.set_title(title, fontsize=11, parse_math=False)
        if vals is None:
            ax.set_axis_off()
            continue
        ax.bar(range(len(feats)), vals, color=color)
        if log and any(v > 0 for v in vals):
            ax.set_yscale("log")
        _feature_axis(ax, feats)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def plot_summary(report: FeatureReport, path: str | Path) -> Path:
    """Save :func:`summary_figure` of ``report`` as a PNG at ``path``; returns the path."""
    return _save(summary_figure(report), Path(path))


def _padded_range(values) -> tuple[float, float] | None:
    """Histogram range that stays readable when all values are (nearly) equal."""
    if len(values) == 0:
        return None
    lo, hi = float(min(values)), float(max(values))
    pad = max(abs(hi), 1.0) * 0.05
    return (lo - pad, hi + pad) if hi - lo < 1e-6 * max(abs(hi), 1.0) else (lo, hi)


def statistics_figure(report: FeatureReport) -> "Figure":
    """Distributions over features: log10 density, max activation, density vs max, and
    decoder norm or nearest-decoder cosine (:func:`_decoder_panel`)."""
    import numpy as np

    feats = report.feature_ids
    dens = np.array([report[f].density for f in feats])
    maxa = np.array([report[f].max_activation for f in feats])
    fig = _figure(SUMMARY_SIZE)
    axes = fig.subplots(2, 2)
    fig.suptitle(f"feature statistics ({len(feats)} features, {report.n_tokens:,} tokens of "
                 f"{corpus_description(report.corpus)})", fontsize=13, parse_math=False)
    ax = axes[0, 0]
    live = dens[dens > 0]
    ax.hist(np.log10(live) if len(live) else [], bins=20, color="tab:orange")
    ax.set_title(f"log10 density ({int((dens == 0).sum())} features never active)", fontsize=11)
    ax.set_xlabel("log10(share of tokens active)")
    ax = axes[0, 1]
    ax.hist(maxa, bins=20, range=_padded_range(maxa), color="tab:red")
    ax.set_title("max activation", fontsize=11)
    ax = axes[1, 0]
    ax.scatter(np.where(dens > 0, dens, np.nan), maxa, s=18, color="tab:blue")
    if len(live):
        ax.set_xscale("log")
    ax.set_xlabel("density")
    ax.set_ylabel("max activation")
    ax.set_title("density vs max activation", fontsize=11)
    ax = axes[1, 1]
    title, vals = _decoder_panel(report)
    ax.set_title(title, fontsize=11, parse_math=False)
    if vals is None:
        ax.set_axis_off()
    else:
        ax.hist(vals, bins=20, range=_padded_range(vals), color="tab:gray")
    for a in (axes[0, 0], axes[0, 1], axes[1, 1]):
        a.set_ylabel("features")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def plot_statistics(report: FeatureReport, path: str | Path) -> Path:
    """Save :func:`statistics_figure` of ``report`` as a PNG at ``path``; returns the path."""
    return _save(statistics_figure(report), Path(path))


def comparison_figure(comparison: "Comparison") -> "Figure":
    """Best real vs synthetic activation per feature, their ratio, and the summary."""
    import numpy as np

    rows = comparison.rows
    feats = [r.feature for r in rows]
    x = np.arange(len(rows))
    fig = _figure(SUMMARY_SIZE)
    axes = fig.subplots(2, 1, gridspec_kw=dict(height_ratios=[1.4, 1]))
    sm = comparison.summary
    share = sm.get("share_exceeds")
    fig.suptitle(
        f"real vs synthetic — {comparison.hook_name}: synthetic ≥ best real for {sm.get('n_exceeds')}/{sm.get('n_fired_real', sm.get('n_features'))} features"
        + (f" ({share:.0%})" if share is not None else ""),
        fontsize=13, parse_math=False,
    )
    ax = axes[0]
    w = 0.4
    ax.bar(x - w / 2, [r.best_real for r in rows], w, label="best real", color="tab:red")
    ax.bar(x + w / 2, [r.synthetic for r in rows], w, label="synthetic (projected tokens)", color="tab:purple")
    ax.set_ylabel("activation")
    ax.legend(fontsize=9)
    _feature_axis(ax, feats)
    ax = axes[1]
    ratios = [r.ratio if r.ratio is not None else np.nan for r in rows]
    ax.bar(x, ratios, color=["tab:green" if r.exceeds else "tab:gray" for r in rows])
    ax.axhline(1.0, color="black", ls="--", lw=1)
    ax.set_ylabel("synthetic / best real")
    if any(np.isfinite(ratios)) and np.nanmax(ratios) / max(np.nanmin([v for v in ratios if v > 0] or [1]), 1e-9) > 20:
        ax.set_yscale("log")
    _feature_axis(ax, feats)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


def plot_comparison(comparison: "Comparison", path: str | Path) -> Path:
    """Save :func:`comparison_figure` of ``comparison`` as a PNG at ``path``; returns the path."""
    return _save(comparison_figure(comparison), Path(path))


def figure_context(report: FeatureReport) -> str:
    """What the per-feature figures' titles say about the run: the hook and the corpus
    in words (real), or the search's steps and restarts (synthetic)."""
    if report.mode == "real":
        return f"{report.hook_name}, {report.n_tokens:,} tokens of {corpus_description(report.corpus)}"
    return f"{report.hook_name}, {report.settings.get('n_steps')} steps x {report.settings.get('restarts')} restarts"


def render_real(report: FeatureReport, out_dir: str | Path, *, features: Iterable[int] | None = None) -> list[Path]:
    """``feature_{N}_real.png`` per feature + ``summary_real.png`` + ``statistics_real.png``."""
    out = Path(out_dir)
    ctx = figure_context(report)
    fn = report.settings.get("final_norm", "weight")
    paths = [plot_feature(report[f], out / f"feature_{f}_real.png", context=ctx, final_norm=fn)
             for f in (features or report.feature_ids)]
    paths.append(plot_summary(report, out / "summary_real.png"))
    paths.append(plot_statistics(report, out / "statistics_real.png"))
    return paths


def render_synthetic(report: FeatureReport, out_dir: str | Path, *, features: Iterable[int] | None = None) -> list[Path]:
    """``feature_{N}_synthetic.png`` per feature."""
    out = Path(out_dir)
    ctx = figure_context(report)
    fn = report.settings.get("final_norm", "weight")
    return [plot_feature(report[f], out / f"feature_{f}_synthetic.png", context=ctx, final_norm=fn)
            for f in (features or report.feature_ids)]


def render_comparison(comparison: "Comparison", out_dir: str | Path) -> list[Path]:
    """``real_vs_synthetic_comparison.png``."""
    return [plot_comparison(comparison, Path(out_dir) / "real_vs_synthetic_comparison.png")]

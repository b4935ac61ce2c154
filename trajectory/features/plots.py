"""PNG figures of feature analyses (matplotlib, Agg back-end).

* ``feature_{N}_real.png`` / ``feature_{N}_synthetic.png`` (:func:`plot_feature`):
  statistics panel, activation histogram (real) or per-restart activations
  (synthetic), token examples coloured by activation, logit effects.
* ``summary_real.png`` (:func:`plot_summary`): per-feature bars (max, density,
  mean when active, decoder norm).
* ``statistics_real.png`` (:func:`plot_statistics`): distributions over features.
* ``real_vs_synthetic_comparison.png`` (:func:`plot_comparison`).

Token text is made safe before drawing (:func:`display_token`): control characters
are escaped, characters the font (DejaVu Sans Mono) has no glyph for are written as
``\\uXXXX``, and math text is off, so no token can break a figure.
"""
from __future__ import annotations

import functools
import math
import unicodedata
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from trajectory.features.report import FeatureReport, FeatureStats

if TYPE_CHECKING:  # pragma: no cover
    from trajectory.features.comparison import Comparison

FONT = "DejaVu Sans Mono"
DPI = 100
FEATURE_SIZE = (14, 10)  # inches -> 1400 x 1000 px
SUMMARY_SIZE = (14, 8)
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False) if matplotlib.get_backend().lower() != "agg" else None
    import matplotlib.pyplot as plt

    return plt


@functools.lru_cache(maxsize=1)
def _font():
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return FT2Font(font_manager.findfont(font_manager.FontProperties(family=FONT)))


@functools.lru_cache(maxsize=65536)
def _has_glyph(ch: str) -> bool:
    try:
        return _font().get_char_index(ord(ch)) != 0
    except Exception:  # a font without a cmap: be safe
        return ord(ch) < 128


def display_token(token: str, max_len: int = 24) -> str:
    """A token as it can be drawn safely.

    Newlines/tabs become ``\\n``/``\\t``; other control and format characters
    ``\\xNN``/``\\uNNNN``; characters without a glyph in the font ``\\uNNNN``; ``$``
    is kept literal (callers turn math text off); a whitespace-only token is shown as
    ``·`` per space so it stays visible. Longer than ``max_len``: cut with ``…``.
    """
    if token and not token.strip(" "):
        return "·" * min(len(token), max_len)
    out = []
    for ch in token:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        elif not _has_glyph(ch):
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    s = "".join(out)
    return s if len(s) <= max_len else s[: max_len - 1] + "…"


def _label(token: str, max_len: int = 20) -> str:
    """:func:`display_token` for tick labels (``$`` escaped: tick labels parse math)."""
    return repr(display_token(token, max_len))[1:-1].replace("\\\\", "\\").replace("$", r"\$")


def _save(fig, path: Path) -> Path:
    from trajectory.io import atomic_path

    plt = _plt()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Glyph missing" cannot happen, but never fail on a warning
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    plt.close(fig)
    return Path(path)


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


def _draw_examples(ax, s: FeatureStats, max_rows: int = 10) -> None:
    """Token windows, each token's background coloured by its activation."""
    import matplotlib
    from matplotlib.colors import Normalize

    ax.set_axis_off()
    ax.set_xlim(0, 1)
    examples = s.examples[:max_rows]
    title = "top-activating contexts (peak token boxed)" if s.mode == "real" else "projected sequences per restart (peak token boxed)"
    ax.set_title(title, loc="left", fontsize=11)
    if not examples:
        ax.text(0.5, 0.5, "the feature never fired on this corpus", ha="center", va="center", fontsize=12, parse_math=False)
        return
    vmax = max([s.max_activation] + [max(e.activations, default=0.0) for e in examples]) or 1.0
    norm, cmap = Normalize(0.0, vmax), matplotlib.colormaps["Reds"]
    fig = ax.figure
    width_pt = ax.get_position().width * fig.get_figwidth() * 72
    fs = 9
    char_w = 0.6 * fs / width_pt  # monospace advance in axes fraction
    label_w = 11 * char_w
    n = len(examples)
    ax.set_ylim(n, 0)
    for row, e in enumerate(examples):
        y = row + 0.5
        ax.text(0, y, f"{e.activation:8.3g} ", fontsize=fs, family=FONT, va="center", parse_math=False)
        x = label_w
        shown = [display_token(t, 16) for t in e.tokens]
        # keep the peak in view: drop leading tokens until the row fits
        first = 0
        while first < e.peak and label_w + sum(len(t) + 1.3 for t in shown[first:]) * char_w > 1.0:
            first += 1
        for i in range(first, len(shown)):
            text = shown[i]
            w = (len(text) + 1.3) * char_w
            if x + w > 1.0:
                ax.text(x, y, "…", fontsize=fs, family=FONT, va="center", parse_math=False)
                break
            a = e.activations[i] if i < len(e.activations) else 0.0
            color = cmap(norm(max(a, 0.0)) * 0.85)
            ax.text(x, y, text, fontsize=fs, family=FONT, va="center", parse_math=False,
                    bbox=dict(boxstyle="square,pad=0.15", fc=color, ec="black" if i == e.peak else color, lw=1.2 if i == e.peak else 0))
            x += w


def _draw_logits(ax, pairs, title: str, color: str) -> None:
    ax.set_title(title, fontsize=11)
    if not pairs:
        ax.text(0.5, 0.5, "no logit effects\n(SAE does not read the residual stream)", ha="center", va="center", parse_math=False)
        ax.set_axis_off()
        return
    labels = [_label(t) for t, _ in pairs][::-1]
    vals = [v for _, v in pairs][::-1]
    ax.barh(range(len(vals)), vals, color=color)
    ax.set_yticks(range(len(vals)))
    ax.set_yticklabels(labels, fontsize=8, family=FONT)
    ax.tick_params(axis="x", labelsize=8)
    ax.axvline(0, color="black", lw=0.5)


def plot_feature(s: FeatureStats, path: str | Path, *, context: str = "", final_norm: str = "weight") -> Path:
    """One feature's figure (1400 x 1000 px): statistics, histogram or restarts,
    coloured token examples, promoted and suppressed tokens (``final_norm``: how the
    logit effects were computed, for the figure's note)."""
    plt = _plt()
    fig = plt.figure(figsize=FEATURE_SIZE)
    gs = fig.add_gridspec(3, 3, height_ratios=[1.0, 1.5, 1.1], hspace=0.45, wspace=0.45)
    fig.suptitle(f"Feature {s.feature} — {s.mode}" + (f" — {context}" if context else ""), fontsize=14, fontweight="bold")

    ax = fig.add_subplot(gs[0, 0])
    ax.set_axis_off()
    ax.set_title("statistics", loc="left", fontsize=11)
    ax.text(0, 1, _stats_text(s), va="top", ha="left", family=FONT, fontsize=9.5, parse_math=False, transform=ax.transAxes)

    ax = fig.add_subplot(gs[0, 1:])
    if s.mode == "real":
        if s.histogram_counts:
            edges = s.histogram_edges
            ax.bar(edges[:-1], s.histogram_counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge", color="tab:red", alpha=0.8)
            ax.set_yscale("log" if max(s.histogram_counts) > 50 else "linear")
        else:
            ax.text(0.5, 0.5, "no non-zero activations", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("histogram of non-zero activations", fontsize=11)
        ax.set_xlabel("activation")
        ax.set_ylabel("tokens")
    else:
        vals = [e.activation for e in s.examples]
        ax.bar(range(len(vals)), vals, color="tab:purple")
        if s.best_real_activation is not None:
            ax.axhline(s.best_real_activation, color="tab:red", ls="--", label="best real")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(vals)))
        ax.set_xticklabels([f"restart {e.context}" for e in s.examples], fontsize=8)
        ax.set_title("activation of each restart's projected sequence", fontsize=11)
        ax.set_ylabel("activation")

    _draw_examples(fig.add_subplot(gs[1, :]), s)
    _draw_logits(fig.add_subplot(gs[2, 0]), s.top_logits, "promoted tokens (logit effect)", "tab:green")
    _draw_logits(fig.add_subplot(gs[2, 2]), s.bottom_logits, "suppressed tokens (logit effect)", "tab:blue")
    ax = fig.add_subplot(gs[2, 1])
    ax.set_axis_off()
    note = ("logit effect =\nfinal-norm weight ⊙ W_dec[f] @ W_U\n(unit scale)" if final_norm == "weight"
            else "logit effect =\nW_dec[f] @ W_U\n(final norm ignored)")
    ax.text(0.5, 0.5, note, ha="center", va="center",
            fontsize=9, parse_math=False, transform=ax.transAxes, color="dimgray")
    return _save(fig, Path(path))


def _feature_axis(ax, feats: list[int]) -> None:
    step = max(1, math.ceil(len(feats) / 40))
    ax.set_xticks(range(0, len(feats), step))
    ax.set_xticklabels([str(f) for f in feats[::step]], rotation=90 if len(feats) > 15 else 0, fontsize=8)
    ax.set_xlabel("feature")


def plot_summary(report: FeatureReport, path: str | Path) -> Path:
    """Per-feature bars: max activation, density (log), mean when active, decoder norm."""
    plt = _plt()
    feats = report.feature_ids
    fig, axes = plt.subplots(2, 2, figsize=SUMMARY_SIZE)
    fig.suptitle(f"{report.mode} analysis of {len(feats)} features — {report.hook_name} of {report.model_name}", fontsize=13)
    panels = [
        ("max activation", [report[f].max_activation for f in feats], "tab:red", False),
        ("density (share of tokens active)", [report[f].density for f in feats], "tab:orange", True),
        ("mean activation when active", [report[f].mean_active for f in feats], "tab:purple", False),
        ("decoder norm", [report[f].decoder_norm for f in feats], "tab:gray", False),
    ]
    for ax, (title, vals, color, log) in zip(axes.flat, panels):
        ax.bar(range(len(feats)), vals, color=color)
        ax.set_title(title, fontsize=11)
        if log and any(v > 0 for v in vals):
            ax.set_yscale("log")
        _feature_axis(ax, feats)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, Path(path))


def _padded_range(values) -> tuple[float, float] | None:
    """Histogram range that stays readable when all values are (nearly) equal."""
    if len(values) == 0:
        return None
    lo, hi = float(min(values)), float(max(values))
    pad = max(abs(hi), 1.0) * 0.05
    return (lo - pad, hi + pad) if hi - lo < 1e-6 * max(abs(hi), 1.0) else (lo, hi)


def plot_statistics(report: FeatureReport, path: str | Path) -> Path:
    """Distributions over features: log10 density, max activation, density vs max, decoder norm."""
    import numpy as np

    plt = _plt()
    feats = report.feature_ids
    dens = np.array([report[f].density for f in feats])
    maxa = np.array([report[f].max_activation for f in feats])
    norms = np.array([report[f].decoder_norm for f in feats])
    fig, axes = plt.subplots(2, 2, figsize=SUMMARY_SIZE)
    fig.suptitle(f"feature statistics ({len(feats)} features, {report.n_tokens:,} tokens, corpus {report.corpus})", fontsize=13)
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
    ax.hist(norms, bins=20, range=_padded_range(norms), color="tab:gray")
    ax.set_title("decoder norm", fontsize=11)
    for a in (axes[0, 0], axes[0, 1], axes[1, 1]):
        a.set_ylabel("features")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, Path(path))


def plot_comparison(comparison: "Comparison", path: str | Path) -> Path:
    """Best real vs synthetic activation per feature, their ratio, and the summary."""
    import numpy as np

    plt = _plt()
    rows = comparison.rows
    feats = [r.feature for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(2, 1, figsize=SUMMARY_SIZE, gridspec_kw=dict(height_ratios=[1.4, 1]))
    sm = comparison.summary
    share = sm.get("share_exceeds")
    fig.suptitle(
        f"real vs synthetic — {comparison.hook_name}: synthetic ≥ best real for {sm.get('n_exceeds')}/{sm.get('n_fired_real', sm.get('n_features'))} features"
        + (f" ({share:.0%})" if share is not None else ""),
        fontsize=13,
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
    return _save(fig, Path(path))


def render_real(report: FeatureReport, out_dir: str | Path, *, features: Iterable[int] | None = None) -> list[Path]:
    """``feature_{N}_real.png`` per feature + ``summary_real.png`` + ``statistics_real.png``."""
    out = Path(out_dir)
    ctx = f"{report.hook_name}, {report.n_tokens:,} tokens of {report.corpus}"
    fn = report.settings.get("final_norm", "weight")
    paths = [plot_feature(report[f], out / f"feature_{f}_real.png", context=ctx, final_norm=fn)
             for f in (features or report.feature_ids)]
    paths.append(plot_summary(report, out / "summary_real.png"))
    paths.append(plot_statistics(report, out / "statistics_real.png"))
    return paths


def render_synthetic(report: FeatureReport, out_dir: str | Path, *, features: Iterable[int] | None = None) -> list[Path]:
    """``feature_{N}_synthetic.png`` per feature."""
    out = Path(out_dir)
    ctx = f"{report.hook_name}, {report.settings.get('n_steps')} steps x {report.settings.get('restarts')} restarts"
    fn = report.settings.get("final_norm", "weight")
    return [plot_feature(report[f], out / f"feature_{f}_synthetic.png", context=ctx, final_norm=fn)
            for f in (features or report.feature_ids)]


def render_comparison(comparison: "Comparison", out_dir: str | Path) -> list[Path]:
    """``real_vs_synthetic_comparison.png``."""
    return [plot_comparison(comparison, Path(out_dir) / "real_vs_synthetic_comparison.png")]

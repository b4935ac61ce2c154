"""PNG figures: exist, have the expected size, are not blank; odd tokens are safe; each
figure draws the data it is about (read back from the Figure's artists)."""
from __future__ import annotations

import io
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from trajectory.features import compare, real, render_comparison, render_real, render_synthetic, synthetic
from trajectory.features import glyphs
from trajectory.features.plots import (
    DECODER_NORM_TITLE, HISTOGRAM_TITLE, NEIGHBOUR_TITLE, display_token, feature_figure, figure_context,
    statistics_figure, summary_figure,
)
from trajectory.features.report import Example, FeatureReport, FeatureStats
from trajectory.testing import CORPUS_SENTENCES, random_sae

HOOK = "blocks.1.hook_resid_post"
ODD = ["<bos>", " 日本語", "\n", "$x$", "a\x00b", "🙂", "\u200b", "Ω", "   "]


def test_display_token_escapes():
    assert display_token("\n") == "\\n" and display_token("a\tb") == "a\\tb"
    assert display_token("a\x00b") == "a\\x00b"
    assert display_token("\u200b") == "\\u200b"  # format character
    assert display_token("🙂", renderable=lambda c: False) == "⟨U+1F642⟩"  # no font has it
    assert display_token("Ω") == "Ω" and display_token("   ") == "···"
    assert len(display_token("x" * 100, max_len=10)) == 10


def _assert_png(path, size):
    img = np.asarray(Image.open(path).convert("RGB")).astype(float)
    assert img.shape[1] == size[0] and img.shape[0] == size[1], (path, img.shape)
    non_white = (img.min(axis=2) < 200).mean()
    assert non_white > 0.01, f"{path} looks blank"
    assert img.std() > 10


@pytest.fixture(scope="module")
def reports(tiny_model):
    sae = random_sae(32, 16, seed=2, hook_name=HOOK)
    r = real(tiny_model, sae, "0-2", CORPUS_SENTENCES * 2, context_length=10, max_examples=8, progress=False)
    # an example full of odd tokens (the tiny vocabulary has none of its own)
    r[0].examples.insert(0, Example(tokens=ODD, token_ids=list(range(len(ODD))), activations=[0, 1, 2, 3, 4, 5, 0, 1, 2],
                                    peak=5, activation=5.0))
    r[0].top_logits[0] = ("$\\alpha$ 日本🙂\n", 1.0)
    s = synthetic(tiny_model, sae, "0-2", seq_len=4, n_steps=5, restarts=2, best_real=r, progress=False)
    return r, s


def test_pngs_exist_sized_not_blank(reports, tmp_path, artifacts_dir):
    r, s = reports
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. "Glyph ... missing from font"
        paths = render_real(r, tmp_path) + render_synthetic(s, tmp_path) + render_comparison(compare(r, s), tmp_path)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [f"feature_{f}_real.png" for f in range(3)] + [f"feature_{f}_synthetic.png" for f in range(3)]
        + ["summary_real.png", "statistics_real.png", "real_vs_synthetic_comparison.png"]
    )
    for p in paths:
        assert p.is_file()
        _assert_png(p, (1400, 1000) if p.name.startswith("feature_") else (1400, 800))
        shutil.copy(p, artifacts_dir / f"analysis_{p.name}")
    assert not list(tmp_path.glob(".*tmp*"))
    # each feature's PNG is the drawing of that feature (checked in its artists below), no other's
    for rep in (r, s):
        drawn = {f: _pixels(feature_figure(rep[f], context=figure_context(rep))) for f in rep}
        for f in rep:
            png = np.asarray(Image.open(tmp_path / f"feature_{f}_{rep.mode}.png").convert("RGB"))
            assert [g for g in drawn if np.array_equal(png, drawn[g])] == [f]


def _pixels(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="white")
    return np.asarray(Image.open(buf).convert("RGB"))


def _charmap(family):
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family=[family]), fallback_to_default=False)
    return path, set(FT2Font(path).get_charmap())


def _extra_char():
    """A character DejaVu Sans has and DejaVu Sans Mono lacks (both ship with matplotlib)."""
    import unicodedata

    mono, sans = _charmap("DejaVu Sans Mono")[1], _charmap("DejaVu Sans")[1]
    return next(chr(c) for c in sorted(sans - mono) if unicodedata.category(chr(c)) in ("Sm", "So", "Lo", "Ll"))


def _texts(fig):
    from matplotlib.text import Text

    fig.canvas.draw()  # tick labels get their text when drawn
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text()]


def test_characters_without_a_glyph_show_their_code_point():
    assert display_token("デア", renderable=str.isascii) == "⟨U+30C7⟩⟨U+30A2⟩"
    assert display_token("デアabc", max_len=12, renderable=str.isascii) == "⟨U+30C7⟩…"  # never cut inside
    assert display_token("a\nデ", renderable=str.isascii) == "a\\n⟨U+30C7⟩"


def test_a_font_that_has_the_character_is_used(monkeypatch):
    monkeypatch.setattr(glyphs, "_fallback_fonts", lambda: (("Fake CJK", frozenset({0x30C7})),))
    glyphs.font_for.cache_clear()
    try:
        assert display_token("デア") == "デ⟨U+30A2⟩"
        assert glyphs.font_families(["x", "デア"]) == [glyphs.FONT, "Fake CJK"]
    finally:
        glyphs.font_for.cache_clear()


def test_no_character_is_drawn_without_a_glyph(reports):
    """Every character of every text in a feature figure is in a font the text is drawn
    with (matplotlib's "Last Resort" placeholder boxes do not count); characters no
    font has are shown as ⟨U+XXXX⟩, and the figure says what that means."""
    extra = _extra_char()
    s = reports[0][0]
    s = FeatureStats(**{**s.__dict__, "top_logits": [("デア", 2.0), (f"{extra}x", 1.5)] + s.top_logits[2:]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        texts = _texts(feature_figure(s))
    for t in texts:
        fonts = [_charmap(f) for f in t.get_fontfamily()]
        for ch in t.get_text():
            assert ch.isspace() or any(ord(ch) in cmap and "LastResort" not in path for path, cmap in fonts), (ch, t)
    labels = [t.get_text() for t in texts]
    assert f"{extra}x" in labels  # drawn with a font that has it, not escaped
    if not any(0x30C7 in _charmap(f)[1] for f in glyphs.font_families(["デ"])):
        assert "⟨U+30C7⟩⟨U+30A2⟩" in labels and glyphs.MISSING_GLYPH_NOTE in labels


def test_feature_figure_draws_that_feature(reports):
    r, _ = reports
    counts = {f: r[f].histogram_counts for f in r}
    assert len({tuple(c) for c in counts.values()}) == len(counts)  # else the test could not tell them apart
    for f in r:
        s = r[f]
        fig = feature_figure(s, context=figure_context(r))
        assert fig._suptitle.get_text().startswith(f"Feature {f} — real — {HOOK}")
        texts = [t.get_text() for t in _texts(fig)]
        assert any(t.startswith(f"feature {f} (real)\nmax activation   {s.max_activation:.4g}") for t in texts)
        (hist,) = [ax for ax in fig.axes if ax.get_title() == HISTOGRAM_TITLE]
        heights = [int(p.get_height()) for p in hist.patches]
        assert heights == s.histogram_counts and sum(heights) == s.n_active
        assert [p.get_x() for p in hist.patches] == pytest.approx(s.histogram_edges[:-1])
        (promoted,) = [ax for ax in fig.axes if ax.get_title().startswith("promoted")]
        assert [t.get_text() for t in promoted.get_yticklabels()][::-1] == [glyphs.tick_label(t) for t, _ in s.top_logits]
        assert [p.get_width() for p in promoted.patches][::-1] == pytest.approx([v for _, v in s.top_logits])
        (ex,) = [ax for ax in fig.axes if ax.get_title("left").startswith("top-activating")]
        peaks = [t.get_text() for t in ex.texts if t.get_bbox_patch() and t.get_bbox_patch().get_edgecolor()[:3] == (0, 0, 0)]
        assert peaks == [display_token(e.tokens[e.peak], 16) for e in s.examples[:10]]


def _decoder_report(norms, cosines):
    feats = {f: FeatureStats(feature=f, mode="real", max_activation=1.0 + f, density=0.1, decoder_norm=n,
                             decoder_neighbour=None if c is None else (f + 1) % 3, decoder_neighbour_cosine=c)
             for f, (n, c) in enumerate(zip(norms, cosines))}
    return FeatureReport(mode="real", features=feats, corpus="default", n_tokens=4064, hook_name=HOOK)


def _decoder_panels(report):
    """(title, bar heights) of the summary's decoder panel; (title, histogram total) of the statistics'."""
    summary = summary_figure(report).axes[3]
    stats = statistics_figure(report).axes[3]
    return (summary.get_title(), [p.get_height() for p in summary.patches],
            stats.get_title(), sum(p.get_height() for p in stats.patches))


def test_decoder_panels_show_cosines_when_every_norm_is_one():
    unit = _decoder_report([1.0, 0.9999999, 1.0000001], [0.25, 0.5, 0.75])
    title, heights, stats_title, total = _decoder_panels(unit)
    assert title.startswith(NEIGHBOUR_TITLE) and "norm 1" in title and heights == pytest.approx([0.25, 0.5, 0.75])
    assert stats_title == title and total == 3
    varied = _decoder_report([0.5, 1.0, 2.0], [0.25, 0.5, 0.75])
    title, heights, stats_title, total = _decoder_panels(varied)
    assert title == DECODER_NORM_TITLE and heights == pytest.approx([0.5, 1.0, 2.0]) and total == 3
    old = _decoder_report([1.0, 1.0, 1.0], [None, None, None])  # a report from before the cosines
    title, heights, stats_title, total = _decoder_panels(old)
    assert heights == [] and total == 0 and "norm 1" in title and "rerun `trajectory real`" in title


def test_titles_name_the_corpus():
    rep = _decoder_report([1.0], [0.5])
    assert figure_context(rep) == f"{HOOK}, 4,064 tokens of the Python documentation (the default corpus before 2026-12)"
    assert "4,064 tokens of the Python documentation (the default corpus before 2026-12)" in statistics_figure(rep)._suptitle.get_text()
    rep.corpus = "notes.txt"
    assert figure_context(rep).endswith("4,064 tokens of corpus notes.txt")

"""PNG figures: exist, have the expected size, are not blank; odd tokens are safe."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from trajectory.features import compare, real, render_comparison, render_real, render_synthetic, synthetic
from trajectory.features.report import Example
from trajectory.features.plots import display_token
from trajectory.testing import CORPUS_SENTENCES, random_sae

HOOK = "blocks.1.hook_resid_post"
ODD = ["<bos>", " 日本語", "\n", "$x$", "a\x00b", "🙂", "\u200b", "Ω", "   "]


def test_display_token_escapes():
    assert display_token("\n") == "\\n" and display_token("a\tb") == "a\\tb"
    assert display_token("a\x00b") == "a\\x00b"
    assert display_token("\u200b") == "\\u200b"  # format character
    assert display_token("🙂") == "\\U0001f642"  # no glyph in DejaVu Sans Mono
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

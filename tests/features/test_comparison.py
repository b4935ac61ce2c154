"""compare(): rows and summary from a real and a synthetic report; the file round trip."""
from __future__ import annotations

import pytest

from trajectory.features import compare, real, synthetic
from trajectory.testing import CORPUS_SENTENCES, random_sae

HOOK = "blocks.1.hook_resid_post"


def test_compare_real_and_synthetic(tiny_model, tmp_path):
    sae = random_sae(32, 16, seed=2, hook_name=HOOK)
    r = real(tiny_model, sae, "0-2", CORPUS_SENTENCES, context_length=8, progress=False)
    s = synthetic(tiny_model, sae, "0-2", seq_len=3, n_steps=6, restarts=1, best_real=r, progress=False)
    assert all(s[f].best_real_activation == r[f].max_activation for f in s)
    c = compare(r, s)
    for row in c.rows:
        assert row.best_real == r[row.feature].max_activation and row.synthetic == s[row.feature].synthetic_activation
        assert row.exceeds == (row.best_real > 0 and row.synthetic >= row.best_real)
    assert c.summary["n_exceeds"] == sum(row.exceeds for row in c.rows)
    fired = [row for row in c.rows if row.best_real > 0]
    assert c.summary["n_fired_real"] == len(fired)
    assert c.summary["share_exceeds"] == (c.summary["n_exceeds"] / len(fired) if fired else None)
    from trajectory.features import Comparison

    assert Comparison.load(c.save(tmp_path / "c.json")) == c
    with pytest.raises(ValueError, match="real and a synthetic"):
        compare(s, r)


def _stats(feature, mode, act, tokens=("a", "b", "c"), peak=1, **kw):
    from trajectory.features.report import Example, FeatureStats

    examples = [Example(tokens=list(tokens), token_ids=[0] * len(tokens), activations=[0.0] * len(tokens), peak=peak,
                        activation=act)] if act > 0 else []
    extra = {"synthetic_activation": act} if mode == "synthetic" else {}
    return FeatureStats(feature=feature, mode=mode, max_activation=act, examples=examples, **{**extra, **kw})


def test_ratios_and_summary_against_hand_worked_numbers():
    """Constructed reports: best real / synthetic per feature, worked out by hand."""
    from trajectory.features.report import FeatureReport

    real_acts = {1: 2.0, 2: 4.0, 3: 0.0, 4: 1.0, 6: 2.0, 9: 1.0}  # 9: only in the real report
    syn_acts = {1: 3.0, 2: 2.0, 3: 0.7, 4: 5.0, 6: 2.0, 8: 9.0}   # 8: only in the synthetic one
    r = FeatureReport(mode="real", hook_name=HOOK, features={
        f: _stats(f, "real", a, tokens=("x", " y", " z", "!"), peak=2, density=f / 100) for f, a in real_acts.items()})
    s = FeatureReport(mode="synthetic", hook_name=HOOK, features={f: _stats(f, "synthetic", a) for f, a in syn_acts.items()})
    # a synthetic report from before synthetic_activation existed: max_activation stands in
    s.features[6].synthetic_activation = None
    c = compare(r, s)
    assert [row.feature for row in c.rows] == [1, 2, 3, 4, 6]
    by = {row.feature: row for row in c.rows}
    # 3.0/2.0, 2.0/4.0, never fired, 5.0/1.0, 2.0/2.0
    assert [by[f].ratio for f in (1, 2, 3, 4, 6)] == [1.5, 0.5, None, 5.0, 1.0]
    assert [by[f].exceeds for f in (1, 2, 3, 4, 6)] == [True, False, False, True, True]
    assert (by[4].best_real, by[4].synthetic, by[4].density) == (1.0, 5.0, 0.04)
    assert by[6].synthetic == 2.0
    assert by[1].real_example == "x y z" and by[1].synthetic_example == "ab" and by[3].real_example == ""
    # ratios 0.5, 1.0, 1.5, 5.0: the median is the mean of the middle two
    assert c.summary == {
        "n_features": 5, "n_fired_real": 4, "n_exceeds": 3, "share_exceeds": 0.75,
        "median_ratio": 1.25, "max_ratio": 5.0, "features_exceeding": [1, 4, 6], "far_above": [4],
        "never_fired": [3], "only_synthetic_fires": [3],
    }
    # an odd number of ratios: the middle one
    del r.features[6], s.features[6]
    assert compare(r, s).summary["median_ratio"] == 1.5

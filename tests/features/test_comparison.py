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

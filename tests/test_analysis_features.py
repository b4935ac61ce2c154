"""Feature-spec parsing and the report file format."""
from __future__ import annotations

import json

import pytest

from trajectory.analysis.features import FeatureSpecError, parse_features
from trajectory.analysis.stats import Example, FeatureReport, FeatureStats


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0,5,10", [0, 5, 10]),
        ("0-3", [0, 1, 2, 3]),
        ("0-2,50-52", [0, 1, 2, 50, 51, 52]),
        (" 7 , 3,3 ", [3, 7]),
        ("4-4", [4]),
        (5, [5]),
        ([9, 2, 2], [2, 9]),
    ],
)
def test_valid_specs(spec, expected):
    assert parse_features(spec) == expected


@pytest.mark.parametrize("spec", ["", "a", "1,,2", "3-1", "-2", "1-", "-", "1-2-3", "0.5", "1;2", True])
def test_invalid_specs_raise_clear_error(spec):
    with pytest.raises(FeatureSpecError) as err:
        parse_features(spec)
    assert "feature" in str(err.value)


def test_out_of_range_names_width():
    assert parse_features("0-63", d_sae=64)[-1] == 63
    with pytest.raises(FeatureSpecError, match="64 features"):
        parse_features("60-64", d_sae=64)


def test_report_roundtrip(tmp_path):
    s = FeatureStats(
        feature=3, mode="real", max_activation=2.5, density=0.1, n_tokens=10, n_active=1,
        histogram_edges=[0.0, 1.0, 2.5], histogram_counts=[0, 1],
        examples=[Example(tokens=["<bos>", " 日本", "\n"], token_ids=[2, 5, 6], activations=[0.0, 2.5, 0.1], peak=1, activation=2.5)],
        top_logits=[("a", 1.0)], bottom_logits=[("b", -1.0)],
    )
    rep = FeatureReport(mode="real", features={3: s}, model_name="m", hook_name="blocks.1.hook_resid_post", layer=1, n_tokens=10)
    path = rep.save(tmp_path / "r.json")
    back = FeatureReport.load(path)
    assert back == rep and back[3].examples[0].tokens[1] == " 日本"
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left nothing behind
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a trajectory feature report"):
        FeatureReport.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="trajectory real"):
        FeatureReport.load(tmp_path / "missing.json")
    # one feature on its own
    assert FeatureStats.load(s.save(tmp_path / "f3.json")) == s
    with pytest.raises(ValueError, match="FeatureReport.load"):
        FeatureStats.load(path)

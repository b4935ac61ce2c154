"""The report file format: round trips, clear errors, the old ``version`` header key."""
from __future__ import annotations

import json

import pytest

from trajectory.features.comparison import Comparison, ComparisonRow
from trajectory.features.report import Example, FeatureReport, FeatureStats


def _stats():
    return FeatureStats(
        feature=3, mode="real", max_activation=2.5, density=0.1, n_tokens=10, n_active=1,
        histogram_edges=[0.0, 1.0, 2.5], histogram_counts=[0, 1],
        examples=[Example(tokens=["<bos>", " 日本", "\n"], token_ids=[2, 5, 6], activations=[0.0, 2.5, 0.1], peak=1, activation=2.5)],
        top_logits=[("a", 1.0)], bottom_logits=[("b", -1.0)],
    )


def test_report_roundtrip(tmp_path):
    s = _stats()
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


def test_header_writes_format_version_and_reads_the_old_version_key(tmp_path):
    s = _stats()
    rep = FeatureReport(mode="real", features={3: s}, model_name="m", hook_name="blocks.1.hook_resid_post", layer=1,
                        settings={"max_examples": 20})
    comparison = Comparison(rows=[ComparisonRow(feature=3, best_real=2.5, synthetic=3.0, ratio=1.2, exceeds=True,
                                                density=0.1)], summary={"n_features": 1}, hook_name="h", model_name="m")
    for obj, path in ((rep, tmp_path / "r.json"), (s, tmp_path / "f.json"), (comparison, tmp_path / "c.json")):
        obj.save(path)
        doc = json.loads(path.read_text(encoding="utf-8"))
        assert doc["format_version"] == 1 and "version" not in doc
        # a file written before format_version existed
        doc["version"] = doc.pop("format_version")
        path.write_text(json.dumps(doc), encoding="utf-8")
        assert type(obj).load(path) == obj
    doc = json.loads(rep.save(tmp_path / "r.json").read_text(encoding="utf-8"))
    assert list(doc)[:2] == ["format", "format_version"]
    assert list(doc)[-4:] == ["settings", "created", "versions", "features"] and doc["versions"]["torch"]
    doc["format_version"] = 2
    (tmp_path / "r.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ValueError, match="version 2.*upgrade trajectory"):
        FeatureReport.load(tmp_path / "r.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a trajectory feature comparison"):
        Comparison.load(tmp_path / "other.json")

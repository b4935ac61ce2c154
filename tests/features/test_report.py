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


def test_files_without_decoder_neighbours_still_read(tmp_path):
    s = _stats()
    s.decoder_neighbour, s.decoder_neighbour_cosine = 7, 0.25
    rep = FeatureReport(mode="real", features={3: s}, hook_name="blocks.1.hook_resid_post", layer=1)
    path = rep.save(tmp_path / "r.json")
    assert FeatureReport.load(path)[3].decoder_neighbour_cosine == 0.25
    doc = json.loads(path.read_text(encoding="utf-8"))
    for d in doc["features"]:  # as written before the fields existed
        del d["decoder_neighbour"], d["decoder_neighbour_cosine"]
    path.write_text(json.dumps(doc), encoding="utf-8")
    old = FeatureReport.load(path)[3]
    assert (old.decoder_neighbour, old.decoder_neighbour_cosine, old.max_activation) == (None, None, 2.5)


def test_feature_summary_lines():
    from trajectory.features.report import corpus_description, feature_summary_lines

    long = Example(tokens=["def"] + [" f"] * 40 + [" return", "\n", "\tx", " = 1", " + 2"], token_ids=[0] * 46,
                   activations=[0.0] * 46, peak=41, activation=4.0)
    feats = {
        3: _stats(),
        5: FeatureStats(feature=5, mode="real", max_activation=4.0, density=0.5, n_tokens=1234, n_active=617,
                        examples=[long]),
        8: FeatureStats(feature=8, mode="real", n_tokens=1234),
    }
    rep = FeatureReport(mode="real", features=feats, corpus="default", n_tokens=10)
    assert feature_summary_lines(rep, width=30) == [
        'feature 3: density 10.00% (1 of 10 tokens), max 2.5, top: "<bos>« 日本»\\n"',
        # 30 characters around the peak (7): after it 23 // 3 = 7 of "\\n\\tx = 1 + 2", before it the other 16
        'feature 5: density 50.00% (617 of 1,234 tokens), max 4, top: "… f f f f f f f f« return»\\n\\tx =…"',
        "feature 8: never active in 1,234 tokens",
    ]
    assert feature_summary_lines(rep, limit=1, width=30) == [feature_summary_lines(rep, width=30)[0],
                                                            "... and 2 more feature(s) in the report"]
    syn = FeatureStats(feature=4, mode="synthetic", max_activation=6.0, best_real_activation=2.5,
                       examples=[Example(tokens=["<bos>", "a", "b"], token_ids=[2, 0, 1], activations=[0, 6, 1], peak=1,
                                         activation=6.0)])
    assert feature_summary_lines(FeatureReport(mode="synthetic", features={4: syn})) == [
        'feature 4: synthetic 6 (best real 2.5), top: "<bos>«a»b"']
    assert corpus_description("default") == "the Python documentation (the default corpus before 2026-12)"
    assert corpus_description("mixed") == "English prose and the Python documentation (default corpus)"
    assert corpus_description("notes.txt") == "corpus notes.txt" and corpus_description(None) == "no corpus"


def test_docstring_examples_run():
    import doctest

    from trajectory.features import report

    result = doctest.testmod(report)
    assert result.attempted and not result.failed

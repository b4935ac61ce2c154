"""``trajectory real | synthetic | compare`` end to end on the tiny fixtures: a single SAE
folder (--sae) and a bank layer (--bank/--layer); options reach the analysis."""
from __future__ import annotations

from trajectory.cli import main
from trajectory.features import FeatureReport, real
from trajectory.testing import CORPUS_SENTENCES, random_sae

HOOK = "blocks.1.hook_resid_post"


def test_cli_real_synthetic_compare(tiny_model, tmp_path, monkeypatch, capsys):
    """End to end through `trajectory compare` with --sae (a sae-lens folder) and a corpus file."""
    import trajectory.model.load

    monkeypatch.setattr(trajectory.model.load, "load_model", lambda *a, **k: tiny_model)
    sae = random_sae(32, 16, seed=2, hook_name=HOOK)
    sae.save_model(tmp_path / "sae")
    (tmp_path / "corpus.txt").write_text(" ".join(CORPUS_SENTENCES))
    out = tmp_path / "out"
    rc = main(["compare", "--model", "tiny", "--sae", str(tmp_path / "sae"), "--features", "0-1", "--corpus",
               str(tmp_path / "corpus.txt"), "--context-length", "8", "--n-steps", "4", "--seq-len", "3",
               "--restarts", "1", "--vocab-from-corpus", str(tmp_path / "corpus.txt"), "--output", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0
    assert {p.name for p in out.iterdir()} >= {"real_report.json", "synthetic_report.json", "comparison.json",
                                               "feature_0_real.png", "feature_1_synthetic.png", "real_vs_synthetic_comparison.png"}
    assert FeatureReport.load(out / "real_report.json").hook_name == HOOK
    syn = FeatureReport.load(out / "synthetic_report.json")
    corpus_ids = set(tiny_model.to_tokens(" ".join(CORPUS_SENTENCES))[0].tolist())
    assert syn.settings["vocab_size"] < tiny_model.cfg.d_vocab - 4
    assert all(set(e.token_ids) <= corpus_ids for s in syn.values() for e in s.examples)
    assert main(["real", "--features", "5-2", "--sae", "x"]) == 1
    assert "bad feature range" in capsys.readouterr().err
    rc = main(["real", "--model", "tiny", "--sae", str(tmp_path / "sae"), "--features", "0-99", "--no-plots",
               "--corpus", str(tmp_path / "corpus.txt"), "--output", str(out), "--device", "cpu"])
    assert rc == 1 and "16 features" in capsys.readouterr().err


def test_real_on_a_bank_layer_equals_the_library(tiny_preset, tiny_model, tiny_bank, tiny_bank_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(CORPUS_SENTENCES))
    out = tmp_path / "real"
    assert main(["real", "--bank", str(tiny_bank_dir), "--layer", "2", "--features", "0-5", "--corpus", str(corpus),
                 "--context-length", "12", "--max-examples", "3", "--include-bos", "--no-plots", "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote 1 file(s) to {out}/" in printed
    for f in range(6):  # one summary line per feature
        assert sum(line.startswith(f"feature {f}:") for line in printed.splitlines()) == 1
    got = FeatureReport.load(out / "real_report.json")
    want = real(tiny_model, tiny_bank[2], "0-5", str(corpus), hook_name=tiny_bank.hook_name(2), context_length=12,
                max_examples=3, include_bos=True, progress=False)
    assert got.hook_name == tiny_bank.hook_name(2) and got.feature_ids == want.feature_ids
    for f in want.feature_ids:
        assert got[f].density == want[f].density and got[f].max_activation == want[f].max_activation
        assert [e.token_ids for e in got[f].examples] == [e.token_ids for e in want[f].examples]
        assert len(got[f].examples) <= 3


def test_layer_out_of_range_and_missing_bank(tiny_preset, tmp_path, capsys):
    assert main(["real", "--layer", "99", "--features", "0", "--bank", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "layer 99 is out of range" in err and "pass --layer within" in err
    assert main(["real", "--layer", "1", "--features", "0", "--bank", str(tmp_path / "nope")]) == 1
    assert "trajectory preload" in capsys.readouterr().err

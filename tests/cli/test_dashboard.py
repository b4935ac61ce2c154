"""``trajectory dashboard`` end to end on the tiny fixtures: a bank folder (two layers in
one pass, an index page), a single SAE folder (--sae --model), and bad input — clear
errors and nothing written."""
from __future__ import annotations

import pytest

from trajectory.cli import main
from trajectory.dashboard import LayerDashboard
from trajectory.testing import CORPUS_SENTENCES, random_sae




@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(CORPUS_SENTENCES))
    return path


def test_bank_layers_in_one_pass(tiny_preset, tiny_bank_dir, corpus, tmp_path, capsys):
    out = tmp_path / "dash"
    assert main(["dashboard", "--bank", str(tiny_bank_dir), "--layers", "0,2", "--features", "0-9", "--corpus",
                 str(corpus), "--context-length", "12", "--max-examples", "3", "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    assert f"to {out}/" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "layer_00.html", "layer_00.json", "layer_02.html",
                                                     "layer_02.json"]
    dash = LayerDashboard.load(out / "layer_02.json")
    assert dash.feature_ids == list(range(10)) and dash.hook_name == "blocks.2.hook_resid_post"
    assert all(len(c.examples) <= 3 for c in dash.features) and dash.settings["context_length"] == 12
    assert 'href="layer_02.html"' in (out / "index.html").read_text()


def test_single_sae(tiny_model, monkeypatch, corpus, tmp_path):
    import trajectory.model.load

    monkeypatch.setattr(trajectory.model.load, "load_model", lambda *a, **k: tiny_model)
    random_sae(32, 16, seed=2, hook_name="blocks.1.hook_resid_post").save_model(tmp_path / "sae")
    out = tmp_path / "one"
    assert main(["dashboard", "--model", "tiny", "--sae", str(tmp_path / "sae"), "--corpus", str(corpus),
                 "--context-length", "8", "--max-tokens", "60", "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    dash = LayerDashboard.load(out / "layer_01.json")
    assert dash.feature_ids == list(range(16))  # all features by default
    assert dash.n_tokens == 60 // 7 * 7  # whole chunks of 7 tokens after BOS


@pytest.mark.parametrize("case", ["features", "layer", "corpus", "out"])
def test_bad_input(case, tiny_preset, tiny_bank_dir, corpus, tmp_path, capsys):
    out = tmp_path / "dash"
    args = {"features": "0-9", "layers": "1", "corpus": str(corpus)}
    want = {"features": "64 features", "layer": "not in the SAE bank", "corpus": "empty", "out": "is an existing file"}
    if case == "features":
        args["features"] = "0-64"  # the tiny bank's SAEs have 64 features
    elif case == "layer":
        from trajectory.saes.bank import SAEBank

        bank = SAEBank.open(tiny_bank_dir, layers=[0])
        bank.save(tmp_path / "one_layer")
        tiny_bank_dir = tmp_path / "one_layer"
    elif case == "corpus":
        (tmp_path / "empty.txt").write_text("  \n")
        args["corpus"] = str(tmp_path / "empty.txt")
    else:
        out.write_text("a file")
    rc = main(["dashboard", "--bank", str(tiny_bank_dir), "--layers", args["layers"], "--features", args["features"],
               "--corpus", args["corpus"], "--out", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 1 and want[case] in capsys.readouterr().err
    assert (out.read_text() == "a file") if case == "out" else not out.exists()  # nothing half-written

"""``trajectory preload`` end to end: SAE folders, the offline preset's training (a fake
trainer for the merging logic, and one real training run on the tiny model), bad arguments."""
from __future__ import annotations

import torch

from trajectory.cli import main
from trajectory.saes.bank import SAEBank
from trajectory.saes.bank_format import read_explanations, read_manifest
from trajectory.testing import CORPUS_SENTENCES, random_sae
from trajectory.training.config import TrainConfig


def _sae_lens_folder(root, layers=(0, 1, 2), d_in=32):
    for layer in layers:
        random_sae(d_in, 64, seed=layer, hook_name=f"blocks.{layer}.hook_resid_post").save_model(root / f"layer_{layer}")
    return root


def test_preload_cli_from_folder(tmp_path, capsys):
    from trajectory.cli import main

    src = _sae_lens_folder(tmp_path / "saes")
    out = tmp_path / "bank"
    assert main(["preload", "--sae-folder", str(src), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "layer" in text and "d_sae" in text and "bytes" in text and str(out.resolve()) in text
    assert len([line for line in text.splitlines() if "folder:" in line]) == 3
    bank = SAEBank.open(out)
    x = torch.randn(3, 32)
    ref = random_sae(32, 64, seed=2, hook_name="blocks.2.hook_resid_post")
    assert torch.equal(bank[2].encode(x), ref.encode(x))
    # complete: skipped, unless --force
    created = read_manifest(out)["created"]
    assert main(["preload", "--sae-folder", str(src), "--out", str(out), "--layers", "0-2", "--no-progress"]) == 0
    assert "nothing to rebuild" in capsys.readouterr().out
    assert main(["preload", "--sae-folder", str(src), "--out", str(out), "--layers", "0-2", "--force", "--no-progress"]) == 0
    assert "nothing to rebuild" not in capsys.readouterr().out
    assert read_manifest(out)["created"] >= created


def test_preload_cli_bad_arguments(tmp_path, capsys):
    from trajectory.cli import main

    assert main(["preload", "--release", "gemma-scope-2b-pt-res-canonical"]) == 1
    assert "--sae-id-template" in capsys.readouterr().err
    assert main(["preload", "--preset", "nope"]) == 1
    assert "unknown preset" in capsys.readouterr().err
    assert main(["preload", "--layers", "0-40", "--out", str(tmp_path / "b")]) == 1
    assert "out of range" in capsys.readouterr().err


def test_preload_offline_trains_only_missing_layers(tmp_path, capsys, monkeypatch, tiny_model):
    """The offline preset calls training.train_bank for the layers the bank lacks, then merges."""
    import trajectory.model.load
    import trajectory.training.train
    from trajectory.cli import main

    calls, seen = [], []

    def fake_train_bank(model, config, *, layers, device, progress):
        calls.append(list(layers))
        seen.append(config)
        assert model is tiny_model and config.corpus == "my.txt"
        saes = {layer: random_sae(32, 64, seed=10 + layer, architecture="topk", k=4,
                                  hook_name=f"blocks.{layer}.hook_resid_post") for layer in layers}
        bank = SAEBank.from_saes(saes, model_name="tiny-gemma2", source="trained:my.txt")
        for layer in layers:
            bank.entry(layer).metrics = {"l0": 4.0, "explained_variance": 0.81, "dead_fraction": 0.05, "delta_loss": 0.12}
            bank.entry(layer).explanations = {3: f"feature 3 of layer {layer}"}
        bank.metadata = {"training": {"corpus": "my.txt"}}
        return bank

    monkeypatch.setattr(trajectory.training.train, "train_bank", fake_train_bank)
    monkeypatch.setattr(trajectory.model.load, "load_model", lambda name, device=None, **kw: tiny_model)
    out = tmp_path / "offline"
    args = ["preload", "--preset", "offline", "--out", str(out), "--corpus", "my.txt", "--no-progress", "--device", "cpu"]
    assert main([*args, "--layers", "0-1"]) == 0
    assert main([*args, "--layers", "0-2"]) == 0
    assert calls == [[0, 1], [2]]
    assert seen[0] == TrainConfig(corpus="my.txt")  # package defaults unless options are given
    assert main([*args, "--layers", "2", "--force", "--architecture", "batchtopk", "--d-sae", "128", "--k", "8",
                 "--train-tokens", "5000", "--epochs", "2"]) == 0
    assert seen[-1] == TrainConfig(corpus="my.txt", architecture="batchtopk", d_sae=128, k=8, n_train_tokens=5000,
                                   epochs=2.0)
    text = capsys.readouterr().out
    assert "0.810" in text and "5.0%" in text and "0.120" in text
    m = read_manifest(out)
    assert sorted(m["layers"]) == ["0", "1", "2"] and m["preset"] == "offline"
    assert m["layers"]["2"]["metrics"]["explained_variance"] == 0.81
    assert read_explanations(out, 1) == {3: "feature 3 of layer 1"}
    bank = SAEBank.open(out)
    bank.check_model(tiny_model)
    assert bank.entry(0).architecture == "topk" and bank.metadata["training"]["corpus"] == "my.txt"
    assert main([*args, "--layers", "1", "--force"]) == 0
    assert calls[-1] == [1] and sorted(read_manifest(out)["layers"]) == ["0", "1", "2"]


def test_preload_offline_really_trains_on_the_tiny_model(tiny_preset, tiny_model, tmp_path, capsys):
    """No fake trainer: the CLI's options reach TrainConfig and a real SAE is trained."""
    corpus = tmp_path / "words.txt"
    corpus.write_text("\n".join(" ".join(CORPUS_SENTENCES[i:] + CORPUS_SENTENCES[:i]) for i in range(12)))
    out = tmp_path / "bank"
    assert main(["preload", "--preset", "offline", "--layers", "1", "--out", str(out), "--corpus", str(corpus),
                 "--d-sae", "48", "--k", "4", "--train-tokens", "600", "--dtype", "float16", "--no-progress",
                 "--device", "cpu"]) == 0
    assert str(out.resolve()) in capsys.readouterr().out
    m = read_manifest(out)
    layer = m["layers"]["1"]
    assert (layer["d_sae"], layer["dtype"], m["metadata"]["training"]["k"]) == (48, "float16", 4)
    assert 0 < layer["metrics"]["l0"] <= 4.0 and "explained_variance" in layer["metrics"]
    bank = SAEBank.open(out)
    x = torch.randn(5, tiny_model.cfg.d_model, dtype=torch.float16)
    assert int((bank[1].encode(x) > 0).sum(-1).max()) <= 4  # a TopK SAE with the k asked for


def test_two_preloads_into_one_bank_keep_both_runs_layers(tmp_path):
    """Two real processes preload disjoint layers into the same folder at the same time:
    both succeed and the bank has every layer (they wait for each other and merge)."""
    import os
    import subprocess
    import sys

    src = _sae_lens_folder(tmp_path / "saes", layers=(0, 1, 2, 3))
    out = tmp_path / "bank"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    runs = [subprocess.Popen([sys.executable, "-m", "trajectory", "preload", "--sae-folder", str(src), "--layers",
                              layers, "--out", str(out), "--no-progress", "--device", "cpu"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for layers in ("0,1", "2,3")]
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
    assert sorted(read_manifest(out)["layers"]) == ["0", "1", "2", "3"]
    bank = SAEBank.open(out)
    x = torch.randn(3, 32)
    for layer in range(4):
        ref = random_sae(32, 64, seed=layer, hook_name=f"blocks.{layer}.hook_resid_post")
        assert torch.equal(bank[layer].encode(x), ref.encode(x))


def test_preload_refuses_a_non_residual_training_hook(tmp_path):
    import pytest

    from trajectory.saes.preload import PreloadConfig, preload_bank

    config = PreloadConfig(preset="offline", layers=[0], training=TrainConfig(hook="blocks.{layer}.hook_mlp_out"))
    with pytest.raises(ValueError, match="trajectory train --hook"):
        preload_bank(config, tmp_path / "bank", progress=False)
    assert not (tmp_path / "bank" / "manifest.json").exists()

"""``trajectory train`` on the tiny model (the preset's loader gives it) and on a store."""
from __future__ import annotations

import argparse
import json

import pytest

from trajectory.cli import train as train_cli
from trajectory.testing import CORPUS_SENTENCES


def _run(argv) -> int:
    """``trajectory train ...`` through the sub-command's own parser (registered or not)."""
    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers())
    args = parser.parse_args(["train", *argv])
    return args.func(args)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(CORPUS_SENTENCES[i:] + CORPUS_SENTENCES[:i]) for i in range(30)))
    return path


def test_train_mlp_out_bank_and_then_on_its_store(tiny_preset, tiny_model, corpus, tmp_path, capsys):
    from trajectory.saes.bank import SAEBank
    from trajectory.saes.bank_format import read_manifest

    out, stores = tmp_path / "bank", tmp_path / "stores"
    assert _run(["--preset", "offline", "--hook", "mlp_out", "--layers", "1-2", "--architecture", "batchtopk",
                 "--expansion-factor", "2", "--k", "4", "--corpus", str(corpus), "--train-tokens", "1000",
                 "--heldout-tokens", "200", "--batch-size", "128", "--epochs", "1", "--max-epochs", "1",
                 "--store-dir", str(stores), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "CE spliced" in text and "CE zero-abl" in text and str(out.resolve()) in text
    manifest = read_manifest(out)
    for layer in (1, 2):
        m = manifest["layers"][str(layer)]
        assert m["hook_name"] == f"blocks.{layer}.hook_mlp_out" and m["d_sae"] == 64
        line = next(x for x in text.splitlines() if x.split()[:2] == [str(layer), m["hook_name"]])
        assert f"{m['metrics']['explained_variance']:.3f}" in line and f"{m['metrics']['loss_spliced']:.3f}" in line
    assert SAEBank.open(out).hook_name(1) == "blocks.1.hook_mlp_out"

    # the kept train store, trained on again with --activations
    sae_out = tmp_path / "sae"
    assert _run(["--activations", str(stores / "train"), "--d-sae", "48", "--k", "3", "--batch-size", "128",
                 "--max-epochs", "1", "--heldout-tokens", "100", "--out", str(sae_out)]) == 0
    text = capsys.readouterr().out
    doc = json.loads((sae_out / "metrics.json").read_text())
    assert sorted(doc["saes"]) == ["blocks.1.hook_mlp_out", "blocks.2.hook_mlp_out"]
    assert all(s["d_sae"] == 48 for s in doc["saes"].values()) and str(sae_out.resolve()) in text
    ev = doc["saes"]["blocks.2.hook_mlp_out"]["explained_variance"]
    assert f"{ev:.3f}" in text


def test_bad_arguments(tiny_preset, corpus, tmp_path):
    with pytest.raises(ValueError, match="hook must be one of"):
        _run(["--hook", "blocks.{layer}.hook_nope", "--out", str(tmp_path / "a")])
    with pytest.raises(ValueError, match="out of range"):
        _run(["--hook", "z", "--layers", "40", "--out", str(tmp_path / "a")])
    with pytest.raises(ValueError, match="ram-budget"):
        _run(["--ram-budget", "lots", "--out", str(tmp_path / "a")])
    with pytest.raises(FileNotFoundError, match="not an activation store"):
        _run(["--activations", str(tmp_path), "--k", "2", "--d-sae", "8", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit):
        _run(["--d-sae", "8", "--expansion-factor", "2"])
    assert not (tmp_path / "a").exists()


def test_hook_and_size_spelling():
    assert train_cli.hook_template("z") == "blocks.{layer}.attn.hook_z"
    assert train_cli.hook_template("blocks.6.hook_mlp_out") == "blocks.{layer}.hook_mlp_out"
    assert train_cli.hook_template("blocks.{layer}.hook_resid_mid") == "blocks.{layer}.hook_resid_mid"
    assert train_cli.parse_bytes("2G") == 2 * 1024**3 and train_cli.parse_bytes("1000") == 1000
    assert train_cli.parse_bytes("500MB") == 500 * 1024**2 and train_cli.parse_bytes(None) is None

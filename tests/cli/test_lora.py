"""`trajectory lora finetune` / `lora collect` end to end on a tiny transformers Gemma 3 folder."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.training.test_lora import save_tiny_hf_gemma
from trajectory import cli
from trajectory.testing import CORPUS_SENTENCES
from trajectory.training.store import ActivationStore

pytest.importorskip("peft")


@pytest.fixture
def lora_cli(monkeypatch):
    """``main`` with the lora sub-command registered (whether or not the package lists it yet)."""
    if "trajectory.cli.lora" not in cli.SUBCOMMAND_MODULES:
        monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", [*cli.SUBCOMMAND_MODULES, "trajectory.cli.lora"])
    return cli.main


def test_finetune_then_collect(lora_cli, tmp_path, capsys):
    base = save_tiny_hf_gemma(tmp_path / "base")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(CORPUS_SENTENCES * 8), encoding="utf-8")
    out = tmp_path / "adapter"
    rc = lora_cli(["lora", "finetune", "--preset", str(base), "--rank", "1", "--targets", "q,k,v,o,gate,up,down",
                   "--steps", "3", "--batch-size", "2", "--context-length", "12", "--corpus", str(corpus),
                   "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0 and f"wrote {out}" in printed and "3 steps" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rank"] == 1 and len(manifest["targets"]) == 7 and manifest["steps"] == 3
    assert (out / "adapter_config.json").is_file() and (out / "loss_curve.png").is_file()

    rc = lora_cli(["lora", "collect", "--preset", str(base), "--adapter", str(out), "--corpus", str(corpus),
                   "--context-length", "12", "--out", str(out / "activations"), "--no-progress"])
    printed = capsys.readouterr().out
    store = ActivationStore.open(out / "activations")
    assert rc == 0 and f"wrote {out / 'activations'}" in printed
    assert store.d_model == 2 * 7 and f"{store.n_tokens} tokens x 14 LoRA columns" in printed
    meta = json.loads((out / "activations" / "meta.json").read_text())
    assert meta["columns"][:2] == ["layers.0.self_attn.q_proj[0]", "layers.0.self_attn.k_proj[0]"]
    assert meta["columns"][-1] == "layers.1.mlp.down_proj[0]"
    assert np.isfinite(np.array(store.activations("lora_A"))).all()


def test_collect_without_adapter_is_a_clear_error(lora_cli, tmp_path, capsys):
    base = save_tiny_hf_gemma(tmp_path / "base")
    rc = lora_cli(["lora", "collect", "--preset", str(base), "--adapter", str(tmp_path / "missing"),
                   "--corpus", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "no adapter_config.json" in err and not (tmp_path / "missing").exists()


def test_lora_without_action_prints_help(lora_cli, capsys):
    assert lora_cli(["lora"]) == 2
    assert "finetune" in capsys.readouterr().out

"""Loading models: names, local folders, dtypes, errors, and the real offline model (integration)."""
from __future__ import annotations

import json

import pytest

from trajectory.model import load, offline_gguf
from trajectory.model.load import parse_dtype


# ------------------------------------------------------------------ names, folders, dtypes


def test_unknown_hub_model_offline_gives_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    # huggingface_hub reads these at import time: patch the live values as well
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(RuntimeError) as info:
        load.load_model("gpt2", device="cpu")
    msg = str(info.value)
    assert "'gpt2'" in msg and "HF_HUB_OFFLINE" in msg
    assert type(info.value.__cause__).__name__ in msg  # names the underlying error class
    assert "HF_TOKEN" in msg and "--preset offline" in msg


def test_not_a_model_name():
    with pytest.raises(RuntimeError, match=r"'no-such-model-xyz' is neither a preset.*local model folder"):
        load.load_model("no-such-model-xyz", device="cpu")


def test_local_folder_errors(tmp_path):
    with pytest.raises(RuntimeError, match="no config.json"):
        load.load_model(str(tmp_path), device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "_name_or_path": "/somewhere/mine"}))
    with pytest.raises(RuntimeError, match="pass tl_name="):
        load.load_model(str(tmp_path), device="cpu")


def test_corrupt_weights_in_folder_give_clear_error(tmp_path):
    from transformers import GPT2Config

    cfg = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10, n_positions=16, bos_token_id=0, eos_token_id=0)
    cfg.to_json_file(tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not safetensors")
    with pytest.raises(RuntimeError, match=r"could not read the model in .*SafetensorError.*delete the folder"):
        load.load_model(str(tmp_path), device="cpu", tl_name="gpt2")


def test_local_folder_tl_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "GPT2"}))
    assert load._folder_tl_name(tmp_path) == "gpt2"  # aliases resolve to the official name
    (tmp_path / offline_gguf.COMPLETE_MARKER).write_text(json.dumps({"tl_name": "google/gemma-3-270m"}))
    assert load._folder_tl_name(tmp_path) == "google/gemma-3-270m"  # our own marker wins


def test_parse_dtype():
    import torch

    assert parse_dtype(None) is torch.float32
    assert parse_dtype("float32") is torch.float32
    assert parse_dtype("bfloat16") is torch.bfloat16
    assert parse_dtype("BF16") is torch.bfloat16
    assert parse_dtype("torch.float16") is torch.float16
    assert parse_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        parse_dtype("int8")
    with pytest.raises(ValueError, match="unsupported model dtype"):
        parse_dtype(torch.int64)


# ------------------------------------------------------------------ the real offline model

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it naps in the afternoon sun."


@pytest.mark.integration
def test_offline_config(offline_model):
    cfg = offline_model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head) == (18, 640, 4, 1, 256)
    assert cfg.d_vocab == 262144 and cfg.dtype == __import__("torch").float32
    assert all(hasattr(block, "ln1_post") for block in offline_model.blocks)
    assert "blocks.5.ln1_post.hook_scale" in offline_model.hook_dict
    assert load._folder_tl_name(offline_gguf.offline_model_dir()) == offline_gguf.OFFLINE_TL_NAME


@pytest.mark.integration
def test_offline_model_matches_transformers(offline_model):
    """TransformerLens logits equal those of the transformers model read from the same
    cached folder (independent implementation of the forward pass); same tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = offline_gguf.offline_model_dir()
    tok = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    ids = tok(SENTENCE, return_tensors="pt").input_ids
    tl_tokens = offline_model.to_tokens(SENTENCE)
    assert ids[0, 0].item() == tok.bos_token_id
    assert torch.equal(tl_tokens.cpu(), ids)

    with torch.no_grad():
        hf_logits = hf(ids).logits
        tl_logits = offline_model(ids.to(offline_model.cfg.device)).cpu()
    diff = (tl_logits - hf_logits).abs().max().item()
    print(f"max |logit diff| TransformerLens vs transformers: {diff:.3g} (logit scale {hf_logits.abs().max():.1f})")
    assert diff < 2e-3
    assert torch.equal(tl_logits.argmax(-1), hf_logits.argmax(-1))


@pytest.mark.integration
def test_offline_model_is_a_language_model(offline_model):
    """The dequantised weights make a working model: a well-known fact is among the top
    predictions and the sentence's mean next-token loss is far below chance (ln 262144 ≈ 12.5)."""
    import torch

    with torch.no_grad():
        logits = offline_model("The capital of France is")[0, -1]
        loss = offline_model(SENTENCE, return_type="loss").item()
    top = [offline_model.tokenizer.decode(int(i)) for i in logits.topk(5).indices]
    assert " Paris" in top
    assert loss < 5.0

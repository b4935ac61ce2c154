"""trajectory.model.load: GGUF chunk joining and checking, the offline cache folder, the
error paths of hub / local loading, and (integration) the real offline Gemma 3 270M
against the transformers model it was built from."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os

import pytest

from trajectory import models
from trajectory.model.load import GGUFChunk, join_chunks, parse_dtype

# ------------------------------------------------------------------ chunk joiner


def _fake_chunks(tmp_path, sizes=(1000, 2345, 17), pin=False):
    """Three chunk files of random bytes owned by fake packages; returns (chunks, joined bytes)."""
    src = tmp_path / "src"
    src.mkdir()
    chunks, data = [], b""
    for i, size in enumerate(sizes):
        blob = os.urandom(size)
        path = src / f"model.gguf.part{i:02d}"
        path.write_bytes(blob)
        data += blob
        digest = hashlib.sha256(blob).hexdigest() if pin else None
        chunks.append(GGUFChunk(f"fake-part{i + 1}", path, size if pin else None, digest))
    return chunks, data


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_join_chunks_good_digest(tmp_path):
    chunks, data = _fake_chunks(tmp_path, pin=True)
    dest = tmp_path / "out" / "model.gguf"
    got = join_chunks(chunks, dest, hashlib.sha256(data).hexdigest(), len(data))
    assert got == dest
    assert dest.read_bytes() == data
    assert _leftovers(dest.parent) == ["model.gguf"]  # no temporary file left


def test_join_chunks_wrong_total_digest_leaves_nothing(tmp_path):
    chunks, data = _fake_chunks(tmp_path)
    dest = tmp_path / "out" / "model.gguf"
    wrong = hashlib.sha256(data + b"x").hexdigest()
    with pytest.raises(RuntimeError, match=r"sha256 .*expected .*fake-part1, fake-part2, fake-part3.*reinstall"):
        join_chunks(chunks, dest, wrong, len(data), fix="reinstall them")
    assert _leftovers(dest.parent) == []


def test_join_chunks_tampered_chunk_named(tmp_path):
    chunks, data = _fake_chunks(tmp_path, pin=True)
    blob = bytearray(chunks[1].path.read_bytes())
    blob[100] ^= 0xFF  # same size, one flipped byte
    chunks[1].path.write_bytes(bytes(blob))
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(RuntimeError, match=r"chunk model.gguf.part01 of package 'fake-part2' has sha256"):
        join_chunks(chunks, dest, hashlib.sha256(data).hexdigest(), len(data))
    assert _leftovers(dest.parent) == []


def test_join_chunks_truncated_chunk_named(tmp_path):
    chunks, data = _fake_chunks(tmp_path, pin=True)
    chunks[2].path.write_bytes(chunks[2].path.read_bytes()[:-1])
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(RuntimeError, match=r"'fake-part3' has 16 bytes, expected 17"):
        join_chunks(chunks, dest, hashlib.sha256(data).hexdigest(), len(data))
    assert _leftovers(dest.parent) == []


def test_join_chunks_missing_chunk_named(tmp_path):
    chunks, data = _fake_chunks(tmp_path)
    chunks[0].path.unlink()
    dest = tmp_path / "out" / "model.gguf"
    dest.parent.mkdir()
    dest.write_bytes(b"previous good file")  # must survive a failed join
    with pytest.raises(RuntimeError, match=r"of package 'fake-part1' is missing; pip install"):
        join_chunks(chunks, dest, hashlib.sha256(data).hexdigest(), fix="pip install it")
    assert dest.read_bytes() == b"previous good file"
    assert _leftovers(dest.parent) == ["model.gguf"]


# ------------------------------------------------------------------ the pinned offline GGUF


def _installed(package):
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs_gguf = pytest.mark.skipif(not _installed(models.OFFLINE_PACKAGE), reason="trajectory[offline] not installed")


@needs_gguf
def test_offline_pins_match_the_installed_packages():
    """Our pinned digest equals the upstream SHA256SUMS shipped as package data (read as
    text, the package's code is not run), and the located chunks have the pinned sizes."""
    dist = importlib.metadata.distribution(models.OFFLINE_PACKAGE)
    sums = [f for f in dist.files if f.name == "SHA256SUMS"]
    assert sums, "upstream SHA256SUMS not found in the package"
    line = dist.locate_file(sums[0]).read_text().split()
    assert line == [models.OFFLINE_GGUF_SHA256, models.OFFLINE_GGUF_NAME]
    chunks = models.locate_offline_chunks()
    assert [c.package for c in chunks] == [f"{models.OFFLINE_PACKAGE}-part{i}" for i in range(1, 5)]
    assert [c.path.stat().st_size for c in chunks] == [c.size for c in chunks]
    assert sum(c.size for c in chunks) == models.OFFLINE_GGUF_SIZE


def test_missing_chunk_package_gives_the_fix(monkeypatch):
    fake = (("trajectory-no-such-chunk-package", "x.gguf.part00", 1, "0" * 64),)
    monkeypatch.setattr(models, "OFFLINE_GGUF_CHUNKS", fake)
    with pytest.raises(RuntimeError, match=r"'trajectory-no-such-chunk-package'.*not installed.*trajectory\[offline\]"):
        models.locate_offline_chunks()


# ------------------------------------------------------------------ the cache folder


def test_half_built_cache_folder_is_not_taken(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAJECTORY_CACHE", str(tmp_path))
    final = tmp_path / "models" / models.OFFLINE_CACHE_NAME
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")  # weights written, marker never was
    built = []
    monkeypatch.setattr(models, "_build_offline_dir", lambda path: built.append(path))
    assert models.offline_model_dir() == final
    assert built == [final]
    # a marker for another GGUF (or an older cache format) is not good either
    (final / models.COMPLETE_MARKER).write_text(json.dumps({"format": models.OFFLINE_CACHE_FORMAT, "source_sha256": "0" * 64}))
    models.offline_model_dir()
    assert len(built) == 2
    (final / models.COMPLETE_MARKER).write_text(
        json.dumps({"format": models.OFFLINE_CACHE_FORMAT, "source_sha256": models.OFFLINE_GGUF_SHA256})
    )
    models.offline_model_dir()
    assert len(built) == 2  # complete: used as it is


def test_failed_build_leaves_no_folder(tmp_path, monkeypatch):
    """A build whose GGUF fails the pinned digest stops with the clear error and leaves
    neither the final folder nor its temporary build folder behind."""
    monkeypatch.setenv("TRAJECTORY_CACHE", str(tmp_path / "cache"))
    chunks, _ = _fake_chunks(tmp_path)
    monkeypatch.setattr(models, "locate_offline_chunks", lambda: chunks)
    with pytest.raises(RuntimeError, match=r"has 3362 bytes, expected 253113024; chunks from fake-part1.*trajectory\[offline\].*force-reinstall"):
        models.offline_model_dir()
    left = _leftovers(tmp_path / "cache" / "models")
    assert [name for name in left if not name.endswith(".lock")] == []


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
        models.load_model("gpt2", device="cpu")
    msg = str(info.value)
    assert "'gpt2'" in msg and "HF_HUB_OFFLINE" in msg
    assert type(info.value.__cause__).__name__ in msg  # names the underlying error class
    assert "HF_TOKEN" in msg and "--preset offline" in msg


def test_not_a_model_name():
    with pytest.raises(RuntimeError, match=r"'no-such-model-xyz' is neither a preset.*local model folder"):
        models.load_model("no-such-model-xyz", device="cpu")


def test_local_folder_errors(tmp_path):
    with pytest.raises(RuntimeError, match="no config.json"):
        models.load_model(str(tmp_path), device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "_name_or_path": "/somewhere/mine"}))
    with pytest.raises(RuntimeError, match="pass tl_name="):
        models.load_model(str(tmp_path), device="cpu")


def test_corrupt_weights_in_folder_give_clear_error(tmp_path):
    from transformers import GPT2Config

    cfg = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10, n_positions=16, bos_token_id=0, eos_token_id=0)
    cfg.to_json_file(tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not safetensors")
    with pytest.raises(RuntimeError, match=r"could not read the model in .*SafetensorError.*delete the folder"):
        models.load_model(str(tmp_path), device="cpu", tl_name="gpt2")


def test_local_folder_tl_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "GPT2"}))
    assert models._folder_tl_name(tmp_path) == "gpt2"  # aliases resolve to the official name
    (tmp_path / models.COMPLETE_MARKER).write_text(json.dumps({"tl_name": "google/gemma-3-270m"}))
    assert models._folder_tl_name(tmp_path) == "google/gemma-3-270m"  # our own marker wins


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


def test_linear_layout_avoids_the_copy_and_changes_no_value():
    import torch

    from trajectory.model.load import use_linear_layout
    from trajectory.testing import tiny_model

    fast = tiny_model()  # tiny_model applies use_linear_layout, as load_model does
    plain = tiny_model()
    for block in plain.blocks:  # back to TransformerLens's own layout
        for name in ("W_gate", "W_in", "W_out"):
            w = getattr(block.mlp, name)
            w.data = w.data.contiguous()
    for block in fast.blocks:
        for name in ("W_gate", "W_in", "W_out"):
            w = getattr(block.mlp, name)
            assert w.T.is_contiguous() and w.T.contiguous().data_ptr() == w.data_ptr()  # no copy
    tokens = fast.to_tokens("the dark room and the door")
    with torch.no_grad():
        assert torch.equal(fast(tokens), plain(tokens))  # bit-identical
    assert use_linear_layout(plain) is plain
    with torch.no_grad():
        assert torch.equal(plain(tokens), fast(tokens))
    assert plain.blocks[0].mlp.W_in.shape == (plain.cfg.d_model, plain.cfg.d_mlp)
    from trajectory.testing import tiny_gpt2_model

    gpt2 = use_linear_layout(tiny_gpt2_model())  # no gated MLP: left as TransformerLens stores it
    assert all(block.mlp.W_in.is_contiguous() and block.mlp.W_out.is_contiguous() for block in gpt2.blocks)


# ------------------------------------------------------------------ the real offline model

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it naps in the afternoon sun."


@pytest.mark.integration
def test_offline_config(offline_model):
    cfg = offline_model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head) == (18, 640, 4, 1, 256)
    assert cfg.d_vocab == 262144 and cfg.dtype == __import__("torch").float32
    assert all(hasattr(block, "ln1_post") for block in offline_model.blocks)
    assert "blocks.5.ln1_post.hook_scale" in offline_model.hook_dict
    assert models._folder_tl_name(models.offline_model_dir()) == models.OFFLINE_TL_NAME


@pytest.mark.integration
def test_offline_model_matches_transformers(offline_model):
    """TransformerLens logits equal those of the transformers model read from the same
    cached folder (independent implementation of the forward pass); same tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = models.offline_model_dir()
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

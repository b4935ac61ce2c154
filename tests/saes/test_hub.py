"""Hub presets without network: a local Hugging Face cache in the real repository layout.

sae-lens maps ``gemma-scope-2b-pt-res-canonical`` / ``layer_{L}/width_16k/canonical`` to
repository ``google/gemma-scope-2b-pt-res`` and a path like
``layer_0/width_16k/average_l0_105/params.npz`` (read from its pretrained_saes.yaml
below, not hard-coded). Its Gemma 2 loader takes d_in (2304) and d_sae (16384) from the
repository and folder names, not from the file, and refuses other shapes; so the
``params.npz`` files here have the real shapes, with a few hundred non-zero features and
deflate compression keeping each file small on disk (~300 MB in memory while loading).
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

RELEASE = "gemma-scope-2b-pt-res-canonical"
D_IN, D_SAE, N_LIVE = 2304, 16384, 96
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _release_entry(sae_id):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    rel = get_pretrained_saes_directory()[RELEASE]
    return rel.repo_id, rel.saes_map[sae_id], rel.neuronpedia_id.get(sae_id)


def _params(layer):
    """Gemma Scope conventions: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold."""
    g = np.random.default_rng(layer)
    W_enc = np.zeros((D_IN, D_SAE), dtype=np.float32)
    W_dec = np.zeros((D_SAE, D_IN), dtype=np.float32)
    live = g.choice(D_SAE, N_LIVE, replace=False)
    W_enc[:, live] = g.normal(size=(D_IN, N_LIVE)).astype(np.float32) / np.sqrt(D_IN)
    W_dec[live] = g.normal(size=(N_LIVE, D_IN)).astype(np.float32)
    return dict(
        W_enc=W_enc, W_dec=W_dec,
        b_enc=g.uniform(-0.3, 0.05, D_SAE).astype(np.float32),
        b_dec=g.normal(size=D_IN).astype(np.float32) * 0.01,
        threshold=g.uniform(0.1, 0.5, D_SAE).astype(np.float32),
    )


def _savez_fast(path, arrays):
    """``np.savez_compressed`` at zlib level 1 (an npz is a zip of .npy files; np.load reads it)."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """``models--google--gemma-scope-2b-pt-res/{blobs,refs/main,snapshots/<commit>/<path>/params.npz}``."""
    root = tmp_path_factory.mktemp("hf") / "hub"
    params = {}
    for layer in (0, 1):
        repo_id, path, _ = _release_entry(f"layer_{layer}/width_16k/canonical")
        repo = root / ("models--" + repo_id.replace("/", "--"))
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(COMMIT)
        tmp = repo / "blobs" / "incoming.npz"
        params[layer] = _params(layer)
        _savez_fast(tmp, params[layer])
        blob = repo / "blobs" / hashlib.sha256(tmp.read_bytes()).hexdigest()
        os.replace(tmp, blob)
        target = repo / "snapshots" / COMMIT / path / "params.npz"
        target.parent.mkdir(parents=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
    return root, params


@pytest.fixture
def offline_hub(hub_cache, monkeypatch):
    import huggingface_hub.constants as hc

    root, params = hub_cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    return params


def _reference_encode(p, x):
    pre = x @ torch.from_numpy(p["W_enc"]) + torch.from_numpy(p["b_enc"])
    return torch.relu(pre) * (pre > torch.from_numpy(p["threshold"]))


def test_from_preset_through_sae_lens_from_pretrained(offline_hub, tmp_path):
    from trajectory.saes.bank import SAEBank

    bank = SAEBank.from_preset("gemma-2-2b-res-16k", layers=[0, 1], bank_dir=tmp_path / "none", progress=False)
    assert bank.layers == [0, 1] and bank.preset == "gemma-2-2b-res-16k"
    assert bank.model_name == "google/gemma-2-2b"  # the preset's TransformerLens model
    for layer in (0, 1):
        e = bank.entry(layer)
        _, path, np_id = _release_entry(f"layer_{layer}/width_16k/canonical")
        assert e.source == f"sae-lens:{RELEASE}/layer_{layer}/width_16k/canonical"
        assert e.neuronpedia_id == np_id == f"gemma-2-2b/{layer}-gemmascope-res-16k"
        assert e.hook_name == f"blocks.{layer}.hook_resid_post"
        assert (e.d_in, e.d_sae, e.architecture) == (D_IN, D_SAE, "jumprelu")
        x = torch.randn(6, D_IN, generator=torch.Generator().manual_seed(layer))
        ref = _reference_encode(offline_hub[layer], x)
        assert (ref > 0).any()
        torch.testing.assert_close(e.sae.encode(x), ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(e.sae.W_dec, torch.from_numpy(offline_hub[layer]["W_dec"]))


def test_from_release_any_template_and_save_open(offline_hub, tmp_path):
    from trajectory.saes.bank import SAEBank

    bank = SAEBank.from_release(RELEASE, "layer_{layer}/width_16k/canonical", [1], dtype="bfloat16", progress=False)
    assert bank[1].W_enc.dtype == torch.bfloat16
    back = SAEBank.open(bank.save(tmp_path / "bank"))
    assert back.neuronpedia_id(1) == "gemma-2-2b/1-gemmascope-res-16k"
    assert torch.equal(back[1].W_enc, bank[1].W_enc)


def test_missing_from_cache_is_a_clear_error(offline_hub):
    from trajectory.saes.bank import SAEBank

    with pytest.raises(FileNotFoundError, match=r"layer_5/width_16k/canonical is not in the local Hugging Face cache"):
        SAEBank.from_release(RELEASE, "layer_{layer}/width_16k/canonical", [5], progress=False)


def test_preset_memory_refusal_before_download(offline_hub, monkeypatch):
    """65k x 26 layers is refused up front, naming the size and the fixes."""
    import trajectory.saes.memory as sm
    from trajectory.saes.bank import SAEBank

    monkeypatch.setattr(sm, "available_memory_bytes", lambda device="cpu": 16 * 10**9)
    with pytest.raises(sm.BankTooLargeError, match=r"needs 31\.4 GB but only 16\.0 GB.*--dtype bfloat16.*--layers"):
        SAEBank.from_preset("gemma-2-2b-res-65k", bank_dir="/nonexistent", progress=False)


def test_preload_cli_hub_preset(offline_hub, tmp_path, capsys):
    from trajectory.cli import main
    from trajectory.saes.bank_format import read_manifest

    out = tmp_path / "bank"
    assert main(["preload", "--preset", "gemma-2-2b-res-16k", "--layers", "1", "--out", str(out),
                 "--dtype", "bfloat16", "--device", "cpu", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "sae-lens:gemma-scope-2b-pt-res-canonical/layer_1/width_16k/canonical" in text and "bfloat16" in text
    m = read_manifest(out)["layers"]["1"]
    assert m["neuronpedia_id"] == "gemma-2-2b/1-gemmascope-res-16k" and m["tensors"]["W_enc"] == [D_IN, D_SAE]


def test_gemma_scope_2_preset_offline(hub_cache, monkeypatch, tmp_path):
    """gemma-3-270m-res-16k: sae-lens's gemma_3 loader, shapes read from the cached file (no HTTP)."""
    import huggingface_hub.constants as hc
    from safetensors.torch import save_file
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from trajectory.presets import get_preset
    from trajectory.saes.bank import SAEBank

    preset = get_preset("gemma-3-270m-res-16k")
    rel = get_pretrained_saes_directory()[preset.sae_release]
    root = tmp_path / "hub"
    repo = root / ("models--" + rel.repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    g = torch.Generator().manual_seed(0)
    d_in, d_sae = 640, 96  # this loader takes the shapes from the file, so they can be small
    w = {
        "w_enc": torch.randn(d_in, d_sae, generator=g) / 25, "w_dec": torch.randn(d_sae, d_in, generator=g),
        "b_enc": torch.randn(d_sae, generator=g) * 0.1, "b_dec": torch.randn(d_in, generator=g) * 0.1,
        "threshold": torch.rand(d_sae, generator=g) * 0.5,
    }
    target = repo / "snapshots" / COMMIT / rel.saes_map[preset.sae_id(2)] / "params.safetensors"
    target.parent.mkdir(parents=True)
    save_file(w, str(target))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)

    bank = SAEBank.from_preset(preset.name, layers=[2], bank_dir=tmp_path / "none", progress=False)
    e = bank.entry(2)
    assert (e.d_in, e.d_sae, e.hook_name) == (d_in, d_sae, "blocks.2.hook_resid_post")
    # sae-lens's directory names no Neuronpedia SAE for l0_small: none is made up
    assert e.neuronpedia_id is None
    x = torch.randn(5, d_in, generator=g)
    pre = x @ w["w_enc"] + w["b_enc"]
    ref = torch.relu(pre) * (pre > w["threshold"])
    assert (ref > 0).any()
    torch.testing.assert_close(e.sae.encode(x), ref, rtol=1e-5, atol=1e-5)

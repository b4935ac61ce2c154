"""Adapters: each format is written here by hand and must encode like a reference computed here."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from trajectory.saes.formats import check_sae_fits, detect_format, load_sae
from trajectory.testing import random_sae

D_IN, D_SAE = 16, 40


def _rng(seed=0):
    return torch.Generator().manual_seed(seed)


def _x(n=12, seed=1):
    return torch.randn(n, D_IN, generator=_rng(seed)) * 2


def _weights(seed=0):
    g = _rng(seed)
    return dict(
        W_enc=torch.randn(D_IN, D_SAE, generator=g) / 2,
        W_dec=torch.randn(D_SAE, D_IN, generator=g) / 2,
        b_enc=torch.randn(D_SAE, generator=g) * 0.3,
        b_dec=torch.randn(D_IN, generator=g) * 0.3,
        threshold=torch.rand(D_SAE, generator=g) * 0.8,
    )


def _assert_active_equal(got, ref):
    assert (ref > 0).any() and (ref == 0).any(), "reference must be sparse but not empty"
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- Gemma Scope npz


def test_gemma_scope_npz(tmp_path):
    w = _weights()
    folder = tmp_path / "layer_3" / "width_16k" / "average_l0_50"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in w.items()})
    assert detect_format(folder) == "gemma-scope-npz"
    sae = load_sae(folder, hook_name="blocks.3.hook_resid_post")
    assert type(sae).__name__ == "JumpReLUSAE" and sae.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    x = _x()
    pre = x @ w["W_enc"] + w["b_enc"]
    ref = torch.where(pre > w["threshold"], torch.relu(pre), torch.zeros_like(pre))
    _assert_active_equal(sae.encode(x), ref)
    torch.testing.assert_close(sae.decode(ref), ref @ w["W_dec"] + w["b_dec"])
    # the file itself works too, and dtype is honoured
    assert load_sae(folder / "params.npz", dtype="bfloat16").W_enc.dtype == torch.bfloat16


def test_npz_dimension_mismatch(tmp_path):
    w = {k: v.numpy() for k, v in _weights().items()}
    w["W_dec"] = w["W_dec"][:, :-1]
    np.savez(tmp_path / "params.npz", **w)
    with pytest.raises(ValueError, match=r"W_dec has shape \(40, 15\).*d_in=16, d_sae=40.*\[40, 16\]"):
        load_sae(tmp_path / "params.npz")


# --------------------------------------------------------------------------- dictionary_learning


def _dl_state(seed=0, **extra):
    g = _rng(seed)
    sd = {
        "encoder.weight": torch.randn(D_SAE, D_IN, generator=g) / 2,  # [d_sae, d_in]
        "encoder.bias": torch.randn(D_SAE, generator=g) * 0.3,
        "decoder.weight": torch.randn(D_IN, D_SAE, generator=g) / 2,  # [d_in, d_sae]
        "b_dec": torch.randn(D_IN, generator=g) * 0.3,
    }
    sd.update(extra)
    return sd


def _write_dl(folder, sd, dict_class):
    folder.mkdir(parents=True)
    torch.save(sd, folder / "ae.pt")
    if dict_class:
        trainer = {"dict_class": dict_class, "activation_dim": D_IN, "dict_size": D_SAE}
        if "k" in sd:
            trainer["k"] = int(sd["k"])
        (folder / "config.json").write_text(json.dumps({"trainer": trainer}))
    return folder


def _dl_post_relu(sd, x):
    return torch.relu((x - sd["b_dec"]) @ sd["encoder.weight"].T + sd["encoder.bias"])


def test_dictionary_learning_topk(tmp_path):
    sd = _dl_state(k=torch.tensor(6, dtype=torch.int), threshold=torch.tensor(0.2))
    folder = _write_dl(tmp_path / "trainer_0", sd, "AutoEncoderTopK")
    assert detect_format(folder) == "dictionary-learning"
    sae = load_sae(folder)
    assert type(sae).__name__ == "TopKSAE" and sae.cfg.k == 6
    x = _x()
    post = _dl_post_relu(sd, x)
    top = post.topk(6, dim=-1)
    ref = torch.zeros_like(post).scatter_(-1, top.indices, top.values)
    _assert_active_equal(sae.encode(x), ref)
    torch.testing.assert_close(sae.decode(ref), ref @ sd["decoder.weight"].T + sd["b_dec"], rtol=1e-5, atol=1e-5)
    # without config.json a checkpoint with k reads as TopK too
    (folder / "config.json").unlink()
    _assert_active_equal(load_sae(folder / "ae.pt").encode(x), ref)


def test_dictionary_learning_batchtopk_uses_threshold(tmp_path):
    sd = _dl_state(seed=2, k=torch.tensor(6, dtype=torch.int), threshold=torch.tensor(0.9))
    sae = load_sae(_write_dl(tmp_path / "btk", sd, "BatchTopKSAE"))
    assert type(sae).__name__ == "JumpReLUSAE" and sae.cfg.apply_b_dec_to_input
    x = _x()
    post = _dl_post_relu(sd, x)
    ref = post * (post > 0.9)
    _assert_active_equal(sae.encode(x), ref)


def test_dictionary_learning_relu_autoencoder(tmp_path):
    sd = _dl_state(seed=3)
    sd["bias"] = sd.pop("b_dec")
    sae = load_sae(_write_dl(tmp_path / "ae", sd, "AutoEncoder"))
    assert type(sae).__name__ == "StandardSAE"
    x = _x()
    ref = torch.relu((x - sd["bias"]) @ sd["encoder.weight"].T + sd["encoder.bias"])
    _assert_active_equal(sae.encode(x), ref)


def test_dictionary_learning_mismatch(tmp_path):
    sd = _dl_state(k=torch.tensor(4))
    sd["decoder.weight"] = sd["decoder.weight"][:, :-2]
    with pytest.raises(ValueError, match=r"dimension mismatch.*decoder\.weight \(16, 38\)"):
        load_sae(_write_dl(tmp_path / "bad", sd, "AutoEncoderTopK"))


# --------------------------------------------------------------------------- plain state dicts


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_plain_state_dict_jumprelu(tmp_path, suffix):
    w = _weights(seed=4)
    path = tmp_path / f"sae{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(w, str(path))
    else:
        torch.save(w, path)
    assert detect_format(path) == "state-dict"
    sae = load_sae(path, hook_name="blocks.1.hook_resid_post")
    x = _x()
    pre = x @ w["W_enc"] + w["b_enc"]
    _assert_active_equal(sae.encode(x), torch.relu(pre) * (pre > w["threshold"]))


def test_plain_state_dict_relu_and_topk(tmp_path):
    w = _weights(seed=5)
    w.pop("threshold")
    torch.save(w, tmp_path / "relu.pt")
    x = _x()
    pre = x @ w["W_enc"] + w["b_enc"]
    _assert_active_equal(load_sae(tmp_path / "relu.pt").encode(x), torch.relu(pre))
    torch.save({**w, "k": torch.tensor(3)}, tmp_path / "topk.pt")
    top = torch.relu(pre).topk(3, dim=-1)
    ref = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)
    _assert_active_equal(load_sae(tmp_path / "topk.pt").encode(x), ref)


class _Evil:
    def __reduce__(self):  # would run code if unpickled
        return (print, ("unpickled!",))


def test_torch_file_is_never_unpickled(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"W_enc": _Evil()}, fh)
    with pytest.raises(ValueError, match=r"weights_only=True.*never loaded"):
        load_sae(path)
    assert "unpickled!" not in capsys.readouterr().out


def test_sae_lens_folder_and_d_in_check(tmp_path):
    ref = random_sae(D_IN, D_SAE, architecture="topk", k=4, hook_name="blocks.0.hook_resid_post")
    ref.save_model(tmp_path / "sl")
    assert detect_format(tmp_path / "sl") == "sae-lens"
    sae = load_sae(tmp_path / "sl")
    x = _x()
    assert torch.equal(sae.encode(x), ref.encode(x))
    with pytest.raises(ValueError, match="has d_in 16 but 32 was expected"):
        load_sae(tmp_path / "sl", d_in=32)


def test_unknown_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_sae(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a known SAE folder"):
        load_sae(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unknown SAE file type"):
        load_sae(tmp_path / "x.txt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{{{{{")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_sae(tmp_path / "bad.safetensors")


def test_check_sae_fits(tiny_model):
    check_sae_fits(random_sae(32, 8), tiny_model, "blocks.2.hook_resid_post")
    with pytest.raises(ValueError, match=r"has d_in 16 but blocks\.2\.hook_resid_post of tiny-gemma2 has width 32"):
        check_sae_fits(random_sae(16, 8), tiny_model, "blocks.2.hook_resid_post")
    with pytest.raises(ValueError, match="has no hook"):
        check_sae_fits(random_sae(32, 8), tiny_model, "blocks.9.hook_resid_post")
    check_sae_fits(random_sae(64, 8, hook_name="blocks.0.mlp.hook_post"), tiny_model)

"""SAE bank: save -> open round trip, encode vs sae-lens, bad input, memory refusal, model fit."""
from __future__ import annotations

import json

import pytest
import torch

from trajectory.saes.bank import SAEBank
from trajectory.saes.bank_format import CorruptBankError, read_explanations, read_manifest
from trajectory.saes.memory import BankTooLargeError
from trajectory.testing import random_sae


def _mixed_bank():
    """One layer per architecture, with metrics and explanations."""
    saes = {
        0: random_sae(32, 64, architecture="jumprelu", seed=1, hook_name="blocks.0.hook_resid_post"),
        1: random_sae(32, 48, architecture="topk", k=5, seed=2, hook_name="blocks.1.hook_resid_post"),
        2: random_sae(32, 40, architecture="standard", seed=3, hook_name="blocks.2.hook_resid_post"),
    }
    bank = SAEBank.from_saes(
        saes, model_name="tiny-gemma2", preset="tiny", source="memory",
        neuronpedia_ids={0: "tiny-gemma2/0-res", 2: "tiny-gemma2/2-res"},
    )
    bank.metadata = {"note": "test", "n": 3}
    bank.entry(1).metrics = {"l0": 5.0, "explained_variance": 0.83, "dead_fraction": 0.0625}
    bank.entry(1).explanations = {0: "dark room", 7: "flashlight", 47: "Ünïcode \"quoted\" <b>"}
    return bank


@pytest.fixture
def saved(tmp_path):
    bank = _mixed_bank()
    path = bank.save(tmp_path / "bank")
    return bank, path


def test_round_trip_bit_exact(saved):
    bank, path = saved
    back = SAEBank.open(path)
    assert back.layers == bank.layers
    assert (back.model_name, back.preset, back.metadata) == (bank.model_name, bank.preset, bank.metadata)
    for layer in bank.layers:
        a, b = bank.entry(layer), back.entry(layer)
        assert type(b.sae) is type(a.sae)
        sa, sb = a.sae.state_dict(), b.sae.state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), (layer, key)
        ca, cb = a.sae.cfg.to_dict(), b.sae.cfg.to_dict()
        assert ca == cb
        assert (b.hook_name, b.source, b.neuronpedia_id) == (a.hook_name, a.source, a.neuronpedia_id)
        assert b.metrics == a.metrics and b.explanations == a.explanations
        assert (b.d_in, b.d_sae, b.architecture, b.dtype) == (a.d_in, a.d_sae, a.architecture, a.dtype)


def test_encode_equals_sae_lens(saved):
    """The opened bank's SAEs encode exactly like the original sae-lens objects."""
    bank, path = saved
    back = SAEBank.open(path)
    x = torch.randn(20, 32, generator=torch.Generator().manual_seed(0)) * 2
    for layer in bank.layers:
        ref = bank[layer].encode(x)
        got = back[layer].encode(x)
        assert torch.equal(ref, got), layer
        assert (ref > 0).any(), "the reference must have active features for the test to mean anything"
        assert torch.equal(bank[layer].decode(ref), back[layer].decode(got))
    # the topk layer really keeps k=5
    assert int((back[1].encode(x) > 0).sum(-1).max()) == 5


def test_open_dtype_and_layers(saved):
    bank, path = saved
    half = SAEBank.open(path, dtype="bfloat16", layers=[0, 2])
    assert half.layers == [0, 2]
    assert half[0].W_enc.dtype == torch.bfloat16 and half.entry(0).dtype == "bfloat16"
    assert torch.equal(half[0].W_enc, bank[0].W_enc.to(torch.bfloat16))


def test_manifest_readers_need_no_torch(saved):
    _, path = saved
    m = read_manifest(path)
    assert m["format"] == "trajectory-sae-bank" and m["format_version"] == 1
    one = m["layers"]["1"]
    assert one["architecture"] == "topk" and one["d_sae"] == 48 and one["cfg"]["k"] == 5
    assert one["bytes"] == (path / one["file"]).stat().st_size and len(one["sha256"]) == 64
    assert "explanations" not in json.dumps(one["metrics"])  # explanations live in their own file
    assert read_explanations(path, 1)[47] == 'Ünïcode "quoted" <b>'
    assert read_explanations(path, 0) == {}
    with pytest.raises(ValueError, match="layer 9 is not in the SAE bank"):
        read_explanations(path, 9)


def test_missing_bank_says_run_preload(tmp_path):
    with pytest.raises(FileNotFoundError, match="trajectory preload"):
        SAEBank.open(tmp_path / "nothing")


def test_unknown_layer(saved):
    bank, path = saved
    with pytest.raises(ValueError, match=r"layer\(s\) \[7\] are not in the SAE bank"):
        SAEBank.open(path, layers=[0, 7])
    with pytest.raises(KeyError, match="layer 7 is not in this SAE bank"):
        bank.entry(7)


def test_truncated_file(saved):
    _, path = saved
    f = path / "layer_01.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptBankError, match=r"layer_01\.safetensors.*truncated.*--force"):
        SAEBank.open(path)
    # the other layers still open
    assert SAEBank.open(path, layers=[0, 2]).layers == [0, 2]


def test_corrupt_file_same_size(saved):
    _, path = saved
    f = path / "layer_00.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside the weights
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptBankError, match=r"layer_00\.safetensors fails its sha256.*--force"):
        SAEBank.open(path)


def test_corrupt_header(saved):
    _, path = saved
    f = path / "layer_02.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"\x00garbage!!\xff\xfe"
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptBankError, match=r"layer_02\.safetensors.*(header|cannot be read)"):
        SAEBank.open(path, verify="size")


def test_corrupt_manifest(saved):
    _, path = saved
    (path / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CorruptBankError, match="manifest.json is not valid JSON"):
        SAEBank.open(path)


def test_manifest_cfg_disagreeing_with_tensors(saved):
    """A cfg.d_in that does not fit the tensors names the layer, the file, both shapes and the fix."""
    _, path = saved
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    manifest["layers"]["1"]["cfg"]["d_in"] = 16  # the file holds d_in 32 (b_dec [32], W_enc [32, 48])
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(CorruptBankError) as info:
        SAEBank.open(path)
    msg = str(info.value)
    for part in ("layer 1", str(path / "layer_01.safetensors"), "b_dec", "[32]", "[16]",
                 "W_enc", "[32, 48]", "[16, 48]", "trajectory preload --preset tiny --force --layers 1"):
        assert part in msg, (part, msg)
    assert SAEBank.open(path, layers=[0, 2]).layers == [0, 2]  # the other layers still open


def test_merge_keeps_layers_the_bank_lacks(saved, tmp_path):
    """``save(merge=True)`` keeps the target's other layers (files, explanations, records); plain ``save`` replaces."""
    bank, path = saved
    before = read_manifest(path)
    new = SAEBank.from_saes({2: random_sae(32, 24, architecture="topk", k=3, seed=9,
                                           hook_name="blocks.2.hook_resid_post"),
                             5: random_sae(32, 16, architecture="standard", seed=8,
                                           hook_name="blocks.5.hook_resid_post")},
                            model_name="tiny-gemma2", preset="tiny")
    new.metadata = {"n": 4, "added": True}
    new.save(path, merge=True)
    after = read_manifest(path)
    assert sorted(map(int, after["layers"])) == [0, 1, 2, 5]
    for layer in ("0", "1"):  # untouched: same bytes, same record
        assert after["layers"][layer] == before["layers"][layer]
    assert after["layers"]["2"]["d_sae"] == 24 and after["metadata"] == {"note": "test", "n": 4, "added": True}
    back = SAEBank.open(path, verify="sha256")
    for layer, src in ((0, bank), (1, bank), (2, new), (5, new)):
        assert torch.equal(back[layer].W_dec, src[layer].W_dec), layer
    assert back.entry(1).explanations == bank.entry(1).explanations  # carried with its layer
    new.save(path)
    assert sorted(map(int, read_manifest(path)["layers"])) == [2, 5]


def test_merge_refuses_another_models_bank(saved):
    _, path = saved
    other = SAEBank.from_saes({5: random_sae(32, 16, architecture="standard", seed=8)}, model_name="gpt2")
    with pytest.raises(ValueError, match=r"tiny-gemma2.*gpt2.*without merge"):
        other.save(path, merge=True)
    assert sorted(map(int, read_manifest(path)["layers"])) == [0, 1, 2]


def test_save_is_atomic(tmp_path, monkeypatch):
    """A crash while saving leaves the old bank intact and no half-written folder."""
    bank = _mixed_bank()
    path = bank.save(tmp_path / "bank")
    before = read_manifest(path)
    import safetensors.torch

    calls = {"n": 0}
    real = safetensors.torch.save_file

    def crash_on_second(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", crash_on_second)
    bank.entry(1).metrics = {"l0": 99.0}
    with pytest.raises(OSError, match="disk full"):
        bank.save(path)
    assert read_manifest(path)["layers"] == before["layers"]
    # no temporary folders left; the lock file of concurrent saves stays
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bank.lock", "bank"]
    # a crash on a fresh target leaves nothing that opens as a bank
    calls["n"] = 0
    with pytest.raises(OSError):
        bank.save(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_memory_refusal(saved, monkeypatch):
    bank, path = saved
    import trajectory.saes.memory as sm

    need = sum(t.numel() * 4 for layer in bank.layers for t in bank[layer].state_dict().values())

    monkeypatch.setattr(sm, "available_memory_bytes", lambda device="cpu": 10_000)
    with pytest.raises(BankTooLargeError) as err:
        SAEBank.open(path)
    msg = str(err.value)
    assert f"needs {need / 1000:.1f} kB" in msg and "only 10.0 kB" in msg
    assert "--dtype bfloat16" in msg and "--layers" in msg
    # bfloat16 halves it and then fits
    monkeypatch.setattr(sm, "available_memory_bytes", lambda device="cpu": need // 2 + 100)
    assert SAEBank.open(path, dtype="bfloat16").layers == [0, 1, 2]


def test_check_model(tiny_model, tiny_bank):
    tiny_bank.check_model(tiny_model)  # fits
    wide = SAEBank.from_saes({1: random_sae(48, 64)}, model_name="other")
    with pytest.raises(ValueError, match=r"SAE of layer 1 has d_in 48 but blocks\.1\.hook_resid_post of tiny-gemma2 has width 32: this bank was made for another model"):
        wide.check_model(tiny_model)
    deep = SAEBank.from_saes({5: random_sae(32, 64)})
    with pytest.raises(ValueError, match="layer 5 but tiny-gemma2 has layers 0-2"):
        deep.check_model(tiny_model)
    odd = SAEBank.from_saes({0: random_sae(32, 64)}, hook_template="blocks.{layer}.hook_nonexistent")
    with pytest.raises(ValueError, match="does not have"):
        odd.check_model(tiny_model)
    mlp = SAEBank.from_saes({0: random_sae(32, 64)}, hook_template="blocks.{layer}.mlp.hook_post")
    with pytest.raises(ValueError, match="width 64"):
        mlp.check_model(tiny_model)


def test_from_folder_of_sae_lens_folders(tmp_path, saved):
    bank, _ = saved
    for layer in bank.layers:
        bank[layer].save_model(tmp_path / "saes" / f"layer_{layer}")
    back = SAEBank.from_folder(tmp_path / "saes")
    assert back.layers == [0, 1, 2]
    x = torch.randn(4, 32)
    for layer in bank.layers:
        assert back.hook_name(layer) == f"blocks.{layer}.hook_resid_post"
        assert torch.equal(back[layer].encode(x), bank[layer].encode(x))
    with pytest.raises(ValueError, match=r"layer\(s\) \[5\] have no SAE"):
        SAEBank.from_folder(tmp_path / "saes", layers=[0, 5])
    with pytest.raises(ValueError, match="no SAEs found"):
        SAEBank.from_folder(tmp_path)


def test_from_npz(tmp_path):
    import numpy as np

    g = np.random.default_rng(0)
    paths = {}
    for layer in (0, 2):
        p = tmp_path / f"layer_{layer}" / "params.npz"
        p.parent.mkdir()
        np.savez(p, W_enc=g.normal(size=(32, 64)).astype("f4"), W_dec=g.normal(size=(64, 32)).astype("f4"),
                 b_enc=g.normal(size=64).astype("f4"), b_dec=g.normal(size=32).astype("f4"),
                 threshold=g.uniform(0, 1, size=64).astype("f4"))
        paths[layer] = p
    bank = SAEBank.from_npz(paths, model_name="tiny-gemma2")
    assert bank.layers == [0, 2] and bank.entry(2).architecture == "jumprelu"
    assert bank.hook_name(2) == "blocks.2.hook_resid_post" and bank.entry(2).source.startswith("npz:")


def test_offline_preset_without_bank_says_preload(tmp_path):
    with pytest.raises(FileNotFoundError, match="trajectory preload --preset offline"):
        SAEBank.from_preset("offline", bank_dir=tmp_path / "none")
    with pytest.raises(ValueError, match="unknown preset"):
        SAEBank.from_preset("nope")
    with pytest.raises(ValueError, match="out of range"):
        SAEBank.from_preset("offline", layers=[40], bank_dir=tmp_path / "none")


def test_from_preset_opens_saved_bank(tmp_path):
    saes = {layer: random_sae(640, 16, seed=layer, hook_name=f"blocks.{layer}.hook_resid_post") for layer in (0, 1)}
    SAEBank.from_saes(saes, model_name="google/gemma-3-270m", preset="offline").save(tmp_path / "b")
    bank = SAEBank.from_preset("offline", layers=[1], bank_dir=tmp_path / "b")
    assert bank.layers == [1] and bank.path == tmp_path / "b"
    with pytest.raises(FileNotFoundError, match="preload"):
        SAEBank.from_preset("offline", layers=[1, 2], bank_dir=tmp_path / "b")

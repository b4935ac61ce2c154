"""explain_features: bank-stored explanations, Neuronpedia presets, offline mode."""
from __future__ import annotations

import json
import logging

import pytest

from trajectory.evolution.result import Evolution
from trajectory.explanations import NeuronpediaClient, explain_features
from trajectory.saes.bank_format import BANK_FORMAT, BANK_FORMAT_VERSION, MANIFEST

from tests.explanations.test_neuronpedia import FakeNeuronpedia, feature_json


def make_evo(preset: str | None, layers=(0, 1)) -> Evolution:
    # prompt of 2 tokens: one prefix (n=2) with 4 steps per layer
    lists = {(2, layer): [([1, 2], [2.0, 1.0])] * 4 for layer in layers}
    return Evolution.from_lists(["<bos>", "cat"], lists, k=4, preset=preset, model_name="m")


def write_bank(folder, layers: dict[int, dict[int, str] | None], neuronpedia: dict[int, str] | None = None):
    """A bank folder with only what explanations need: manifest + explanation files."""
    folder.mkdir(parents=True)
    (folder / "explanations").mkdir()
    entries = {}
    for layer, expl in layers.items():
        file = None
        if expl:
            file = f"explanations/layer_{layer:02d}.json"
            (folder / file).write_text(json.dumps({str(k): v for k, v in expl.items()}))
        entries[str(layer)] = {"explanations": file, "neuronpedia_id": (neuronpedia or {}).get(layer)}
    (folder / MANIFEST).write_text(
        json.dumps({"format": BANK_FORMAT, "version": BANK_FORMAT_VERSION, "model_name": "m", "preset": "offline", "layers": entries})
    )
    return folder


@pytest.fixture
def server():
    s = FakeNeuronpedia()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("TRAJECTORY_OFFLINE", raising=False)
    monkeypatch.delenv("NEURONPEDIA_API_KEY", raising=False)


def test_bank_explanations_for_local_saes(tmp_path):
    bank = write_bank(tmp_path / "bank", {0: {1: "cats", 7: "<script>x</script>"}, 1: None})
    evo = make_evo("offline")
    got = explain_features(evo, [(0, 1), (0, 7), (0, 2), (1, 1), (5, 3)], bank_path=bank, progress=False)
    # missing feature, layer without explanations and layer not in the bank: simply absent
    assert got == {(0, 1): "cats", (0, 7): "<script>x</script>"}


def test_neuronpedia_preset_with_local_server(tmp_path, server):
    evo = make_evo("gemma-2-2b-res-16k")
    server.script["/api/feature/gemma-2-2b/0-gemmascope-res-16k/1"] = [(200, feature_json("layer0 f1"), {}, 0)]
    server.script["/api/feature/gemma-2-2b/1-gemmascope-res-16k/2"] = [(200, feature_json("layer1 f2"), {}, 0)]
    server.script["/api/feature/gemma-2-2b/1-gemmascope-res-16k/3"] = [(500, b"", {}, 0)]
    client = NeuronpediaClient(server.url, cache_dir=tmp_path / "c", max_retries=1, backoff=0.01, timeout=2)
    got = explain_features(evo, [(0, 1), (1, 2), (1, 3), (1, 9)], client=client, bank_path=tmp_path / "nobank", progress=False)
    assert got == {(0, 1): "layer0 f1", (1, 2): "layer1 f2"}  # 500 and 404 are just missing
    n = len(server.requests)
    # offline: the same client answers from its cache only, no request
    got2 = explain_features(evo, [(0, 1), (1, 2), (1, 3)], client=client, offline=True, progress=False)
    assert got2 == {(0, 1): "layer0 f1", (1, 2): "layer1 f2"}
    assert len(server.requests) == n
    # offline with a fresh cache: nothing, and no request
    fresh = NeuronpediaClient(server.url, cache_dir=tmp_path / "fresh")
    assert explain_features(evo, [(0, 1)], client=fresh, offline=True, progress=False) == {}
    assert len(server.requests) == n


def test_bank_manifest_neuronpedia_ids_and_stored_first(tmp_path, server):
    bank = write_bank(tmp_path / "bank", {0: {4: "stored"}, 1: None}, neuronpedia={0: "mm/0-src", 1: "mm/1-src"})
    server.script["/api/feature/mm/0-src/5"] = [(200, feature_json("from np 0"), {}, 0)]
    server.script["/api/feature/mm/1-src/4"] = [(200, feature_json("from np 1"), {}, 0)]
    client = NeuronpediaClient(server.url, cache_dir=tmp_path / "c", max_retries=0)
    got = explain_features(make_evo(None), [(0, 4), (0, 5), (1, 4)], bank_path=bank, client=client, progress=False)
    assert got == {(0, 4): "stored", (0, 5): "from np 0", (1, 4): "from np 1"}
    assert sorted(p for p, _, _ in server.requests) == ["/api/feature/mm/0-src/5", "/api/feature/mm/1-src/4"]


def test_network_down_is_a_warning(tmp_path, caplog):
    evo = make_evo("gemma-2-2b-res-16k")
    client = NeuronpediaClient("http://127.0.0.1:9", cache_dir=tmp_path / "c", max_retries=0, timeout=1)
    with caplog.at_level(logging.WARNING):
        assert explain_features(evo, [(0, 1)], client=client, bank_path=tmp_path / "nobank", progress=False) == {}
    assert "no explanation" in caplog.text


def test_corrupt_bank_is_a_warning(tmp_path, caplog):
    bank = tmp_path / "bank"
    bank.mkdir()
    (bank / MANIFEST).write_text("{broken")
    with caplog.at_level(logging.WARNING):
        assert explain_features(make_evo("offline"), [(0, 1)], bank_path=bank, progress=False) == {}
    assert "cannot read the SAE bank" in caplog.text


def test_no_torch_import():
    import subprocess
    import sys

    code = "import sys, trajectory.explanations; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)

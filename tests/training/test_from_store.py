"""SAEs on any activation store (``train --activations``), the store's writer API, bad
stores, and the RAM budget: a memory-mapped run equals the in-RAM one bit for bit."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

import trajectory.training.train as train_module
from tests.training.conftest import CTX
from trajectory.training.config import TrainConfig
from trajectory.training.corpus import load_corpus, tokenize_chunks
from trajectory.training.from_store import heldout_start, train_on_store
from trajectory.training.store import ActivationStore, collect_activations, create_store

HOOKS = ["blocks.0.hook_mlp_out", "blocks.2.hook_mlp_out"]
CONFIG = TrainConfig(d_sae=64, k=8, batch_size=128, n_heldout_tokens=300, epochs=10.0, max_epochs=10.0, seed=5)


@pytest.fixture(scope="module")
def mlp_store(tiny_model, corpus_file, tmp_path_factory):
    """``(store, chunks)``: hook_mlp_out of layers 0 and 2 on 60 chunks."""
    chunks = tokenize_chunks(tiny_model, load_corpus(corpus_file)[1], CTX)[:60]
    store = collect_activations(tiny_model, chunks, tmp_path_factory.mktemp("store") / "mlp", layers=[0, 2],
                                hook_template="blocks.{layer}.hook_mlp_out", progress=False)
    return store, chunks


def test_train_on_store_metrics_and_saved_folders(mlp_store, tiny_model, tmp_path):
    from sae_lens import SAE

    store, chunks = mlp_store
    out = tmp_path / "sae"
    result = train_on_store(store.folder, CONFIG, out)
    cut = heldout_start(store, CONFIG.n_heldout_tokens)
    # at least n_heldout_tokens rows (at most a fifth of the store), whole chunks
    assert min(300, store.n_tokens // 5) <= store.n_tokens - cut <= store.n_tokens // 2 and cut % (CTX - 1) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert sorted(doc["saes"]) == HOOKS
    for layer, hook in zip((0, 2), HOOKS):
        _, cache = tiny_model.run_with_cache(chunks, names_filter=hook)
        x = cache[hook][chunks != tiny_model.tokenizer.bos_token_id][cut:]  # the held-out rows, from the model
        sae = result.saes[hook]
        recon = sae(x)
        ev = 1 - ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        m = result.metrics[hook]
        assert m["explained_variance"] == pytest.approx(ev.item(), abs=1e-4) and m["explained_variance"] > 0.5
        assert m["n_train_tokens"] == cut and m["n_heldout_tokens"] == len(x) and m["activations_in_ram"]
        assert doc["saes"][hook]["explained_variance"] == pytest.approx(m["explained_variance"])
        loaded = SAE.load_from_disk(str(out / doc["saes"][hook]["folder"]))
        assert loaded.cfg.metadata.hook_name == hook
        torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=0, atol=0)


def test_small_ram_budget_streams_from_disk_with_equal_results(mlp_store):
    store, _ = mlp_store
    in_ram = train_on_store(store, CONFIG, hooks=HOOKS[1:])
    budget = store.n_tokens * store.width * 4 // 10  # a tenth of one hook's activations
    streamed = train_on_store(store, dataclasses.replace(CONFIG, ram_budget_bytes=budget), hooks=HOOKS[1:])
    a, b = in_ram.metrics[HOOKS[1]], streamed.metrics[HOOKS[1]]
    assert a["activations_in_ram"] and not b["activations_in_ram"]
    assert isinstance(store.load(HOOKS[1], budget), np.memmap) and not isinstance(store.load(HOOKS[1]), np.memmap)
    for name, t in in_ram.saes[HOOKS[1]].state_dict().items():
        assert torch.equal(t, streamed.saes[HOOKS[1]].state_dict()[name]), name
    for key in ("explained_variance", "l0", "dead_fraction"):
        assert a[key] == b[key]


def test_small_ram_budget_in_train_saes(tiny_model, corpus_file, monkeypatch):
    seen = []
    real = train_module.train_sae

    def spy(acts, **kwargs):
        seen.append(type(acts))
        return real(acts, **kwargs)

    monkeypatch.setattr(train_module, "train_sae", spy)
    config = TrainConfig(corpus=str(corpus_file), d_sae=32, k=4, n_train_tokens=1200, n_heldout_tokens=300,
                         context_length=CTX, batch_size=128, loss_chunks=2, max_epochs=1.0, seed=4)
    in_ram = train_module.train_saes(tiny_model, config, layers=[1], progress=False)
    streamed = train_module.train_saes(tiny_model, dataclasses.replace(config, ram_budget_bytes=4096), layers=[1],
                                       progress=False)
    assert seen == [np.ndarray, np.memmap]
    assert torch.equal(in_ram[1].W_enc, streamed[1].W_enc) and torch.equal(in_ram[1].b_dec, streamed[1].b_dec)
    ma, mb = in_ram.entry(1).metrics, streamed.entry(1).metrics
    assert ma["activations_in_ram"] and not mb["activations_in_ram"]
    for key in ("explained_variance", "l0", "dead_fraction", "loss_spliced"):
        assert ma[key] == mb[key]
    assert in_ram.entry(1).explanations == streamed.entry(1).explanations


def test_bad_stores_are_refused_before_writing(mlp_store, tmp_path):
    store, _ = mlp_store
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="has rows of width 32 but the SAE reads d_in=64"):
        train_on_store(store, CONFIG, out, d_in=64)
    with pytest.raises(ValueError, match="not in the activation store"):
        train_on_store(store, CONFIG, out, hooks=["blocks.1.hook_mlp_out"])
    with pytest.raises(ValueError, match=r"k must be less than d_sae \(4 ="):
        train_on_store(store, dataclasses.replace(CONFIG, expansion_factor=0.125), out)
    bad = tmp_path / "bad"
    shutil.copytree(store.folder, bad)
    meta = json.loads((bad / "meta.json").read_text())
    (bad / "meta.json").write_text(json.dumps({**meta, "d_model": 48}))
    with pytest.raises(ValueError, match="does not match the data"):
        train_on_store(bad, CONFIG, out)
    (bad / "meta.json").write_text(json.dumps({**meta, "columns": ["a", "b"]}))
    with pytest.raises(ValueError, match="names 2 columns but rows are 32 wide"):
        ActivationStore.open(bad)
    with pytest.raises(FileNotFoundError, match="not an activation store"):
        train_on_store(tmp_path / "nothing", CONFIG, out)
    assert not out.exists()


def test_writer_api_round_trip_and_incomplete_store(tmp_path):
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(10, 6)).astype(np.float32)
    writer = create_store(tmp_path / "w", ["lora_A"], 10, 6, extra={"kind": "lora", "columns": list("abcdef")})
    writer.write({"lora_A": acts[:4]}, np.arange(4), [[0, i + 1] for i in range(4)])
    writer.write({"lora_A": torch.from_numpy(acts[4:])}, np.arange(4, 10), [[1, i + 1] for i in range(6)])
    store = writer.close()
    again = ActivationStore.open(tmp_path / "w")
    assert again == store and again.columns == list("abcdef") and again.meta["kind"] == "lora"
    assert np.array_equal(np.asarray(again.activations("lora_A")), acts)
    assert np.array_equal(again.tokens, np.arange(10)) and again.index[5].tolist() == [1, 2]

    half = create_store(tmp_path / "h", ["x"], 5, 3)
    with pytest.raises(ValueError, match=r"rows of shape \(2, 4\), expected \(2, 3\)"):
        half.write({"x": np.zeros((2, 4))}, [1, 2], [[0, 1], [0, 2]])
    half.write({"x": np.zeros((2, 3))}, [1, 2], [[0, 1], [0, 2]])
    with pytest.raises(ValueError, match="2 of 5 rows written"):
        half.close()
    with pytest.raises(FileNotFoundError, match="not an activation store"):
        ActivationStore.open(tmp_path / "h")

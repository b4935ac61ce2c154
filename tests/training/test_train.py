"""SAE training: trained SAEs, the bank, its explanations, extra passes under the target.

Every figure is recomputed here from scratch: activations from the model's own hooks,
encodes from the SAE weights, top tokens by brute force.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import trajectory.training.train as train_module
from tests.training.conftest import CTX, hook_acts
from trajectory.training.config import TrainConfig
from trajectory.training.metrics import evaluate_sae
from trajectory.training.train import train_bank, train_sae


def test_bank_entries(trained, corpus_file):
    from sae_lens import TopKSAE

    bank, _ = trained
    assert bank.layers == [0, 1, 2]
    for layer in bank:
        e = bank.entry(layer)
        assert isinstance(e.sae, TopKSAE) and e.d_sae == 64 and e.d_in == 32
        assert e.hook_name == f"blocks.{layer}.hook_resid_post" == e.sae.cfg.metadata.hook_name
        assert e.source == f"trained:{corpus_file.name}"
        assert {"l0", "explained_variance", "dead_fraction", "loss_clean", "loss_spliced", "delta_loss",
                "n_train_tokens", "train_seconds"} <= set(e.metrics)


def test_encode_is_what_sae_lens_computes(trained, tiny_model, tmp_path):
    from sae_lens import SAE

    bank, chunks = trained
    sae = bank[1]
    x = hook_acts(tiny_model, chunks[:4], 1)
    # the formula of a TopK SAE, from its weights
    pre = (x - sae.b_dec * sae.cfg.apply_b_dec_to_input) @ sae.W_enc + sae.b_enc
    vals, idx = pre.topk(sae.cfg.k, dim=-1)
    ref = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    torch.testing.assert_close(sae.encode(x), ref, rtol=1e-5, atol=1e-5)
    # and sae-lens's own loader gives the same SAE back
    sae.save_model(str(tmp_path / "sae"))
    loaded = SAE.load_from_disk(str(tmp_path / "sae"))
    assert type(loaded) is type(sae)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=0, atol=0)


def test_explanations_name_the_top_tokens(trained, tiny_model):
    bank, chunks = trained
    train = chunks[bank.metadata["training"]["train_chunks"]]
    tokens = train[train != tiny_model.tokenizer.bos_token_id]
    layer = 2
    sae = bank[layer]
    f = sae.encode(hook_acts(tiny_model, train, layer))  # [N, d_sae]
    explanations = bank.entry(layer).explanations
    checked = 0
    for feature in range(sae.cfg.d_sae):
        acts = f[:, feature]
        if not (acts > 0).any():
            assert feature not in explanations
            continue
        best: dict[int, float] = {}
        for t, a in zip(tokens.tolist(), acts.tolist()):
            if a > 0 and a > best.get(t, 0.0):
                best[t] = a
        ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        words = " ".join(f"'{tiny_model.tokenizer.decode([t]).strip()}'" for t, _ in ranked)
        # the label starts with the top tokens (context words and a snippet may follow)
        assert explanations[feature].split(" | ")[0] == f"{words} (max {ranked[0][1]:.3g})"
        checked += 1
    assert checked > 20


def test_scaled_inputs_are_folded_and_batchtopk_gives_jumprelu():
    from sae_lens import JumpReLUSAE, TopKSAE

    g = torch.Generator().manual_seed(0)
    # data on a few directions, with a large norm (like Gemma's residual stream)
    basis = torch.randn(16, 24, generator=g)
    codes = torch.rand(4000, 16, generator=g) * (torch.rand(4000, 16, generator=g) < 0.2)
    x = 500.0 * (codes @ basis) + 300.0
    for arch, cls in (("topk", TopKSAE), ("batchtopk", JumpReLUSAE)):
        sae = train_sae(x[:3000], d_sae=32, k=4, architecture=arch, batch_size=256, n_samples=30000, lr=4e-3)
        assert type(sae) is cls
        held = x[3000:]
        recon = sae(held)
        ev = 1 - ((recon - held) ** 2).sum() / ((held - held.mean(0)) ** 2).sum()
        assert ev > 0.8, (arch, ev)
        l0 = (sae.encode(held) != 0).sum(-1).float().mean()
        assert 2 <= l0 <= 8, (arch, l0)


def test_bad_arguments(tiny_model):
    with pytest.raises(ValueError, match="out of range"):
        train_bank(tiny_model, layers=[3], progress=False)
    with pytest.raises(ValueError, match="out of range"):
        train_bank(tiny_model, TrainConfig(), layers=[], progress=False)
    with pytest.raises(ValueError, match="architecture must be one of"):
        train_sae(torch.randn(50, 8), d_sae=16, k=2, architecture="gated")
    with pytest.raises(ValueError, match="k must be in"):
        train_sae(torch.randn(50, 8), d_sae=16, k=32)
    with pytest.raises(ValueError, match="k must be in"):
        train_sae(torch.randn(50, 8), d_sae=16, k=16)


def test_training_metadata_keys(trained):
    """The README and ``trajectory preload`` print these keys of ``metadata["training"]``."""
    bank, chunks = trained
    meta = bank.metadata["training"]
    assert list(meta) == [
        "corpus", "architecture", "d_sae", "k", "context_length", "epochs", "max_epochs", "lr", "batch_size",
        "seed", "store_dtype", "hook", "expansion_factor", "n_train_chunks", "n_heldout_chunks", "n_corpus_chunks", "heldout_chunks",
        "train_chunks", "n_loss_tokens", "collect_seconds", "loss_seconds", "total_seconds", "targets",
        "layers_meeting_targets",
    ]
    assert (meta["d_sae"], meta["k"], meta["context_length"], meta["seed"]) == (64, 4, CTX, 1)
    assert meta["n_loss_tokens"] == 8 * (CTX - 1)
    assert not set(meta["train_chunks"]) & set(meta["heldout_chunks"])
    assert meta["layers_meeting_targets"] == [layer for layer in bank if bank.entry(layer).metrics["meets_targets"]]


def test_layer_under_target_gets_more_passes(tiny_model, corpus_file, monkeypatch):
    """An unreachable explained-variance target: every pass up to max_epochs runs, each one
    with one epoch more, and the bank keeps the SAE (and metrics) of the best pass."""
    runs = []

    def spy(acts, **kwargs):
        sae = real(acts, **kwargs)
        runs.append((kwargs["n_samples"], sae))
        return sae

    real = train_module.train_sae
    monkeypatch.setattr(train_module, "train_sae", spy)
    config = TrainConfig(corpus=str(corpus_file), d_sae=32, k=4, n_train_tokens=1500, n_heldout_tokens=400,
                         context_length=CTX, batch_size=128, loss_chunks=2, seed=3, epochs=1.0, max_epochs=2.5,
                         targets={"explained_variance_min": 1.0})
    bank = train_bank(tiny_model, config, layers=[1], progress=False)
    m = bank.entry(1).metrics
    n = m["n_train_tokens"]
    assert [n_samples for n_samples, _ in runs] == [n, 2 * n]  # 3 epochs would pass max_epochs
    assert m["passes"] == 2
    held = hook_acts(tiny_model, _heldout_chunks(tiny_model, corpus_file, bank), 1)
    evs = [evaluate_sae(sae, held)["explained_variance"] for _, sae in runs]
    assert evs[0] != pytest.approx(evs[1], abs=1e-6)  # the second pass trained a different SAE
    best = max(range(2), key=lambda i: evs[i])
    assert m["epochs"] == best + 1 and m["n_train_samples"] == (best + 1) * n
    assert m["explained_variance"] == pytest.approx(evs[best], abs=1e-4)
    assert torch.equal(bank[1].W_enc, runs[best][1].W_enc)
    assert m["meets_targets"] is False
    assert bank.metadata["training"]["targets"]["explained_variance_min"] == 1.0

    runs.clear()
    once = train_bank(tiny_model, dataclasses.replace(config, max_epochs=1.0), layers=[1], progress=False)
    assert len(runs) == 1 and once.entry(1).metrics["passes"] == 1 and once.entry(1).metrics["epochs"] == 1.0


def test_next_layer_starts_at_the_passes_the_layer_before_needed(tiny_model, corpus_file, monkeypatch):
    """Later layers are harder: a layer starts at the epochs of the SAE kept one layer down."""
    runs = []

    def spy(acts, **kwargs):
        runs.append(kwargs["n_samples"])
        return real(acts, **kwargs)

    real = train_module.train_sae
    monkeypatch.setattr(train_module, "train_sae", spy)
    config = TrainConfig(corpus=str(corpus_file), d_sae=32, k=4, n_train_tokens=1500, n_heldout_tokens=400,
                         context_length=CTX, batch_size=128, loss_chunks=2, seed=3, epochs=1.0, max_epochs=2.0,
                         targets={"explained_variance_min": 1.0})
    bank = train_bank(tiny_model, config, layers=[0, 2], progress=False)
    n = bank.entry(0).metrics["n_train_tokens"]
    kept = bank.entry(0).metrics["epochs"]
    assert runs[:2] == [n, 2 * n]
    assert runs[2:] == ([n, 2 * n] if kept == 1.0 else [2 * n])
    assert bank.entry(2).metrics["passes"] == len(runs) - 2


def _heldout_chunks(model, corpus_file, bank):
    """The held-out chunks ``bank`` was evaluated on."""
    from trajectory.training.corpus import load_corpus, tokenize_chunks

    meta = bank.metadata["training"]
    _, docs = load_corpus(corpus_file)
    chunks = tokenize_chunks(model, docs, meta["context_length"], max_tokens=4 * (1500 + 400))
    assert len(chunks) == meta["n_corpus_chunks"]
    return chunks[meta["heldout_chunks"]]

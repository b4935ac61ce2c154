"""SAE training: activation store, trained SAEs, held-out metrics and explanations.

Every figure the package reports is recomputed here from scratch: activations from
the model's own hooks, encodes from the SAE weights, the spliced loss with
``run_with_hooks`` over a full forward pass, top tokens by brute force.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from trajectory.activation_store import ActivationStore, collect_activations
from trajectory.corpus import load_corpus, tokenize_chunks
from trajectory.testing import CORPUS_SENTENCES
from trajectory.training import train_bank, train_sae

CTX = 24


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """Random sentences over the tiny vocabulary's corpus words (deterministic)."""
    rng = random.Random(0)
    words = " ".join(CORPUS_SENTENCES).split()
    docs = [" ".join(rng.choice(words) for _ in range(120)) for _ in range(40)]
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    path.write_text("\n".join(docs), encoding="utf-8")
    return path


def _hook_acts(model, chunks, layer):
    """resid_post of ``layer`` at non-BOS positions, ``[N, d_model]``, from a full forward pass."""
    hook = f"blocks.{layer}.hook_resid_post"
    _, cache = model.run_with_cache(chunks, names_filter=hook)
    return cache[hook][chunks != model.tokenizer.bos_token_id]


def test_store_equals_model_hooks_bos_excluded(tiny_model, corpus_file, tmp_path):
    _, docs = load_corpus(corpus_file)
    chunks = tokenize_chunks(tiny_model, docs, CTX)[:10]
    store = collect_activations(tiny_model, chunks, tmp_path / "s", layers=[0, 2], dtype="float32",
                                batch_size=3, progress=False)
    again = ActivationStore.open(tmp_path / "s")
    assert again == store and store.n_tokens == 10 * (CTX - 1)
    assert (store.tokens == chunks[:, 1:].reshape(-1).numpy()).all()
    assert (store.index[:, 1] > 0).all()  # position 0 (BOS) never stored
    for layer in (0, 2):
        ref = _hook_acts(tiny_model, chunks, layer)
        got = torch.from_numpy(np.array(store.activations(f"blocks.{layer}.hook_resid_post")))
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    with pytest.raises(KeyError, match="not in this store"):
        store.activations("blocks.1.hook_resid_post")
    half = collect_activations(tiny_model, chunks, tmp_path / "h", layers=[1], dtype="float16", progress=False)
    ref = _hook_acts(tiny_model, chunks, 1)
    got = torch.from_numpy(np.asarray(half.activations("blocks.1.hook_resid_post"), dtype=np.float32))
    torch.testing.assert_close(got, ref, rtol=2e-3, atol=2e-3)


def test_float16_store_refuses_overflow(tmp_path):
    from trajectory.testing import tiny_model as make

    model = make()
    with torch.no_grad():
        model.embed.W_E.mul_(1e6)  # residual far beyond float16's range
    chunks = tokenize_chunks(model, ["the cat sat on the table ."] * 4, 6)
    with pytest.raises(OverflowError, match="dtype='float32'"):
        collect_activations(model, chunks, tmp_path / "o", layers=[0], dtype="float16", progress=False)
    store = collect_activations(model, chunks, tmp_path / "o32", layers=[0], dtype="float32", progress=False)
    assert np.isfinite(np.asarray(store.activations("blocks.0.hook_resid_post"))).all()


@pytest.fixture(scope="module")
def trained(tiny_model, corpus_file):
    bank = train_bank(tiny_model, corpus=str(corpus_file), d_sae=64, k=4, n_train_tokens=3000,
                      n_heldout_tokens=600, context_length=CTX, batch_size=128, loss_chunks=8,
                      progress=False, seed=1)
    _, docs = load_corpus(corpus_file)
    chunks = tokenize_chunks(tiny_model, docs, CTX, max_tokens=4 * (3000 + 600))
    assert len(chunks) == bank.metadata["training"]["n_corpus_chunks"]
    return bank, chunks


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
    x = _hook_acts(tiny_model, chunks[:4], 1)
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


def test_metrics_recomputed_on_heldout(trained, tiny_model):
    bank, chunks = trained
    held = chunks[bank.metadata["training"]["heldout_chunks"]]
    loss_chunks = held[: 8]
    clean = tiny_model(loss_chunks, return_type="loss").item()
    for layer in bank:
        m, sae = bank.entry(layer).metrics, bank[layer]
        x = _hook_acts(tiny_model, held, layer)
        f = sae.encode(x)
        recon = sae.decode(f)
        ev = 1 - ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        assert m["explained_variance"] == pytest.approx(ev.item(), abs=1e-4)
        assert m["l0"] == pytest.approx((f != 0).sum(-1).float().mean().item(), abs=1e-6)
        assert m["dead_fraction"] == pytest.approx((~(f != 0).any(0)).float().mean().item())
        assert m["explained_variance"] > 0.3  # it learned something on RAW activations
        assert m["n_heldout_tokens"] == x.shape[0]

        def splice(resid, hook):
            out = resid.clone()
            keep = loss_chunks != tiny_model.tokenizer.bos_token_id
            out[keep] = sae(resid[keep])
            return out

        spliced = tiny_model.run_with_hooks(
            loss_chunks, return_type="loss", fwd_hooks=[(f"blocks.{layer}.hook_resid_post", splice)]
        ).item()
        assert m["loss_clean"] == pytest.approx(clean, abs=1e-4)
        assert m["loss_spliced"] == pytest.approx(spliced, abs=1e-4)
        assert m["delta_loss"] == pytest.approx(spliced - clean, abs=1e-4)
        assert m["loss_spliced"] != pytest.approx(clean, abs=1e-6)  # the splice changed something


def test_explanations_name_the_top_tokens(trained, tiny_model):
    bank, chunks = trained
    train = chunks[bank.metadata["training"]["train_chunks"]]
    tokens = train[train != tiny_model.tokenizer.bos_token_id]
    layer = 2
    sae = bank[layer]
    f = sae.encode(_hook_acts(tiny_model, train, layer))  # [N, d_sae]
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
        assert explanations[feature] == f"{words} (max {ranked[0][1]:.3g})"
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
    with pytest.raises(ValueError, match="architecture must be one of"):
        train_sae(torch.randn(50, 8), d_sae=16, k=2, architecture="gated")
    with pytest.raises(ValueError, match="k must be in"):
        train_sae(torch.randn(50, 8), d_sae=16, k=32)


@pytest.mark.integration
def test_offline_model_store_matches_hooks_and_skips_huge_bos(offline_model, tmp_path):
    _, docs = load_corpus(None)
    chunks = tokenize_chunks(offline_model, docs[:3], 16)[:2]
    store = collect_activations(offline_model, chunks, tmp_path / "s", layers=[0, 17], progress=False)
    assert store.n_tokens == 2 * 15
    for layer in (0, 17):
        hook = f"blocks.{layer}.hook_resid_post"
        _, cache = offline_model.run_with_cache(chunks, names_filter=hook)
        ref = cache[hook][:, 1:].reshape(-1, offline_model.cfg.d_model)
        got = torch.from_numpy(np.array(store.activations(hook)))
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-3)
        # the BOS residual left out is far larger than any stored one
        assert cache[hook][:, 0].norm(dim=-1).min() > got.norm(dim=-1).max()

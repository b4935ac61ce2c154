"""SAEs at hooks other than the residual stream: ``hook_mlp_out`` and ``attn.hook_z``.

References are computed here from the model's own hooks: held-out activations from
``run_with_cache``, spliced and zero-ablated losses from one full ``run_with_hooks``
pass that replaces the hook's output.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.training.conftest import CTX
from trajectory.training.config import TrainConfig
from trajectory.training.corpus import load_corpus, tokenize_chunks
from trajectory.training.store import collect_activations
from trajectory.training.train import train_saes

MLP = "blocks.{layer}.hook_mlp_out"
Z = "blocks.{layer}.attn.hook_z"


def _config(corpus_file, hook, **kw):
    base = dict(corpus=str(corpus_file), k=4, n_train_tokens=2500, n_heldout_tokens=500, context_length=CTX,
                batch_size=128, loss_chunks=4, seed=2, hook=hook, max_epochs=1.0)
    return TrainConfig(**{**base, **kw})


def _chunks(model, corpus_file, bank):
    meta = bank.metadata["training"]
    _, docs = load_corpus(corpus_file)
    chunks = tokenize_chunks(model, docs, CTX, max_tokens=4 * (2500 + 500))
    assert len(chunks) == meta["n_corpus_chunks"]
    return chunks[meta["heldout_chunks"]]


def _hook_rows(model, chunks, hook):
    """``[N, D]`` activations of ``hook`` at the non-BOS positions, trailing dims flattened."""
    _, cache = model.run_with_cache(chunks, names_filter=hook)
    x = cache[hook][chunks != model.tokenizer.bos_token_id]
    return x.reshape(x.shape[0], -1)


def _reference_losses(model, chunks, hook, sae):
    """(clean, spliced, zero-ablated) CE: the hook's output replaced at non-BOS positions."""
    keep = chunks != model.tokenizer.bos_token_id

    def spliced(act, hook):
        out = act.clone()
        x = act[keep]
        out[keep] = sae(x.reshape(x.shape[0], -1)).reshape(x.shape)
        return out

    def zeroed(act, hook):
        out = act.clone()
        out[keep] = 0.0
        return out

    clean = model(chunks, return_type="loss").item()
    return (clean, model.run_with_hooks(chunks, return_type="loss", fwd_hooks=[(hook, spliced)]).item(),
            model.run_with_hooks(chunks, return_type="loss", fwd_hooks=[(hook, zeroed)]).item())


@pytest.fixture(scope="module")
def mlp_bank(tiny_model, corpus_file):
    return train_saes(tiny_model, _config(corpus_file, MLP, expansion_factor=2.0, k=8, max_epochs=2.0),
                      layers=[0, 2], progress=False)


def test_mlp_out_sae_metrics_and_spliced_loss(mlp_bank, tiny_model, corpus_file):
    held = _chunks(tiny_model, corpus_file, mlp_bank)
    assert mlp_bank.metadata["training"]["hook"] == MLP
    assert mlp_bank.metadata["training"]["d_sae"] == 64 and mlp_bank.metadata["training"]["expansion_factor"] == 2.0
    for layer in (0, 2):
        hook = f"blocks.{layer}.hook_mlp_out"
        e, sae = mlp_bank.entry(layer), mlp_bank[layer]
        assert e.hook_name == hook == sae.cfg.metadata.hook_name and (e.d_in, e.d_sae) == (32, 64)
        x = _hook_rows(tiny_model, held, hook)
        recon = sae(x)
        ev = 1 - ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        m = e.metrics
        assert m["explained_variance"] == pytest.approx(ev.item(), abs=1e-4)
        assert m["explained_variance"] > 0.6, m  # a sane SAE of the MLP output (L0 8 of 32 dims)
        assert m["l0"] == pytest.approx((sae.encode(x) != 0).sum(-1).float().mean().item(), abs=1e-5)
        clean, spliced, zero = _reference_losses(tiny_model, held[:4], hook, sae)
        assert m["loss_clean"] == pytest.approx(clean, abs=1e-5)
        assert m["loss_spliced"] == pytest.approx(spliced, abs=1e-5)
        assert m["loss_zero_ablation"] == pytest.approx(zero, abs=1e-5)
        assert m["loss_spliced"] != pytest.approx(clean, abs=1e-6)
        # zero - clean can be a few thousandths on this random model: the ratio is checked
        # on the losses reported (each checked above), not on ones off by float rounding
        zero_, spliced_, clean_ = m["loss_zero_ablation"], m["loss_spliced"], m["loss_clean"]
        assert m["loss_recovered"] == pytest.approx((zero_ - spliced_) / (zero_ - clean_), rel=1e-9)


def test_bank_of_mlp_saes_saves_and_opens(mlp_bank, tmp_path):
    from trajectory.saes.bank import SAEBank
    from trajectory.saes.bank_format import read_manifest

    mlp_bank.save(tmp_path / "bank")
    manifest = read_manifest(tmp_path / "bank")
    assert [manifest["layers"][x]["hook_name"] for x in ("0", "2")] == ["blocks.0.hook_mlp_out", "blocks.2.hook_mlp_out"]
    again = SAEBank.open(tmp_path / "bank")
    assert again.hook_name(2) == "blocks.2.hook_mlp_out"
    x = torch.randn(5, 32)
    torch.testing.assert_close(again[2].encode(x), mlp_bank[2].encode(x), rtol=0, atol=0)


def test_hook_z_is_stored_flattened_and_spliced_per_head(tiny_model, corpus_file, tmp_path):
    from sae_lens import JumpReLUSAE

    cfg = tiny_model.cfg
    width = cfg.n_heads * cfg.d_head
    chunks = tokenize_chunks(tiny_model, load_corpus(corpus_file)[1], CTX)[:3]
    store = collect_activations(tiny_model, chunks, tmp_path / "z", layers=[1], hook_template=Z, progress=False)
    assert store.width == width
    torch.testing.assert_close(torch.from_numpy(np.array(store.activations("blocks.1.attn.hook_z"))),
                               _hook_rows(tiny_model, chunks, "blocks.1.attn.hook_z"), rtol=0, atol=1e-6)

    config = _config(corpus_file, Z, d_sae=2 * width, architecture="batchtopk", n_train_tokens=1500)
    bank = train_saes(tiny_model, config, layers=[1], progress=False)
    e, sae = bank.entry(1), bank[1]
    assert isinstance(sae, JumpReLUSAE) and e.d_in == width and e.hook_name == "blocks.1.attn.hook_z"
    held = _chunks(tiny_model, corpus_file, bank)
    clean, spliced, zero = _reference_losses(tiny_model, held[:4], "blocks.1.attn.hook_z", sae)
    assert e.metrics["loss_clean"] == pytest.approx(clean, abs=1e-4)
    assert e.metrics["loss_spliced"] == pytest.approx(spliced, abs=1e-4)
    assert e.metrics["loss_zero_ablation"] == pytest.approx(zero, abs=1e-4)


def test_bad_hooks_layers_and_widths_write_nothing(tiny_model, corpus_file, tmp_path):
    with pytest.raises(ValueError, match=r"hook must be one of .*hook_mlp_out"):
        TrainConfig(hook="blocks.{layer}.hook_mlp")
    with pytest.raises(ValueError, match=r"not in the model .*valid choices: .*attn.hook_z"):
        collect_activations(tiny_model, torch.ones(2, 4, dtype=torch.long), tmp_path / "never", layers=[0],
                            hook_template="blocks.{layer}.hook_nonsense", progress=False)
    assert not (tmp_path / "never").exists()
    store_dir = tmp_path / "stores"
    with pytest.raises(ValueError, match="out of range"):
        train_saes(tiny_model, _config(corpus_file, MLP, store_dir=str(store_dir)), layers=[0, 3], progress=False)
    with pytest.raises(ValueError, match=r"k must be less than d_sae \(8 = expansion factor 0.25 x d_in 32\)"):
        train_saes(tiny_model, _config(corpus_file, MLP, expansion_factor=0.25, k=8, store_dir=str(store_dir)),
                   layers=[0], progress=False)
    with pytest.raises(ValueError, match="k must be less than d_sae"):
        TrainConfig(d_sae=16, k=16)
    assert not store_dir.exists()

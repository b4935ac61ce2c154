"""Held-out metrics recomputed from scratch: encodes from the SAE weights, the spliced
loss with ``run_with_hooks`` over a full forward pass."""
from __future__ import annotations

import pytest

from tests.training.conftest import hook_acts
from trajectory.training.metrics import TARGETS, meets_targets


def test_metrics_recomputed_on_heldout(trained, tiny_model):
    bank, chunks = trained
    held = chunks[bank.metadata["training"]["heldout_chunks"]]
    loss_chunks = held[: 8]
    clean = tiny_model(loss_chunks, return_type="loss").item()
    for layer in bank:
        m, sae = bank.entry(layer).metrics, bank[layer]
        x = hook_acts(tiny_model, held, layer)
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
        assert m["meets_targets"] == meets_targets(m)


def test_meets_targets():
    good = {"explained_variance": 0.85, "l0": 64.0, "dead_fraction": 0.05}
    assert meets_targets(good)
    assert not meets_targets({**good, "explained_variance": 0.79})
    assert not meets_targets({**good, "l0": 65.0})
    assert not meets_targets({**good, "dead_fraction": 0.11})
    assert not meets_targets(good, {**TARGETS, "explained_variance_min": 0.9})

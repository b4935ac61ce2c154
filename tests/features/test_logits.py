"""Logit effects of decoder directions, against an independent computation."""
from __future__ import annotations

import pytest

from trajectory.features import logit_effects
from trajectory.testing import random_sae

HOOK = "blocks.1.hook_resid_post"
FEATURES = [0, 3, 7, 20, 41]


@pytest.mark.parametrize("final_norm", ["ignore", "weight"])
def test_logit_effects_equal_independent_computation(tiny_model, final_norm):
    sae = random_sae(32, 64, seed=5, hook_name=HOOK)
    out = logit_effects(tiny_model, sae, FEATURES, k=5, final_norm=final_norm)
    W_U = tiny_model.W_U.detach()
    for f in FEATURES:
        d = sae.W_dec.detach()[f]
        if final_norm == "weight":  # RMSNorm weight, unit scale
            d = d * tiny_model.ln_final.w.detach()
        ref = (d @ W_U).tolist()
        order = sorted(range(len(ref)), key=lambda i: -ref[i])
        top, bottom = out[f]
        assert [v for _, v in top] == pytest.approx([ref[i] for i in order[:5]], rel=1e-5)
        assert [v for _, v in bottom] == pytest.approx([ref[i] for i in order[::-1][:5]], rel=1e-5)
        assert [t for t, _ in top] == [tiny_model.tokenizer.decode([i]) for i in order[:5]]


def test_logit_effects_respect_final_norm_weight(tiny_model):
    sae = random_sae(32, 64, seed=5, hook_name=HOOK)
    a = logit_effects(tiny_model, sae, [0], k=3, final_norm="ignore")[0][0]
    b = logit_effects(tiny_model, sae, [0], k=3, final_norm="weight")[0][0]
    assert [v for _, v in a] != pytest.approx([v for _, v in b])
    with pytest.raises(ValueError, match="final_norm"):
        logit_effects(tiny_model, sae, [0], final_norm="bogus")


def test_decoder_neighbours_equal_brute_force():
    import torch

    from trajectory.features.logits import decoder_neighbours

    sae = random_sae(32, 64, seed=5, hook_name=HOOK)
    with torch.no_grad():
        sae.W_dec[9] = 3.0 * sae.W_dec[41] + 0.01 * sae.W_dec[9]  # a near-duplicate, with another norm
        sae.W_dec[20] = -sae.W_dec[3]  # anti-parallel is not near
    W = sae.W_dec.detach().double()
    got = decoder_neighbours(sae, FEATURES + [9], chunk=2)  # several chunks
    for f, (g, cos) in zip(FEATURES + [9], got):
        ref = [(float(W[f] @ W[o] / (W[f].norm() * W[o].norm())), -o) for o in range(64) if o != f]
        best, neg = max(ref)  # ties: the lower index
        assert (g, cos) == (-neg, pytest.approx(best, abs=1e-5))
    assert got[FEATURES.index(41)][0] == 9 and got[-1][0] == 41 and got[-1][1] > 0.99
    one = random_sae(32, 1, seed=5, hook_name=HOOK)
    assert decoder_neighbours(one, [0]) == [None]

"""Synthetic analysis: a planted feature is recovered; runs are deterministic."""
from __future__ import annotations

import pytest
import torch

from trajectory.features import synthetic
from trajectory.features.real_activations import hook_activations
from trajectory.testing import random_sae

HOOK = "blocks.1.hook_resid_post"
TARGET = "flashlight"


@pytest.fixture(scope="module")
def planted(tiny_model):
    """An SAE whose feature 0 reads the direction of TARGET as seen at layer 1.

    The direction is the mean residual (layer 1, last position) of TARGET minus the mean
    over all tokens, over random contexts. Returns the SAE and the brute-force best
    activation over the vocabulary at the last position (TARGET's, checked here).
    """
    tok = tiny_model.tokenizer
    bos, t = tok.bos_token_id, tok.convert_tokens_to_ids(TARGET)
    special = set(tok.all_special_ids)
    vocab = torch.tensor([i for i in range(tiny_model.cfg.d_vocab) if i not in special])
    g = torch.Generator().manual_seed(0)
    ctx = vocab[torch.randint(len(vocab), (6, 2), generator=g)]
    with torch.no_grad():
        X = torch.stack([
            hook_activations(tiny_model, torch.cat([torch.full((len(vocab), 1), bos), c.expand(len(vocab), -1), vocab[:, None]], 1), HOOK)[:, -1]
            for c in ctx
        ])  # [ctx, V, d_model]
    u = X[:, int((vocab == t).nonzero())].mean(0) - X.mean((0, 1))
    u = u / u.norm()
    scores = (X @ u).mean(0)  # [V]
    assert int(vocab[scores.argmax()]) == t  # precondition: TARGET is the brute-force best token
    sae = random_sae(32, 16, architecture="standard", seed=1, hook_name=HOOK)
    with torch.no_grad():
        sae.W_enc[:, 0] = u
        sae.W_dec[0] = u
        sae.b_enc[0] = 0.0
    return sae


def test_planted_feature_recovers_its_token(tiny_model, planted):
    rep = synthetic(tiny_model, planted, [0], seq_len=3, n_steps=40, restarts=2, seed=0, progress=False)
    s = rep[0]
    best = s.examples[0]
    assert best.tokens[best.peak] == TARGET
    # the reported activation is the SAE's own encode of the projected tokens
    ids = torch.tensor([[tiny_model.tokenizer.bos_token_id] + best.token_ids])
    with torch.no_grad():
        ref = planted.encode(hook_activations(tiny_model, ids, HOOK))[0, 1:, 0]
    assert s.synthetic_activation == pytest.approx(float(ref.max()), rel=1e-5)
    assert best.activations == pytest.approx(ref.tolist(), rel=1e-5, abs=1e-6)
    assert [e.activation for e in s.examples] == sorted([e.activation for e in s.examples], reverse=True)
    assert len(s.examples) == 2 and s.time_s > 0


def test_deterministic_with_seed(tiny_model):
    sae = random_sae(32, 16, seed=2, hook_name=HOOK)
    kw = dict(seq_len=3, n_steps=6, restarts=2, eval_every=3, progress=False)
    a = synthetic(tiny_model, sae, [1], seed=7, **kw)[1]
    b = synthetic(tiny_model, sae, [1], seed=7, **kw)[1]
    assert [e.token_ids for e in a.examples] == [e.token_ids for e in b.examples]
    assert a.synthetic_activation == b.synthetic_activation


def _embedding_path_matches_tokens(model, hook):
    """Feeding W_E[ids] through the hook_embed override equals running the ids themselves
    (so the relaxation lives on the same scale as real tokens, Gemma's sqrt(d_model) included)."""
    ids = torch.tensor([[model.tokenizer.bos_token_id, 5, 9, 12, 7]])
    dummy = torch.full_like(ids, 5)
    with torch.no_grad():
        ref = hook_activations(model, ids, hook)
        via = hook_activations(model, dummy, hook, embed_override=model.W_E[ids])
    torch.testing.assert_close(via, ref, rtol=1e-5, atol=1e-5)


def test_embedding_override_equals_token_forward(tiny_model):
    _embedding_path_matches_tokens(tiny_model, HOOK)


@pytest.mark.integration
def test_offline_model_embedding_path_and_synthetic(offline_model):
    _embedding_path_matches_tokens(offline_model, "blocks.3.hook_resid_post")
    sae = random_sae(offline_model.cfg.d_model, 128, architecture="topk", k=8, seed=0, hook_name="blocks.3.hook_resid_post")
    s = synthetic(offline_model, sae, [0], seq_len=3, n_steps=4, restarts=1, eval_every=2, vocab=range(1000, 3000), progress=False)[0]
    ids = torch.tensor([[offline_model.tokenizer.bos_token_id] + s.examples[0].token_ids])
    with torch.no_grad():
        ref = sae.encode(hook_activations(offline_model, ids, "blocks.3.hook_resid_post"))[0, 1:, 0]
    assert s.synthetic_activation == pytest.approx(float(ref.max()), rel=1e-4, abs=1e-5)


def test_topk_objective_is_the_margin_outside_the_top_k_and_the_preactivation_inside():
    from trajectory.features.synthetic_activations import feature_objective, feature_preactivation

    sae = random_sae(32, 16, architecture="topk", k=4, seed=3)
    x = torch.randn(60, 32, generator=torch.Generator().manual_seed(4)) * 3
    with torch.no_grad():
        acts = sae.encode(x)
        hidden = (sae.process_sae_in(x) @ sae.W_enc + sae.b_enc).tolist()  # the SAE's pre-activations
        for f in range(16):
            got = feature_objective(sae, x, f).tolist()
            for row, h in enumerate(hidden):
                kth = sorted((v for j, v in enumerate(h) if j != f), reverse=True)[3]  # 4th strongest other
                want = h[f] + min(h[f] - max(kth, 0.0), 0.0)
                assert got[row] == pytest.approx(want, rel=1e-5, abs=1e-5)
                if acts[row, f] > 0:  # in the top-k: the objective is the pre-activation itself
                    assert got[row] == pytest.approx(h[f], rel=1e-5, abs=1e-5)
        # threshold SAEs: the pre-activation (the threshold is a constant)
        jr = random_sae(32, 16, architecture="jumprelu", seed=3)
        torch.testing.assert_close(feature_objective(jr, x, 5), feature_preactivation(jr, x, 5))

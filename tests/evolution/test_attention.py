"""Attention contributions sum to the model's own attention output (tiny fixtures:
Gemma-2 style with ln1_post, GQA 4q/2kv, sliding-window layer 1; GPT-2 style with b_O)."""
from __future__ import annotations

import pytest
import torch

from trajectory.evolution.attention import (
    attn_contributions,
    attn_partial_sums,
    forward_activations,
    head_values,
    layer_activations,
)

PROMPT = "the final correct answer : max , mark and smith are in the empty dark room . smith left ."


@pytest.fixture(scope="module")
def gemma_run(tiny_model):
    toks = tiny_model.to_tokens(PROMPT)
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(toks)
    return toks, cache


@pytest.fixture(scope="module")
def gpt2():
    from trajectory.testing import tiny_gpt2_model

    model = tiny_gpt2_model()
    toks = model.to_tokens(PROMPT)
    with torch.no_grad():
        _, cache = model.run_with_cache(toks)
    return model, cache


def _reference_raw(model, cache, L):
    """Σ_h pattern · v · W_O head by head, with an explicit GQA loop (no b_O). [q, k, d]"""
    pattern = cache[f"blocks.{L}.attn.hook_pattern"][0]  # [h, q, k]
    v = cache[f"blocks.{L}.attn.hook_v"][0]  # [k, kv, dh]
    W_O = model.blocks[L].attn.W_O
    n_heads, n_kv = W_O.shape[0], v.shape[1]
    out = 0
    for h in range(n_heads):
        vh = v[:, h // (n_heads // n_kv)]  # [k, dh]
        out = out + pattern[h][:, :, None] * (vh @ W_O[h])[None]
    return out


def test_fixture_has_what_the_method_must_handle(tiny_model, gemma_run):
    _, cache = gemma_run
    assert cache["blocks.0.attn.hook_v"].shape[2] == 2 and tiny_model.cfg.n_heads == 4  # GQA
    # layer 1 is a sliding-window layer: the last query sees only 4 keys
    assert int((cache["blocks.1.attn.hook_pattern"][0, 0, -1] > 0).sum()) == 4
    assert int((cache["blocks.0.attn.hook_pattern"][0, 0, -1] > 0).sum()) == cache["blocks.0.hook_resid_pre"].shape[1]


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_frozen_scale_contributions_sum_to_hook_attn_out(tiny_model, gemma_run, layer):
    _, cache = gemma_run
    c = attn_contributions(tiny_model, cache, layer, postnorm="frozen_scale")
    N = cache["blocks.0.hook_resid_pre"].shape[1]
    assert c.shape == (N, N, tiny_model.cfg.d_model)
    torch.testing.assert_close(c.sum(1), cache[f"blocks.{layer}.hook_attn_out"][0], atol=2e-5, rtol=1e-5)
    # and resid_pre + Σ_k contributions is resid_mid
    torch.testing.assert_close(
        cache[f"blocks.{layer}.hook_resid_pre"][0] + c.sum(1), cache[f"blocks.{layer}.hook_resid_mid"][0], atol=2e-5, rtol=1e-5
    )
    # future keys contribute nothing (causal)
    assert torch.all(c[torch.triu(torch.ones(N, N, dtype=torch.bool), diagonal=1)] == 0)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_raw_contributions_match_head_by_head_reference(tiny_model, gemma_run, layer):
    _, cache = gemma_run
    ours = attn_contributions(tiny_model, cache, layer, postnorm="none", include_bias=False)
    torch.testing.assert_close(ours, _reference_raw(tiny_model, cache, layer), atol=1e-5, rtol=1e-5)
    if layer == 1:  # keys outside the window of 4 contribute exactly nothing
        N = ours.shape[0]
        assert torch.all(ours[N - 1, : N - 4] == 0) and ours[N - 1, N - 4 :].abs().sum() > 0
    one = attn_contributions(tiny_model, cache, layer, postnorm="frozen_scale", query=5)
    torch.testing.assert_close(one, attn_contributions(tiny_model, cache, layer)[5])


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_per_partial_sum_last_equals_attn_out_and_differs_before(tiny_model, gemma_run, layer):
    _, cache = gemma_run
    P = attn_partial_sums(tiny_model, cache, layer, postnorm="per_partial_sum")  # [q, j, d]
    out = cache[f"blocks.{layer}.hook_attn_out"][0]
    N = out.shape[0]
    diag = P[torch.arange(N), torch.arange(N)]
    torch.testing.assert_close(diag, out, atol=2e-5, rtol=1e-5)
    # reference of one partial sum: RMSNorm with its own RMS, by hand
    raw = _reference_raw(tiny_model, cache, layer)[7, :3].sum(0)
    norm = tiny_model.blocks[layer].ln1_post
    expected = raw / (raw.pow(2).mean() + norm.eps).sqrt() * norm.w
    torch.testing.assert_close(P[7, 2], expected, atol=2e-5, rtol=1e-5)
    # frozen-scale partial sums are the cumulative contributions
    F = attn_partial_sums(tiny_model, cache, layer, postnorm="frozen_scale")
    torch.testing.assert_close(F, attn_contributions(tiny_model, cache, layer).cumsum(1), atol=2e-5, rtol=1e-5)
    assert (P - F).abs().max() > 1e-2  # the variants really differ


@pytest.mark.parametrize("layer", [0, 1])
def test_gpt2_contributions_include_b_O(gpt2, layer):
    model, cache = gpt2
    assert model.blocks[layer].attn.b_O.abs().sum() > 0
    c = attn_contributions(model, cache, layer)  # no post-norm: raw + b_O on key 0
    torch.testing.assert_close(c.sum(1), cache[f"blocks.{layer}.hook_attn_out"][0], atol=2e-5, rtol=1e-5)
    P = attn_partial_sums(model, cache, layer)  # identity post-norm, b_O in every partial sum
    raw = _reference_raw(model, cache, layer)
    torch.testing.assert_close(P, raw.cumsum(1) + model.blocks[layer].attn.b_O, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="per_partial_sum is not a per-key split"):
        attn_contributions(model, cache, layer, postnorm="per_partial_sum")


def test_forward_activations_one_pass_matches_cache(tiny_model, gemma_run):
    toks, cache = gemma_run
    acts = forward_activations(tiny_model, toks[0], [0, 2])
    assert sorted(acts) == [0, 2]
    full = layer_activations(cache, tiny_model, 2)
    torch.testing.assert_close(acts[2].resid_post, full.resid_post)
    torch.testing.assert_close(acts[2].pattern, full.pattern)
    assert acts[2].scale.shape == (toks.shape[1],)
    assert head_values(tiny_model, acts[0]).shape == (toks.shape[1], 4, tiny_model.cfg.d_model)


def test_unknown_postnorm_is_refused(tiny_model, gemma_run):
    _, cache = gemma_run
    with pytest.raises(ValueError, match="unknown postnorm"):
        attn_partial_sums(tiny_model, cache, 0, postnorm="layernorm")
    with pytest.raises(ValueError, match="post-attention norm"):
        attn_partial_sums(tiny_model, cache, 0, postnorm="none")

"""The evolution engine against an independent reference (``tests/reference``): one
forward pass per prefix, contributions head by head, the SAE's own ``encode`` on every
step vector, and a plain sort for the top-k among active features."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference.evolution_loops import assert_matches_reference, ref_evolution, ref_topk
from trajectory.evolution.engine import evolve

PROMPT = "the final correct answer : max , mark and smith are in the empty dark room"
K = 12


@pytest.fixture(scope="module")
def reference(tiny_model, tiny_bank):
    return ref_evolution(tiny_model, tiny_bank, PROMPT, K, "per_partial_sum")


# ------------------------------------------------------------- equivalences
@pytest.mark.parametrize("method", ["feature_space", "direct"])
def test_one_pass_equals_separate_passes_per_prefix(tiny_model, tiny_bank, reference, method):
    evo = evolve(tiny_model, tiny_bank, PROMPT, k=K, method=method, batch_size=40, progress=False)
    assert evo.layers == [0, 1, 2] and evo.tokens[0] == "<bos>" and evo.postnorm == "per_partial_sum"
    assert_matches_reference(evo, reference)


def test_frozen_scale_variant_matches_reference(tiny_model, tiny_bank):
    ref = ref_evolution(tiny_model, tiny_bank, "mark gave flashlight to max and smith left", K, "frozen_scale")
    evo = evolve(tiny_model, tiny_bank, "mark gave flashlight to max and smith left", k=K, postnorm="frozen_scale", progress=False)
    assert evo.postnorm == "frozen_scale"
    assert_matches_reference(evo, ref)


@pytest.mark.parametrize("architecture", ["topk", "standard"])
def test_other_architectures_match_reference(tiny_model, architecture):
    from trajectory.testing import tiny_bank

    bank = tiny_bank(tiny_model, architecture=architecture, d_sae=48, k=8)
    prompt = "smith left . mark gave flashlight to"
    evo = evolve(tiny_model, bank, prompt, k=K, progress=False)
    assert_matches_reference(evo, ref_evolution(tiny_model, bank, prompt, K, "per_partial_sum"))


def test_gpt2_style_model_b_O_in_every_partial_sum(tiny_model):
    from trajectory.testing import tiny_bank, tiny_gpt2_model

    model = tiny_gpt2_model()
    bank = tiny_bank(model, d_sae=48)
    prompt = "the cat sat on the table"
    evo = evolve(model, bank, prompt, k=K, progress=False)
    assert evo.postnorm == "none"
    assert_matches_reference(evo, ref_evolution(model, bank, prompt, K, "per_partial_sum"))


def _encode_topk(sae, x, k):
    with torch.no_grad():
        return ref_topk(sae.encode(x[None])[0].float().numpy(), k)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_last_attention_step_is_resid_mid_and_mlp_is_resid_post(tiny_model, tiny_bank, layer):
    evo = evolve(tiny_model, tiny_bank, PROMPT, k=K, layers=[layer], progress=False)
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tiny_model.to_tokens(PROMPT))
    sae = tiny_bank[layer]
    for n in evo.prefix_lengths:
        q = n - 1
        for step, hook in (("last_attention", "hook_resid_mid"), ("mlp", "hook_resid_post"), ("initial", "hook_resid_pre")):
            idx, val, _ = _encode_topk(sae, cache[f"blocks.{layer}.{hook}"][0, q], K)
            got_idx, got_val = evo.topk(n, layer, step)
            np.testing.assert_array_equal(got_idx, idx)
            np.testing.assert_allclose(got_val, val, atol=1e-4)


def test_bf16_bank_runs_and_agrees(tiny_model):
    from trajectory.testing import tiny_bank

    bank32 = tiny_bank(tiny_model)
    bank16 = tiny_bank(tiny_model, dtype="bfloat16")
    assert bank16[0].W_enc.dtype == torch.bfloat16
    fast = evolve(tiny_model, bank16, PROMPT, k=K, progress=False)
    direct = evolve(tiny_model, bank16, PROMPT, k=K, method="direct", progress=False)
    exact = evolve(tiny_model, bank32, PROMPT, k=K, progress=False)
    assert fast.metadata["saes"]["0"]["dtype"] == "bfloat16"
    for other in (direct, exact):  # bf16 rounding moves features at the margins only
        same = total = 0
        for L in fast.layers:
            for n in fast.prefix_lengths:
                for s in range(n + 2):
                    a, b = fast.topk(n, L, s)[0][:3], other.topk(n, L, s)[0][:3]
                    same += len(set(a) & set(b))
                    total += max(len(a), 1)
        assert same / total > 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(tiny_model, tiny_bank):  # pragma: no cover - needs a GPU
    cpu = evolve(tiny_model, tiny_bank, PROMPT, k=K, progress=False)
    gpu = evolve(tiny_model, tiny_bank, PROMPT, k=K, device="cuda", progress=False)
    for L in cpu.layers:
        np.testing.assert_allclose(cpu.rows[L].values, gpu.rows[L].values, atol=1e-4)


def test_fewer_active_than_k_in_evolution(tiny_model, tiny_bank):
    evo = evolve(tiny_model, tiny_bank, "the dark room", k=400, layers=[0], progress=False)
    for n in evo.prefix_lengths:
        for s in range(n + 2):
            idx, val = evo.topk(n, 0, s)
            assert len(idx) == evo.n_active(n, 0, s) < 64
            assert np.all(val > 0) and np.all(np.diff(val) <= 0)


# ------------------------------------------------------------------ bad input
def test_bad_inputs_give_clear_errors(tiny_model, tiny_bank):
    import dataclasses

    from trajectory.saes.bank import SAEBank
    from trajectory.testing import random_sae, tiny_bank as make_bank

    with pytest.raises(ValueError, match="prompt is empty"):
        evolve(tiny_model, tiny_bank, "   ", progress=False)
    with pytest.raises(ValueError, match="at least 2"):
        evolve(tiny_model, tiny_bank, [2], progress=False)
    with pytest.raises(ValueError, match="more than max_tokens=4.*--max-tokens"):
        evolve(tiny_model, tiny_bank, "the final correct answer", max_tokens=4, progress=False)
    with pytest.raises(ValueError, match="model's context of 128"):
        evolve(tiny_model, tiny_bank, [2] + [10] * 140, max_tokens=None, progress=False)
    with pytest.raises(ValueError, match=r"layer\(s\) \[5\] out of range"):
        evolve(tiny_model, tiny_bank, PROMPT, layers=[0, 5], progress=False)
    partial = SAEBank({1: tiny_bank.entry(1)}, model_name="tiny-gemma2")
    with pytest.raises(ValueError, match=r"layer\(s\) \[0\] are not in the SAE bank.*trajectory preload"):
        evolve(tiny_model, partial, PROMPT, layers=[0, 1], progress=False)
    narrow = SAEBank.from_saes({0: random_sae(16, 32)})
    with pytest.raises(ValueError, match=r"d_in[= ]16.*(d_model=32|width 32)"):
        evolve(tiny_model, narrow, PROMPT, progress=False)
    wrong_hook = make_bank(tiny_model, hook_template="blocks.{layer}.hook_attn_out")
    with pytest.raises(ValueError, match="reads 'blocks.0.hook_attn_out'"):
        evolve(tiny_model, wrong_hook, PROMPT, progress=False)
    shifted = SAEBank({1: dataclasses.replace(tiny_bank.entry(0), layer=1)})  # layer 1 reads blocks.0
    with pytest.raises(ValueError, match="SAE of layer 1 reads 'blocks.0.hook_resid_post'"):
        evolve(tiny_model, shifted, PROMPT, progress=False)
    with pytest.raises(ValueError, match="unknown postnorm"):
        evolve(tiny_model, tiny_bank, PROMPT, postnorm="half", progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        evolve(tiny_model, tiny_bank, PROMPT, method="fast", progress=False)


# ------------------------------------------------------------- real model
@pytest.mark.integration
def test_offline_gemma3_one_pass_equals_per_prefix_reference(offline_model):
    """Gemma 3 270M (q/k norms, 1 KV head, sliding windows): same results as the reference."""
    from trajectory.evolution.attention import attn_contributions
    from trajectory.saes.bank import SAEBank
    from trajectory.testing import random_sae

    model = offline_model
    layers = [0, 5]
    bank = SAEBank.from_saes(
        {L: random_sae(model.cfg.d_model, 256, seed=L, hook_name=f"blocks.{L}.hook_resid_post") for L in layers},
        model_name=model.cfg.model_name,
    )
    prompt = "Mark gave the flashlight to"
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(prompt))
    for L in layers:
        c = attn_contributions(model, cache, L, postnorm="frozen_scale")
        torch.testing.assert_close(c.sum(1), cache[f"blocks.{L}.hook_attn_out"][0], atol=1e-3, rtol=1e-4)
    evo = evolve(model, bank, prompt, k=K, layers=layers, progress=False)
    assert_matches_reference(evo, ref_evolution(model, bank, prompt, K, "per_partial_sum"), atol=1e-3)


# ---------------------------------------------------------- benchmark baselines
def test_benchmark_baselines_compute_the_same_evolution(tiny_model, tiny_bank, tmp_path):
    """The benchmark's re-implementation of the original loop ranks the same features
    (its zero-activation tail aside), and the floor encodes every step vector."""
    from benchmarks.evolve import prompt_of_length
    from tests.reference.evolution_loops import _disk_copies, naive_floor, original_loop

    tokens = prompt_of_length(tiny_model, 10)
    evo = evolve(tiny_model, tiny_bank, tokens, k=K, progress=False)
    dirs = _disk_copies(tiny_bank, [0, 1, 2], tmp_path)
    orig = original_loop(tiny_model, dirs, tokens, [0, 1, 2], k=K)
    for (n, L), top in orig.items():
        for s in range(n + 2):
            idx, _ = evo.topk(n, L, s)
            assert set(top[s, : len(idx)].tolist()) == set(idx.tolist())
    assert naive_floor(tiny_model, tiny_bank, tokens, [0, 1, 2]) == 3 * sum(n + 2 for n in range(2, 11))


# ------------------------------------------------------- limits checked before the model runs
def _no_forward(monkeypatch):
    """Make the forward pass fail the test: the checks must come before it."""
    import trajectory.evolution.attention as attention

    def forbidden(*args, **kwargs):
        raise AssertionError("the model ran before the check")

    monkeypatch.setattr(attention, "forward_activations", forbidden)


def test_long_text_prompt_is_counted_in_full_not_truncated(tiny_model, tiny_bank, monkeypatch):
    """TransformerLens cuts text at n_ctx (128 here) unless told not to; the prompt of 140
    words + BOS must be refused with its true length, whatever --max-tokens says."""
    words = " ".join(["room"] * 140)
    assert tiny_model.cfg.n_ctx == 128
    _no_forward(monkeypatch)
    for max_tokens in (None, 128, 100000):
        with pytest.raises(ValueError, match="141 tokens.*context of 128"):
            evolve(tiny_model, tiny_bank, words, max_tokens=max_tokens, progress=False)
    with pytest.raises(ValueError, match="61 tokens.*max_tokens=50"):
        evolve(tiny_model, tiny_bank, " ".join(["room"] * 60), max_tokens=50, progress=False)


def test_work_above_the_bound_is_refused_before_the_model_runs(tiny_model, tiny_bank, monkeypatch):
    from trajectory.evolution.engine import step_rows

    n_tok = len(PROMPT.split()) + 1  # BOS
    per_layer = sum(n + 2 for n in range(2, n_tok + 1))  # every prefix: initial, its keys, mlp
    assert step_rows(n_tok) == per_layer and step_rows(n_tok, 3) == 3 * per_layer
    default = evolve(tiny_model, tiny_bank, PROMPT, k=K, progress=False)
    unbounded = evolve(tiny_model, tiny_bank, PROMPT, k=K, max_rows=None, progress=False)
    exact = evolve(tiny_model, tiny_bank, PROMPT, k=K, max_rows=3 * per_layer, progress=False)
    for other in (unbounded, exact):  # the bound changes nothing below it
        for L in default.layers:
            for f in ("indices", "values", "offsets", "n_active"):
                np.testing.assert_array_equal(getattr(default.rows[L], f), getattr(other.rows[L], f))
    _no_forward(monkeypatch)
    with pytest.raises(ValueError, match=rf"{n_tok} tokens over 3 layer.*{3 * per_layer:,} step rows.*"
                                         rf"max_rows={3 * per_layer - 1:,}.*--layers.*shorter prompt.*--max-rows"):
        evolve(tiny_model, tiny_bank, PROMPT, k=K, max_rows=3 * per_layer - 1, progress=False)
    # the default bound admits the default max_tokens of 128 on a model of 26 layers (Gemma 2 2B)
    from trajectory.evolution.engine import DEFAULT_MAX_ROWS

    assert 26 * sum(n + 2 for n in range(2, 129)) <= DEFAULT_MAX_ROWS
    # and refuses the 8,301-token prompt on 18 layers (Gemma 3 270M)
    assert 18 * sum(n + 2 for n in range(2, 8302)) > DEFAULT_MAX_ROWS


def test_bank_of_another_model_is_refused_unless_allowed(tiny_model, tiny_bank, monkeypatch):
    """Same width, other model name: refused, naming both and the override; allowed on
    request, the result names the model that ran and records the bank's model."""
    from trajectory.saes.bank import SAEBank

    other = SAEBank(tiny_bank.entries, model_name="google/gemma-3-270m")
    with monkeypatch.context() as m:
        _no_forward(m)
        with pytest.raises(ValueError, match="made for 'google/gemma-3-270m'.*model is 'tiny-gemma2'.*"
                                             "--allow-other-model.*allow_other_model=True"):
            evolve(tiny_model, other, PROMPT, k=K, progress=False)
    crossed = evolve(tiny_model, other, PROMPT, k=K, layers=[1], progress=False, allow_other_model=True)
    own = evolve(tiny_model, tiny_bank, PROMPT, k=K, layers=[1], progress=False)
    assert crossed.model_name == own.model_name == "tiny-gemma2"
    assert crossed.metadata["bank_model_name"] == "google/gemma-3-270m" and "bank_model_name" not in own.metadata
    np.testing.assert_array_equal(crossed.rows[1].indices, own.rows[1].indices)
    # other spellings of the same model pass; a bank without a name passes
    for name in ("someorg/Tiny-Gemma2", "TINY-GEMMA2", ""):
        evolve(tiny_model, SAEBank(tiny_bank.entries, model_name=name), PROMPT, k=K, layers=[0], progress=False)


def test_model_key_compares_spellings_of_one_model():
    from trajectory.evolution.engine import model_key

    assert model_key("google/gemma-2-2b") == model_key("gemma-2-2b") == "gemma-2-2b"
    assert model_key("gpt2-small") == model_key("gpt2") == "gpt2"  # a TransformerLens alias
    assert model_key("google/gemma-3-270m") != model_key("gemma-2-2b")
    assert model_key("my-org/My-Model") == "my-model"

"""The fused unembedding + cross-entropy against F.cross_entropy on the model's own logits."""
from __future__ import annotations

import pytest
import torch

from trajectory.training.lm_loss import _decoder_and_head, causal_lm_loss, linear_cross_entropy
from tests.training.test_lora import save_tiny_hf_gemma

peft = pytest.importorskip("peft")


def test_linear_cross_entropy_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, dtype=torch.float64)
    weight = torch.randn(101, 16, generator=g, dtype=torch.float64)
    target = torch.randint(101, (37,), generator=g)
    ref_h = hidden.clone().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(ref_h @ weight.T, target)
    ref.backward()
    h = hidden.float().requires_grad_(True)
    loss = linear_cross_entropy(h, weight.float(), target)
    loss.backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h.grad.double(), ref_h.grad, rtol=1e-5, atol=1e-7)


def test_linear_cross_entropy_stays_float32_under_bfloat16_autocast():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(20, 16, generator=g)
    weight = torch.randn(50, 16, generator=g)
    target = torch.randint(50, (20,), generator=g)
    ref = torch.nn.functional.cross_entropy(hidden @ weight.T, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, target)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)  # bf16 matmuls would be off by ~1e-2


def test_bfloat16_gradient_is_close_and_a_second_backward_is_refused():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(30, 16, generator=g)
    weight = torch.randn(70, 16, generator=g)
    target = torch.randint(70, (30,), generator=g)
    ref_h = hidden.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(ref_h @ weight.T, target).backward()
    h = hidden.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, weight, target)
    loss.backward(retain_graph=True)
    torch.testing.assert_close(h.grad, ref_h.grad, rtol=3e-2, atol=1e-3)  # bfloat16 matmul
    assert not torch.equal(h.grad, ref_h.grad)  # it did run in bfloat16
    with pytest.raises(RuntimeError, match="one backward pass per forward"):
        loss.backward()


def test_causal_lm_loss_equals_the_models_own_loss_and_lora_gradients(tmp_path):
    from transformers import AutoModelForCausalLM

    base_dir = save_tiny_hf_gemma(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = peft.LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    model = peft.get_peft_model(base, cfg)  # random B: the adapter changes the model
    assert _decoder_and_head(model) is not None  # the fused path is the one tested
    ids = torch.randint(3, base.config.vocab_size, (3, 12))
    ids[:, 0] = base.config.bos_token_id
    params = [p for p in model.parameters() if p.requires_grad]

    ref = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    ref_grads = torch.autograd.grad(ref, params)
    loss = causal_lm_loss(model, ids)
    grads = torch.autograd.grad(loss, params)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_soft_capped_heads_use_the_models_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    base_dir = save_tiny_hf_gemma(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).requires_grad_(False)
    assert _decoder_and_head(base) is not None
    base.config.final_logit_softcapping = 3.0  # the fused loss has no soft-cap: must not be used
    assert _decoder_and_head(base) is None
    ids = torch.randint(3, base.config.vocab_size, (2, 9))
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(base(input_ids=ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        torch.testing.assert_close(causal_lm_loss(base, ids), ref)

"""Next-token cross-entropy of a Hugging Face causal LM, with the unembedding fused into the loss.

With Gemma 3's 262k-token vocabulary, ``F.cross_entropy(model(ids).logits, ...)`` spends
more time on the ``[tokens, d_vocab]`` tensors around the logits (slicing copy,
log-softmax, its gradient, zero fills) than on the unembedding matmul itself.
:func:`linear_cross_entropy` computes the same loss and the same gradient with the
hidden states in one matmul into a buffer reused from step to step and an in-place
softmax that is kept for the backward pass (no second matmul). The unembedding weight is frozen (LoRA
fine-tuning never trains it): no gradient is computed for it. The loss's matmul runs
in float32 even under ``torch.autocast``, so the loss keeps float32 precision when the
blocks run in bfloat16; under bfloat16 autocast the gradient's matmul runs in bfloat16,
like the blocks' own.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["causal_lm_loss", "linear_cross_entropy", "release_buffers"]


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T, target)`` (mean), differentiable in ``hidden`` only.

    Args:
        hidden: ``[n, d_model]`` final hidden states (after the final norm).
        weight: ``[d_vocab, d_model]`` the unembedding (``lm_head.weight``); no gradient.
        target: ``[n]`` token ids.

    Returns:
        The mean cross-entropy (float32 scalar).
    """
    return _LinearCrossEntropy.apply(hidden, weight, target)


class _LogitsBuffer:
    """One ``[n, d_vocab]`` float32 buffer reused from step to step: a fresh tensor that
    size per step costs more in page faults than the matmul that fills it. Held from a
    forward pass until its backward pass; a second forward meanwhile gets a new tensor."""

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None
        self.busy = False

    def get(self, n: int, vocab: int, device: torch.device) -> tuple[torch.Tensor, bool]:
        """``(buffer [n, vocab], whether it is the shared one)``."""
        if self.busy:
            return torch.empty(n, vocab, device=device), False
        t = self.tensor
        if t is None or t.shape[0] < n or t.shape[1] != vocab or t.device != device:
            self.tensor = t = torch.empty(n, vocab, device=device)
        return t[:n], True


_BUFFER = _LogitsBuffer()
_BF16: dict[str, Any] = {}


def release_buffers() -> None:
    """Free the reused logits buffer and the bfloat16 copy of the unembedding (hundreds of
    MB for Gemma 3's vocabulary); the next call makes them again."""
    if not _BUFFER.busy:
        _BUFFER.tensor = None
    _BF16.clear()


def _bfloat16_copy(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` in bfloat16, made once per weight tensor (frozen: it does not change)."""
    key = (weight.data_ptr(), weight.shape, weight.device, weight._version)
    if _BF16.get("key") != key:
        _BF16.update(key=key, tensor=weight.detach().to(torch.bfloat16))
    return _BF16["tensor"]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target):  # noqa: ANN001
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            logits, shared = _BUFFER.get(hidden.shape[0], weight.shape[0], hidden.device)
            torch.mm(hidden.float(), weight.float().T, out=logits)  # [n, V]
            picked = logits.gather(1, target[:, None])[:, 0]
            top = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(top).exp_()  # in place: the softmax's numerators, then the softmax
            total = probs.sum(dim=1, keepdim=True)
            nll = total[:, 0].log() + top[:, 0] - picked
        if ctx.needs_input_grad[0]:
            probs.div_(total)
            ctx.save_for_backward(probs, weight, target)
            ctx.hidden_dtype, ctx.shared = hidden.dtype, shared
            # under bfloat16 autocast the gradient's matmul runs in bfloat16 too (the loss stays float32)
            device = hidden.device.type
            ctx.low = (torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16)
            _BUFFER.busy = _BUFFER.busy or shared
        return nll.mean()

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        if getattr(ctx, "done", False):  # the saved softmax was turned into the gradient in place
            raise RuntimeError("linear_cross_entropy supports one backward pass per forward (no retain_graph)")
        ctx.done = True
        probs, weight, target = ctx.saved_tensors
        n = probs.shape[0]
        probs[torch.arange(n, device=probs.device), target] -= 1.0  # d nll / d logits = softmax - onehot
        with torch.autocast(device_type=probs.device.type, enabled=False):
            if ctx.low:
                grad_hidden = (probs.to(torch.bfloat16) @ _bfloat16_copy(weight)).float().mul_(grad / n)
            else:
                grad_hidden = (probs @ weight.float()).mul_(grad / n)
        if ctx.shared:
            _BUFFER.busy = False
        return grad_hidden.to(ctx.hidden_dtype), None, None


def causal_lm_loss(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on ``input_ids`` ``[batch, pos]`` (scalar).

    ``model`` is a ``transformers`` causal LM, or a ``peft`` model around one. When its
    head is a plain bias-free ``nn.Linear`` and it has no final logit soft-cap (Gemma 3,
    Llama, Mistral, ...), the loss goes through :func:`linear_cross_entropy`; otherwise
    through the model's logits and ``F.cross_entropy``. Both give the same number.
    """
    parts = _decoder_and_head(model)
    if parts is None:
        logits = model(input_ids=input_ids).logits  # [batch, pos, vocab]
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())
    decoder, head = parts
    hidden = decoder(input_ids=input_ids).last_hidden_state[:, :-1]  # [batch, pos - 1, d_model]
    return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head.weight, input_ids[:, 1:].reshape(-1))


def _decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """``(decoder, lm_head)`` of a ``*ForCausalLM`` (inside a peft model too), or ``None``
    when the fused loss would not give the model's own loss."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = getattr(base, "model", None), getattr(base, "lm_head", None)
    if decoder is None or type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    if getattr(base.config, "final_logit_softcapping", None) or head.weight.requires_grad:
        return None
    return decoder, head

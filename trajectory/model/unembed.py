"""The final norm and unembedding of a ``HookedTransformer``, for code that runs many passes.

TransformerLens's ``Unembed`` transposes ``W_U`` on every call (for Gemma 3's 262k-token
vocabulary a 670 MB copy), and its ``return_type="loss"`` builds the whole
``[batch, pos, d_vocab]`` log-softmax. :class:`Unembedding` makes the transposed copy
once and computes next-token cross-entropy a block of rows at a time with
``logsumexp`` (the same numbers, less memory traffic). Used by the spliced-loss
evaluation of trained SAEs, the causal edge tests and ``steer``'s generation.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformer_lens import HookedTransformer

__all__ = ["Unembedding"]


class Unembedding:
    """``ln_final`` + ``W_U`` (+ ``b_U``, + the output soft-cap) of ``model``, with
    ``W_U.T`` laid out contiguously once (``[d_vocab, d_model]``, the fastest layout for
    ``F.linear``). Read-only: no gradients.

    Args:
        model: a TransformerLens model. Its weights must not change while this is used.
        rows: rows of logits built at a time by :meth:`next_token_nll` (memory:
            ``rows * d_vocab * 4`` bytes).
    """

    def __init__(self, model: "HookedTransformer", rows: int = 256):
        self.model = model
        self.rows = int(rows)
        self.weight = model.unembed.W_U.detach().T.contiguous()  # [d_vocab, d_model]
        self.bias = model.unembed.b_U.detach()
        self.softcap = model.cfg.output_logits_soft_cap
        self.has_bias = bool(self.bias.any())
        self._buffer: "torch.Tensor | None" = None

    def normalize(self, resid: "torch.Tensor") -> "torch.Tensor":
        """``ln_final`` of ``resid`` ``[..., d_model]`` (the residual after the last block)."""
        import torch

        if self.model.cfg.normalization_type is None:
            return resid
        with torch.no_grad():
            return self.model.ln_final(resid)

    def logits(self, normalized: "torch.Tensor") -> "torch.Tensor":
        """Logits ``[..., d_vocab]`` (float32) of ``normalized`` ``[..., d_model]`` (after ``ln_final``)."""
        import torch

        with torch.no_grad():
            return self._bias_and_cap_(torch.nn.functional.linear(normalized, self.weight)).float()

    def next_token_nll(self, resid: "torch.Tensor", tokens: "torch.Tensor") -> "torch.Tensor":
        """Cross-entropy of each next token: position ``p`` predicts ``tokens[:, p + 1]``.

        Args:
            resid: ``[batch, pos, d_model]`` the residual after the last block (before ``ln_final``).
            tokens: ``[batch, pos]`` the token ids.

        Returns:
            ``[batch, pos - 1]`` float32 negative log-likelihoods; their mean is
            TransformerLens's ``return_type="loss"``.
        """
        import torch

        batch, pos = tokens.shape
        h = self.normalize(resid[:, :-1]).reshape(batch * (pos - 1), -1)  # [rows, d_model]
        target = tokens[:, 1:].reshape(-1, 1).to(h.device)
        out = torch.empty(len(target), dtype=torch.float32, device=h.device)
        with torch.no_grad():
            for start in range(0, len(target), self.rows):
                logits = self._block_logits(h[start:start + self.rows])  # [r, d_vocab], float32
                picked = logits.gather(1, target[start:start + self.rows])[:, 0]
                top = logits.amax(dim=1, keepdim=True)
                lse = logits.sub_(top).exp_().sum(dim=1).log_() + top[:, 0]  # logsumexp, in place
                out[start:start + self.rows] = lse - picked
        return out.reshape(batch, pos - 1)

    def _block_logits(self, normalized: "torch.Tensor") -> "torch.Tensor":
        """Logits of up to ``rows`` rows, written into one buffer kept between calls: a
        fresh ``[rows, d_vocab]`` tensor per call costs more in page faults than the
        matmul that fills it (``rows * d_vocab * 4`` bytes, e.g. 268 MB for Gemma 3)."""
        import torch

        if self.weight.dtype != torch.float32 or normalized.dtype != torch.float32:
            return self.logits(normalized)
        n = normalized.shape[0]
        if self._buffer is None or self._buffer.shape[0] < n or self._buffer.device != normalized.device:
            self._buffer = torch.empty(max(n, self.rows), self.weight.shape[0], device=normalized.device)
        return self._bias_and_cap_(torch.mm(normalized, self.weight.T, out=self._buffer[:n]))

    def _bias_and_cap_(self, logits: "torch.Tensor") -> "torch.Tensor":
        """``b_U`` added and the output soft-cap applied, in place (TransformerLens's order)."""
        if self.has_bias:
            logits.add_(self.bias)
        if self.softcap and self.softcap > 0:
            logits.div_(self.softcap).tanh_().mul_(self.softcap)
        return logits

"""Gated-MLP weights in ``nn.Linear``'s memory layout (a faster CPU forward, same values)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer


def use_linear_layout(model: "HookedTransformer") -> "HookedTransformer":
    """Store gated-MLP weights in ``nn.Linear``'s memory layout, in place; returns ``model``.

    TransformerLens 3.x's gated MLP computes ``F.linear(x, W.T.contiguous())`` for
    ``W_gate``, ``W_in`` and ``W_out`` on every forward, copying three
    ``[d_model, d_mlp]`` matrices per layer (about 40% of a CPU forward of Gemma 3
    270M on 64 tokens). Stored so that ``W.T`` is already contiguous, the copy is a
    no-op; values, shapes and results are unchanged (the same layout is multiplied).
    """
    for block in model.blocks:
        mlp = getattr(block, "mlp", None)
        if getattr(mlp, "W_gate", None) is None:  # plain MLPs use W_in/W_out as stored (addmm)
            continue
        for name in ("W_gate", "W_in", "W_out"):
            weight = getattr(mlp, name, None)
            if weight is not None and weight.dim() == 2 and not weight.T.is_contiguous():
                weight.data = weight.data.T.contiguous().T
    return model

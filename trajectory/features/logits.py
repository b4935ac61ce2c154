"""Logit effects: the tokens an SAE feature's decoder direction promotes and suppresses.

Both analyses report them (:func:`trajectory.features.real` and
:func:`trajectory.features.synthetic`); they depend only on the weights, not on inputs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

FINAL_NORM_MODES = ("weight", "ignore")


def final_norm_direction(model: "HookedTransformer", direction: "torch.Tensor", final_norm: str = "weight") -> "torch.Tensor":
    """Map residual directions ``[..., d_model]`` through the final norm, with unit scale.

    ``final_norm="weight"``: centre (LayerNorm only) and multiply by the final norm's
    elementwise weight, with the normalising scale (1/RMS or 1/std of the whole
    residual) set to 1 — a direction alone has no meaningful norm, and the scale is one
    positive number per position that does not change which tokens rank highest.
    ``"ignore"``: the direction unchanged (plain ``W_dec @ W_U``). The final norm's
    bias and the output soft-cap (monotonic) are left out in both cases.
    """
    if final_norm == "ignore":
        return direction
    if final_norm != "weight":
        raise ValueError(f"final_norm must be 'weight' or 'ignore', got {final_norm!r}")
    ln = getattr(model, "ln_final", None)
    kind = type(ln).__name__ if ln is not None else ""
    d = direction
    if kind.startswith("LayerNorm"):
        d = d - d.mean(dim=-1, keepdim=True)
    w = getattr(ln, "w", None)
    if w is not None:
        d = d * w.to(d.dtype)
    return d


def logit_effects(
    model: "HookedTransformer",
    sae: "SAE",
    features: Sequence[int],
    *,
    k: int = 10,
    final_norm: str = "weight",
) -> dict[int, tuple[list[tuple[str, float]], list[tuple[str, float]]]]:
    """Tokens each feature's decoder direction promotes and suppresses most.

    The effect on the logits is ``norm(W_dec[f]) @ W_U`` (``[d_vocab]``), where ``norm``
    is :func:`final_norm_direction` — by default the final norm's weight applied with
    unit scale (``final_norm="ignore"``: ``W_dec[f] @ W_U``). Only for SAEs whose
    ``d_in`` is ``d_model`` (residual-stream hooks); others get empty lists.

    Returns:
        ``{feature: (top, bottom)}``; ``top`` = ``k`` ``(token, value)`` pairs, largest
        first; ``bottom`` = ``k`` most negative, most negative first.
    """
    import torch

    out: dict[int, tuple[list, list]] = {}
    if int(sae.cfg.d_in) != int(model.cfg.d_model) or not features:
        return {int(f): ([], []) for f in features}
    with torch.no_grad():
        W_U = model.W_U  # [d_model, d_vocab]
        d = sae.W_dec[list(features)].to(W_U.device, W_U.dtype)  # [n, d_model]
        effects = final_norm_direction(model, d, final_norm) @ W_U  # [n, d_vocab]
        k = min(k, effects.shape[-1])
        top_v, top_i = effects.topk(k, dim=-1)
        bot_v, bot_i = (-effects).topk(k, dim=-1)
    decode = token_decoder(model)
    for row, f in enumerate(features):
        out[int(f)] = (
            [(decode(int(i)), float(v)) for v, i in zip(top_v[row], top_i[row])],
            [(decode(int(i)), float(-v)) for v, i in zip(bot_v[row], bot_i[row])],
        )
    return out


def token_decoder(model: "HookedTransformer") -> Callable[[int], str]:
    """Token id -> its string, cached (one ``decode`` per distinct id)."""
    cache: dict[int, str] = {}
    tok = model.tokenizer

    def decode(i: int) -> str:
        s = cache.get(i)
        if s is None:
            s = tok.decode([i]) if tok is not None else str(i)
            cache[i] = s
        return s

    return decode

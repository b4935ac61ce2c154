"""What an SAE feature's decoder direction does, from the weights alone: the tokens it
promotes and suppresses (:func:`logit_effects`, in both analyses) and the other feature
whose direction is closest to it (:func:`decoder_neighbours`, in the real analysis).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Sequence

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
    tv, ti, bv, bi = top_v.tolist(), top_i.tolist(), bot_v.tolist(), bot_i.tolist()  # no per-element tensor access
    for row, f in enumerate(features):
        out[int(f)] = (
            [(decode(i), v) for v, i in zip(tv[row], ti[row])],
            [(decode(i), -v) for v, i in zip(bv[row], bi[row])],
        )
    return out


def decoder_neighbours(sae: "SAE", features: Sequence[int], chunk: int = 256) -> list[tuple[int, float] | None]:
    """For each feature, the other feature whose decoder direction is closest:
    ``(index, cosine)`` with the largest cosine between ``W_dec`` rows (ties: the lower
    index); ``None`` when the SAE has a single feature.

    Shows what a decoder norm cannot when every row has norm 1: how distinct the
    feature's direction is (a cosine near 1 = a near-duplicate feature). Computed
    ``chunk`` features at a time (``[chunk, d_sae]`` cosines in memory).
    """

    if int(sae.cfg.d_sae) < 2:
        return [None for _ in features]
    out: list[tuple[int, float] | None] = []
    for cos in decoder_cosines(sae, features, chunk):
        best = cos.max(dim=-1)  # max returns the first (lowest) index of ties
        out += [(int(i), float(v)) for v, i in zip(best.values.tolist(), best.indices.tolist())]
    return out


def decoder_cosines(sae: "SAE", features: Sequence[int], chunk: int = 256) -> Iterator["torch.Tensor"]:
    """Cosines between the decoder rows of ``features`` and every decoder row, ``chunk``
    features at a time: ``[len(chunk), d_sae]`` tensors, each feature's own entry ``-inf``."""
    import torch

    with torch.no_grad():
        W = sae.W_dec.detach().float()
        W = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [d_sae, d_in], unit rows
        for start in range(0, len(features), chunk):
            rows = torch.tensor([int(f) for f in features[start : start + chunk]], device=W.device)
            cos = W[rows] @ W.T  # [n, d_sae]
            cos[torch.arange(len(rows), device=W.device), rows] = float("-inf")  # not itself
            yield cos


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

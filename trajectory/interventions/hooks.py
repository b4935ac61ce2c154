"""The :func:`steered` context manager: interventions as TransformerLens hooks.

One forward hook per intervened layer, at the bank's hook name (``bank.hook_name(L)``),
added with the model's own ``model.hooks(...)`` and removed on exit — also when the
body raises. Inside the context every forward pass of ``model`` is steered, plain
forwards and forwards with a key-value cache alike.

Positions are absolute token indices. A forward with a key-value cache sees only the
new tokens, so the caller of such a forward sets :attr:`Steering.offset` (the index of
its first token) beforehand; :func:`trajectory.interventions.steering.steer` does.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

from trajectory.interventions.intervention import (
    Intervention,
    check_interventions,
    check_positions,
    position_mask,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from trajectory.saes.bank import SAEBank

log = logging.getLogger(__name__)


@dataclass
class Steering:
    """The state the hooks read, yielded by :func:`steered`.

    Attributes:
        interventions: the validated interventions.
        prompt_length: tokens before the first generated one (``None``: all are prompt,
            so ``"generated"`` interventions act on nothing).
        n_positions: the longest sequence the run will reach, when known up front.
        offset: absolute index of the first token of the next forward pass (0 for a plain
            forward; the next position during cached generation).
    """

    interventions: list[Intervention]
    prompt_length: int | None = None
    n_positions: int | None = None
    offset: int = 0
    hook_names: dict[int, str] = field(default_factory=dict)


@contextlib.contextmanager
def steered(
    model: "HookedTransformer",
    bank: "SAEBank",
    interventions: Sequence[Intervention],
    *,
    prompt_length: int | None = None,
    n_positions: int | None = None,
) -> Iterator[Steering]:
    """Run ``model`` with ``interventions`` applied inside the ``with`` block.

    Args:
        model: a ``HookedTransformer``.
        bank: the SAE bank that defines the latents (``bank[L]``, ``bank.hook_name(L)``).
        interventions: :class:`Intervention` objects (several layers at once allowed).
        prompt_length: tokens of the prompt (for ``"prompt"`` / ``"generated"`` positions).
        n_positions: the sequence length the run will reach; explicit positions beyond it
            are refused up front (otherwise at the first plain forward).

    Yields:
        :class:`Steering` (set its ``offset`` before each cached-generation forward).

    Raises:
        ValueError: bad interventions (see :func:`check_interventions`) or a bank hook
            the model does not have — before any hook is added.

    Example:
        >>> from trajectory.testing import tiny_model, tiny_bank
        >>> model = tiny_model(); bank = tiny_bank(model)
        >>> with steered(model, bank, [Intervention(1, 3, "clamp", 0.0)]):
        ...     logits = model(model.to_tokens("mark gave flashlight to"))
        >>> tuple(logits.shape), sum(len(h.fwd_hooks) for h in model.hook_dict.values())
        ((1, 5, 179), 0)
    """
    state = Steering(check_interventions(interventions, bank, n_positions), prompt_length, n_positions)
    by_layer: dict[int, list[Intervention]] = {}
    for iv in state.interventions:
        by_layer.setdefault(iv.layer, []).append(iv)
    hooks = []
    for layer, ivs in sorted(by_layer.items()):
        name = bank.hook_name(layer)
        if name not in model.hook_dict:
            raise ValueError(f"layer {layer}'s SAE reads {name!r}, a hook {model.cfg.model_name} does not have; "
                             "use a bank made for this model")
        state.hook_names[layer] = name
        hooks.append((name, _layer_hook(bank[layer], ivs, state)))
    if prompt_length is None and any(iv.positions == "generated" for iv in state.interventions):
        log.warning("positions='generated' without prompt_length: those interventions act on nothing")
    with model.hooks(fwd_hooks=hooks):
        yield state


def latents(sae: "SAE", x: "torch.Tensor") -> "torch.Tensor":
    """``sae.encode(x)`` on the SAE's device and dtype, returned as ``x``'s: ``[..., d_sae]``."""
    return sae.encode(x.to(device=sae.W_enc.device, dtype=sae.W_enc.dtype)).to(device=x.device, dtype=x.dtype)


def decoder_row(sae: "SAE", feature: int, like: "torch.Tensor") -> "torch.Tensor":
    """``W_dec[feature]`` (``[d_in]``) on ``like``'s device and dtype."""
    return sae.W_dec[feature].detach().to(device=like.device, dtype=like.dtype)


def _layer_hook(sae: "SAE", ivs: list[Intervention], state: Steering):
    """The hook of one layer: ``x [batch, pos, d_in]`` → ``x + Σ_iv coef · W_dec[f]``."""
    need_latents = any(iv.mode != "add" for iv in ivs)

    def hook(x, hook):
        import torch

        n_pos = int(x.shape[1])
        if state.n_positions is None and state.offset == 0:
            for iv in ivs:  # a plain forward: its length is the sequence
                check_positions(iv, n_pos)
        with torch.no_grad():
            acts = latents(sae, x) if need_latents else None
            delta = torch.zeros_like(x)
            for iv in ivs:
                mask = position_mask(iv, state.offset, n_pos, state.prompt_length).to(x.device)
                if not bool(mask.any()):
                    continue
                row = decoder_row(sae, iv.feature, x)
                if iv.mode == "add":
                    coef = torch.full(x.shape[:2], iv.value, device=x.device, dtype=x.dtype) / row.norm()
                elif iv.mode == "scale":
                    coef = (iv.value - 1.0) * acts[..., iv.feature]
                else:  # clamp, ablate (value 0)
                    coef = iv.value - acts[..., iv.feature]
                delta += (coef * mask)[..., None] * row
        return x + delta

    return hook

"""What to change in the residual stream: :class:`Intervention` on one SAE latent.

An intervention acts on the activation ``x`` (``[pos, d_in]``) that layer L's SAE reads
(the bank's hook, e.g. ``blocks.L.hook_resid_post``), on the latent ``a_f`` of feature
``f`` with decoder row ``W_dec[f]``::

    add     x + value · W_dec[f] / ‖W_dec[f]‖        (a step along the unit direction)
    clamp   x + (value − a_f) · W_dec[f]              (the latent set to value)
    ablate  x − a_f · W_dec[f]                        (clamp to 0)
    scale   x + (value − 1) · a_f · W_dec[f]          (the latent multiplied by value)

Only the feature's share of the SAE's reconstruction changes: the reconstruction error
``x − decode(encode(x))`` is kept, so clamping a feature to its own activation changes
nothing. Several interventions at one layer are computed from the latents of the
unchanged ``x`` and summed.

Positions are absolute token indices of the whole sequence (BOS = 0): ``"all"``,
``"prompt"`` (before the first generated token), ``"generated"``, a list of indices,
or a ``slice``.

Example:
    >>> Intervention.parse("9:77:add:8:generated")
    Intervention(layer=9, feature=77, mode='add', value=8.0, positions='generated')
    >>> Intervention.parse("6:123:ablate").value, Intervention.parse("2:5:scale:2:3-5").positions
    (0.0, slice(3, 6, None))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
    from trajectory.saes.bank import SAEBank

MODES = ("add", "clamp", "ablate", "scale")
NAMED_POSITIONS = ("all", "prompt", "generated")

Positions = Union[str, Sequence[int], slice]


@dataclass(frozen=True)
class Intervention:
    """One change to one SAE latent at one layer (see the module docstring for the modes).

    Attributes:
        layer: the bank layer whose SAE defines the latent.
        feature: latent index, ``0 <= feature < d_sae``.
        mode: ``"add"``, ``"clamp"``, ``"ablate"`` or ``"scale"``.
        value: the step (add), target latent (clamp), factor (scale); ablate takes 0.
        positions: ``"all"``, ``"prompt"``, ``"generated"``, a list of token indices or a slice.
    """

    layer: int
    feature: int
    mode: str = "add"
    value: float = 0.0
    positions: Positions = field(default="all")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown intervention mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.mode == "ablate" and self.value not in (None, 0, 0.0):
            raise ValueError(f"mode 'ablate' sets the latent to 0 and takes no value (got {self.value!r}); "
                             "use mode 'clamp' for another value")
        object.__setattr__(self, "value", 0.0 if self.value is None else float(self.value))
        object.__setattr__(self, "layer", int(self.layer))
        object.__setattr__(self, "feature", int(self.feature))
        object.__setattr__(self, "positions", _checked_positions(self.positions))

    # ------------------------------------------------------------------ files, CLI
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (a slice becomes ``{"start", "stop", "step"}``)."""
        pos = self.positions
        if isinstance(pos, slice):
            pos = {"start": pos.start, "stop": pos.stop, "step": pos.step}
        elif not isinstance(pos, str):
            pos = list(pos)
        return dict(layer=self.layer, feature=self.feature, mode=self.mode, value=self.value, positions=pos)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Intervention":
        pos = d.get("positions", "all")
        if isinstance(pos, dict):
            pos = slice(pos.get("start"), pos.get("stop"), pos.get("step"))
        return cls(layer=d["layer"], feature=d["feature"], mode=d["mode"], value=d.get("value", 0.0), positions=pos)

    @classmethod
    def parse(cls, spec: str) -> "Intervention":
        """``LAYER:FEATURE:MODE[:VALUE[:POSITIONS]]`` (the CLI's ``--intervene``); POSITIONS is
        ``all``, ``prompt``, ``generated``, ``3,5,7``, ``4-9`` (inclusive) or ``4-`` (4 on)."""
        parts = spec.split(":")
        if not 3 <= len(parts) <= 5:
            raise ValueError(f"intervention {spec!r}: write LAYER:FEATURE:MODE[:VALUE[:POSITIONS]], "
                             "e.g. 6:123:clamp:0 or 9:77:add:8:generated")
        try:
            layer, feature = int(parts[0]), int(parts[1])
            value = float(parts[3]) if len(parts) > 3 and parts[3] != "" else None
        except ValueError:
            raise ValueError(f"intervention {spec!r}: LAYER and FEATURE must be integers and VALUE a number, "
                             "e.g. 6:123:clamp:0") from None
        if value is None and parts[2] in ("add", "clamp", "scale"):
            raise ValueError(f"intervention {spec!r}: mode {parts[2]!r} needs a VALUE, e.g. {layer}:{feature}:"
                             f"{parts[2]}:2")
        positions = _parse_positions(parts[4], spec) if len(parts) == 5 else "all"
        return cls(layer, feature, parts[2], value, positions)


def _checked_positions(pos: Positions) -> Positions:
    if isinstance(pos, str):
        if pos not in NAMED_POSITIONS:
            raise ValueError(f"unknown positions {pos!r}; use all, prompt, generated, a list of indices or a slice")
        return pos
    if isinstance(pos, slice):
        for part in (pos.start, pos.stop):
            if part is not None and int(part) < 0:
                raise ValueError(f"positions {pos}: negative indices are ambiguous during generation; "
                                 "use absolute token indices (BOS = 0)")
        if pos.step is not None and int(pos.step) < 1:
            raise ValueError(f"positions {pos}: the step must be a positive integer")
        return pos
    idx = tuple(int(p) for p in pos)
    if not idx:
        raise ValueError("positions is an empty list; pass token indices, a slice or all/prompt/generated")
    if min(idx) < 0:
        raise ValueError(f"positions {list(idx)}: negative indices are ambiguous during generation; "
                         "use absolute token indices (BOS = 0)")
    return idx


def _parse_positions(text: str, spec: str) -> Positions:
    if text in NAMED_POSITIONS:
        return text
    try:
        if "-" in text:
            start, _, stop = text.partition("-")
            return slice(int(start), int(stop) + 1 if stop else None)
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(f"intervention {spec!r}: positions {text!r} must be all, prompt, generated, "
                         "3,5,7, 4-9 or 4-") from None


def check_interventions(
    interventions: Sequence[Intervention], bank: "SAEBank", n_positions: int | None = None
) -> list[Intervention]:
    """Validate ``interventions`` against ``bank`` before any hook is added.

    Raises ``ValueError`` for an empty list, a non-:class:`Intervention`, a layer not in
    the bank, a feature ``>= d_sae``, or — when ``n_positions`` (the sequence length the
    run will reach) is known — an explicit position at or beyond it. Returns the list.
    """
    interventions = list(interventions)
    if not interventions:
        raise ValueError("no interventions given; pass at least one Intervention (--intervene L:F:MODE[:VALUE])")
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise ValueError(f"{iv!r} is not an Intervention; build one with Intervention(layer, feature, mode, value)")
        if iv.layer not in bank.layers:
            raise ValueError(f"{iv}: layer {iv.layer} is not in the SAE bank (it has {list(bank.layers)})")
        d_sae = int(bank[iv.layer].cfg.d_sae)
        if not 0 <= iv.feature < d_sae:
            raise ValueError(f"{iv}: feature {iv.feature} is out of range; layer {iv.layer}'s SAE has "
                             f"{d_sae} features (0-{d_sae - 1})")
        if n_positions is not None:
            check_positions(iv, n_positions)
    return interventions


def check_positions(iv: Intervention, n_positions: int) -> None:
    """Refuse explicit positions (index list, slice start) at or beyond ``n_positions``."""
    pos = iv.positions
    if isinstance(pos, str):
        return
    first_bad = pos.start if isinstance(pos, slice) else max(pos)
    if first_bad is not None and int(first_bad) >= n_positions:
        raise ValueError(f"{iv}: position {first_bad} is beyond the sequence of {n_positions} tokens "
                         f"(positions 0-{n_positions - 1})")


def position_mask(iv: Intervention, offset: int, n_pos: int, prompt_length: int | None):
    """``[n_pos]`` bool tensor: which of the positions ``offset .. offset + n_pos - 1``
    ``iv`` acts on. Without ``prompt_length`` every position counts as prompt."""
    import torch

    absolute = torch.arange(offset, offset + n_pos)
    pos = iv.positions
    if pos == "all":
        return torch.ones(n_pos, dtype=torch.bool)
    if pos in ("prompt", "generated"):
        boundary = prompt_length if prompt_length is not None else offset + n_pos
        return absolute < boundary if pos == "prompt" else absolute >= boundary
    if isinstance(pos, slice):
        start, step = pos.start or 0, pos.step or 1
        inside = absolute >= start
        if pos.stop is not None:
            inside &= absolute < pos.stop
        return inside & ((absolute - start) % step == 0)
    return torch.isin(absolute, torch.tensor(pos, dtype=torch.long))

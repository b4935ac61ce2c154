"""Every setting of local SAE training, in one dataclass: :class:`TrainConfig`.

The defaults were chosen for the offline Gemma 3 270M bank on a 2-core CPU (measured on
the default corpus): d_sae 4096 / k 32 left 25-45% of the features dead in the few
hundred steps this budget allows; 2048 / 64 reaches held-out EV 0.78-0.99 with <10%
dead in one epoch (0.99 at layer 0 falling to 0.78 at layer 17). A second epoch lifts
the late layers (layer 16: 0.792 -> 0.815), so layers under the target get more passes
(``max_epochs``); halving the batch size gained less (0.796), doubling lr lost.

Example:
    >>> from trajectory.training.config import TrainConfig
    >>> TrainConfig(d_sae=128, k=8).to_dict()["d_sae"]
    128
    >>> TrainConfig(d_sae=16, k=32)
    Traceback (most recent call last):
    ...
    ValueError: k must be less than d_sae (16), got 32: lower k or raise d_sae
    >>> TrainConfig(hook="blocks.{layer}.hook_mlp_out", expansion_factor=4, k=8).sae_width(640)
    2560
"""
from __future__ import annotations

import dataclasses
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from trajectory.hooks import RESID_POST_TEMPLATE
from trajectory.io import jsonable

#: SAE architectures :func:`~trajectory.training.sae.train_sae` trains (sae-lens's names).
ARCHITECTURES = ("topk", "batchtopk")
#: Decoder initialisations of :func:`~trajectory.training.sae.train_sae`.
INITS = ("data", "random")
STORE_DTYPES = ("float32", "float16")
#: Hooks SAEs can be trained at (TransformerLens names, ``{layer}`` = the block). ``attn.hook_z``
#: is ``[pos, n_heads, d_head]``; its SAE reads all heads concatenated (``n_heads * d_head``).
HOOK_TEMPLATES = tuple(f"blocks.{{layer}}.{name}" for name in (
    "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "attn.hook_z"))

#: Quality targets of the default offline bank (held-out text), reported in its manifest.
#: A layer under ``explained_variance_min`` after one pass is trained again with more.
TARGETS = {"explained_variance_min": 0.8, "l0_max": 64.0, "dead_fraction_max": 0.10, "total_seconds_max": 900.0}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`~trajectory.training.train.train_saes` (unset fields: the defaults).

    Attributes:
        d_sae: features per SAE (unless ``expansion_factor`` is set).
        k: active features per token (TopK), or on average (BatchTopK); ``k < d_sae``.
        hook: where the SAEs read, a template of :data:`HOOK_TEMPLATES` (default: the
            residual stream after each block, like Gemma Scope).
        expansion_factor: when set, ``d_sae = round(expansion_factor * d_in)`` (``d_in`` the
            hook's width), overriding ``d_sae``.
        architecture: ``"topk"`` (inference class ``TopKSAE``) or ``"batchtopk"``
            (inference class ``JumpReLUSAE``).
        corpus: spec for :func:`trajectory.training.corpus.load_corpus` (``None``: the
            default, download-free corpus).
        context_length: tokens per chunk, BOS included.
        n_train_tokens: non-BOS train tokens collected (or what the corpus has).
        n_heldout_tokens: non-BOS held-out tokens for the metrics.
        epochs: passes over the train tokens per SAE.
        max_epochs: when a layer's held-out explained variance misses
            ``targets["explained_variance_min"]``, it is trained again with one pass more,
            up to this many (the best is kept). Set it to ``epochs`` to train each layer once.
        lr: Adam learning rate (warm-up over the first 5% of steps, linear decay over the last 20%).
        batch_size: samples per step.
        loss_chunks: held-out chunks used for the spliced CE loss (costs forward passes).
        seed: split, init and batch order (the SAE of layer L uses ``seed + L``).
        store_dtype: ``"float32"`` (Gemma 3's residual reaches ~62000, at the edge of
            float16's range) or ``"float16"`` activations on disk.
        store_dir: folder for the activation stores (``None``: a temporary folder, removed
            afterwards; a given folder is kept).
        dead_feature_window: steps without firing after which a feature counts as dead
            for the TopK auxiliary loss that revives it.
        init: ``"data"`` (decoder rows start at directions of training samples) or
            ``"random"`` (sae-lens's own init).
        targets: quality targets (keys of :data:`TARGETS`).
        ram_budget_bytes: one hook's activations up to this size are copied into RAM for
            training; larger ones are read batch by batch from the memory-mapped store
            (same results, more disk reads). ``None``: no limit.
    """

    d_sae: int = 2048
    k: int = 64
    architecture: str = "topk"
    corpus: str | None = None
    context_length: int = 128
    n_train_tokens: int = 100_000
    n_heldout_tokens: int = 8_000
    epochs: float = 1.0
    max_epochs: float = 3.0
    lr: float = 4e-3
    batch_size: int = 1024
    loss_chunks: int = 8
    seed: int = 0
    store_dtype: str = "float32"
    store_dir: str | None = None
    dead_feature_window: int = 10
    init: str = "data"
    targets: Mapping[str, float] = field(default_factory=lambda: dict(TARGETS))
    hook: str = RESID_POST_TEMPLATE
    expansion_factor: float | None = None
    ram_budget_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("d_sae", "k", "context_length", "n_train_tokens", "n_heldout_tokens", "batch_size",
                     "loss_chunks", "dead_feature_window"):
            self._set(name, _positive_int(name, getattr(self, name)))
        if self.context_length < 2:
            raise ValueError(f"context_length must be at least 2 (BOS and one token), got {self.context_length}")
        if self.expansion_factor is None and self.k >= self.d_sae:
            raise ValueError(f"k must be less than d_sae ({self.d_sae}), got {self.k}: lower k or raise d_sae")
        if self.expansion_factor is not None:
            self._set("expansion_factor", _positive_float("expansion_factor", self.expansion_factor))
        if self.ram_budget_bytes is not None:
            self._set("ram_budget_bytes", _positive_int("ram_budget_bytes", self.ram_budget_bytes))
        if self.hook not in HOOK_TEMPLATES:
            raise ValueError(f"hook must be one of {list(HOOK_TEMPLATES)}, got {self.hook!r}")
        _check_choice("architecture", self.architecture, ARCHITECTURES)
        _check_choice("init", self.init, INITS)
        _check_choice("store_dtype", self.store_dtype, STORE_DTYPES)
        for name in ("epochs", "lr"):
            self._set(name, _positive_float(name, getattr(self, name)))
        self._set("max_epochs", _positive_float("max_epochs", self.max_epochs))
        if self.max_epochs < self.epochs:
            raise ValueError(f"max_epochs must be at least epochs ({self.epochs:g}), got {self.max_epochs:g}; "
                             "set it to epochs to train each layer once")
        if not isinstance(self.seed, numbers.Integral) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        self._set("seed", int(self.seed))
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown:
            raise ValueError(f"targets has unknown keys {unknown}; known: {sorted(TARGETS)}")
        # missing targets take the defaults; paths become strings (the manifest is JSON)
        self._set("targets", {**TARGETS, **{key: float(v) for key, v in self.targets.items()}})
        for name in ("corpus", "store_dir"):
            if isinstance(getattr(self, name), os.PathLike):
                self._set(name, os.fspath(getattr(self, name)))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: normalise during __post_init__ only

    def sae_width(self, d_in: int) -> int:
        """``d_sae`` of an SAE reading ``d_in``-wide activations (``expansion_factor * d_in``
        when set); raises ``ValueError`` when ``k`` does not fit under it."""
        d_sae = max(1, round(self.expansion_factor * d_in)) if self.expansion_factor is not None else self.d_sae
        if self.k >= d_sae:
            how = f"expansion factor {self.expansion_factor:g} x d_in {d_in}" if self.expansion_factor else "d_sae"
            raise ValueError(f"k must be less than d_sae ({d_sae} = {how}), got k={self.k}: "
                             "lower k or raise the width (--expansion-factor / --d-sae)")
        return d_sae

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain JSON (for manifests and provenance)."""
        return jsonable(dataclasses.asdict(self))


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _positive_float(name: str, value: Any) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")

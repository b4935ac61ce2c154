"""Settings of the two analyses, as dataclasses with today's defaults.

:func:`trajectory.features.real` takes a :class:`RealConfig`,
:func:`trajectory.features.synthetic` a :class:`SyntheticConfig`; both also accept the
fields as keyword arguments (``real(..., max_examples=5)``), which override the config's.
Bad values fail when the config is made, before any model runs.

Example:
    >>> RealConfig(max_examples=5).batch_size
    16
    >>> SyntheticConfig(n_steps=0)
    Traceback (most recent call last):
    ...
    ValueError: SyntheticConfig.n_steps must be at least 1, got 0
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping, Sequence, TypeVar

from trajectory.features.logits import FINAL_NORM_MODES

C = TypeVar("C", "RealConfig", "SyntheticConfig")
T = TypeVar("T")


@dataclass(frozen=True)
class RealConfig:
    """Settings of :func:`trajectory.features.real`.

    Attributes:
        max_examples: top-activating windows kept per feature.
        batch_size: corpus chunks per forward pass.
        context_length: tokens per chunk, BOS first (at least 2).
        max_tokens: corpus tokens cut into chunks (``None``: the whole corpus).
        window: tokens kept ``(before, after)`` the peak token in each example
            (clipped to the chunk).
        n_logits: promoted / suppressed tokens listed per feature.
        n_bins: at most this many bins in the histogram of non-zero activations: the
            scan counts them in fixed log-spaced bins
            (:data:`trajectory.features.corpus_scan.HIST_EDGES`, 20 per decade from 1e-4;
            smaller or negative values in the first), merged in equal runs to fit.
        final_norm: how logit effects treat the final norm, ``"weight"`` or
            ``"ignore"`` (see :func:`trajectory.features.logits.logit_effects`).
        include_bos: count BOS positions (default: excluded).
    """

    max_examples: int = 20
    batch_size: int = 16
    context_length: int = 128
    max_tokens: int | None = None
    window: tuple[int, int] = (12, 4)
    n_logits: int = 10
    n_bins: int = 40
    final_norm: str = "weight"
    include_bos: bool = False

    def __post_init__(self) -> None:
        _at_least(self, 1, "max_examples", "batch_size", "n_bins")
        _at_least(self, 2, "context_length")
        _at_least(self, 0, "n_logits")
        if self.max_tokens is not None:
            _at_least(self, 1, "max_tokens")
        object.__setattr__(self, "window", _pair(self, "window", int, "integers >= 0", lambda v: v >= 0))
        _check_final_norm(self)
        if not isinstance(self.include_bos, bool):
            raise ValueError(f"RealConfig.include_bos must be True or False, got {self.include_bos!r}")


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of :func:`trajectory.features.synthetic`.

    Attributes:
        seq_len: optimised tokens per sequence (BOS comes in front, not optimised).
        n_steps: Adam steps per feature.
        learning_rate: Adam step size on the logits ``z``.
        restarts: independent random starts, optimised together as one batch.
        seed: makes the run deterministic (feature ``f`` starts from the generator seeded
            with ``seed * 1_000_003 + f``, so a feature's result does not depend on which
            other features are in the run).
        temperature: ``(start, end)`` of the geometric annealing of ``tau`` (both > 0).
        eval_every: project to tokens and measure the real activation this often
            (and after the last step).
        vocab: restrict the search to these token ids (default: all but special tokens).
        n_logits / final_norm: logit effects, as in :class:`RealConfig`.
    """

    seq_len: int = 8
    n_steps: int = 150
    learning_rate: float = 0.1
    restarts: int = 3
    seed: int = 0
    temperature: tuple[float, float] = (2.0, 0.05)
    eval_every: int = 10
    vocab: Sequence[int] | None = None
    n_logits: int = 10
    final_norm: str = "weight"

    def __post_init__(self) -> None:
        _at_least(self, 1, "seq_len", "n_steps", "restarts", "eval_every")
        _at_least(self, 0, "n_logits")
        _integer(self, "seed")
        if not _number(self.learning_rate) > 0:
            raise ValueError(f"SyntheticConfig.learning_rate must be a number > 0, got {self.learning_rate!r}")
        temperature = _pair(self, "temperature", _number, "numbers > 0 (start, end)", lambda v: v > 0)
        object.__setattr__(self, "temperature", temperature)
        if self.vocab is not None:
            # a tuple: a generator given as vocab would be used up by the first reader
            vocab = tuple(int(v) for v in self.vocab)
            if not vocab or min(vocab) < 0:
                raise ValueError("SyntheticConfig.vocab must be non-empty, non-negative token ids (or None: all tokens)")
            object.__setattr__(self, "vocab", vocab)
        _check_final_norm(self)


def make_config(cls: type[C], config: C | None, overrides: Mapping[str, Any]) -> C:
    """``config`` (default ``cls()``) with the fields in ``overrides`` replaced; a
    ``TypeError`` for a name that is not a field, as Python gives for a bad keyword."""
    if config is not None and not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}; the settings are {', '.join(names)}")
    return replace(config or cls(), **overrides)


def _integer(config: Any, name: str) -> int:
    value = getattr(config, name)
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)  # ints and numpy integers, not floats
    except TypeError:
        raise ValueError(f"{type(config).__name__}.{name} must be an integer, got {value!r}") from None


def _number(value: Any) -> float:
    """``float(value)``; NaN for what is not a number, so that every ``> 0`` check fails."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _at_least(config: Any, minimum: int, *names: str) -> None:
    for name in names:
        if _integer(config, name) < minimum:
            raise ValueError(f"{type(config).__name__}.{name} must be at least {minimum}, got {getattr(config, name)}")


def _pair(config: Any, name: str, convert: Callable[[Any], T], what: str, ok: Callable[[T], bool]) -> tuple[T, T]:
    """``getattr(config, name)`` as a tuple of two converted values, each ``ok``; else a clear error."""
    value = getattr(config, name)
    try:
        a, b = (convert(v) for v in value)
    except (TypeError, ValueError):
        a = b = None
    if a is None or not (ok(a) and ok(b)):
        raise ValueError(f"{type(config).__name__}.{name} must be two {what}, got {value!r}")
    return a, b


def _check_final_norm(config: Any) -> None:
    if config.final_norm not in FINAL_NORM_MODES:
        raise ValueError(f"{type(config).__name__}.final_norm must be 'weight' or 'ignore', got {config.final_norm!r}")

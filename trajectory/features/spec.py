"""Feature sets as users write them: ``"0,5,10"``, ``"0-20"``, ``"0-10,50-60"``."""
from __future__ import annotations

from typing import Iterable


class FeatureSpecError(ValueError):
    """A feature spec could not be parsed, or names features the SAE does not have."""


def parse_features(spec: str | int | Iterable[int], d_sae: int | None = None) -> list[int]:
    """Parse a feature spec into sorted, unique feature indices.

    Args:
        spec: ``"0,5,10"``, ``"0-20"`` (inclusive), ``"0-10,50-60"``, a single int,
            or an iterable of ints. Spaces are ignored.
        d_sae: the SAE's width; when given, every index must be below it.

    Returns:
        Sorted unique indices.

    Raises:
        FeatureSpecError: an empty spec, a part that is not ``N`` or ``A-B`` with
            ``A <= B``, a negative index, or an index ``>= d_sae``.

    Examples:
        >>> parse_features("0-3,10")
        [0, 1, 2, 3, 10]
        >>> parse_features("5, 1,5")
        [1, 5]
    """
    hint = "use e.g. 0,5,10 or 0-20 or 0-10,50-60"
    if isinstance(spec, bool):
        raise FeatureSpecError(f"bad feature spec {spec!r}; {hint}")
    if isinstance(spec, int):
        features = {spec}
    elif isinstance(spec, str):
        text = spec.replace(" ", "")
        if not text:
            raise FeatureSpecError(f"empty feature spec; {hint}")
        features = set()
        for part in text.split(","):
            try:
                if "-" in part[1:]:  # a range (a leading '-' would be a negative number)
                    lo_s, hi_s = part.split("-", 1) if not part.startswith("-") else (None, None)
                    if lo_s is None:
                        raise ValueError
                    lo, hi = int(lo_s), int(hi_s)
                    if lo > hi:
                        raise FeatureSpecError(f"bad feature range {part!r} in {spec!r}: start is after end; {hint}")
                    features.update(range(lo, hi + 1))
                else:
                    features.add(int(part))
            except FeatureSpecError:
                raise
            except ValueError:
                raise FeatureSpecError(f"bad feature spec part {part!r} in {spec!r}; {hint}") from None
    else:
        try:
            features = {int(f) for f in spec}
        except (TypeError, ValueError):
            raise FeatureSpecError(f"bad feature list {spec!r}; give integers") from None
        if not features:
            raise FeatureSpecError(f"empty feature list; {hint}")
    negative = sorted(f for f in features if f < 0)
    if negative:
        raise FeatureSpecError(f"feature indices must be >= 0, got {negative[:5]}; {hint}")
    if d_sae is not None:
        too_big = sorted(f for f in features if f >= d_sae)
        if too_big:
            raise FeatureSpecError(
                f"feature(s) {too_big[:5]}{' ...' if len(too_big) > 5 else ''} out of range: "
                f"the SAE has {d_sae} features (0-{d_sae - 1})"
            )
    return sorted(features)

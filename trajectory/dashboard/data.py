"""What a dashboard page shows, as typed objects with a JSON file format.

:class:`LayerDashboard` holds one SAE's feature cards (:class:`FeatureCard`); the page
(:mod:`trajectory.dashboard.page`) embeds exactly this JSON, so anything the page shows
can be read back with :meth:`LayerDashboard.load` and built on.

File format (``<name>.json``, e.g. ``layer_06.json``, UTF-8, written atomically)::

    {"format": "trajectory-feature-dashboard", "format_version": 1,
     "name": "layer_06", "layer": 6 | null, "hook_name": "blocks.6.hook_resid_post",
     "model_name": ..., "sae": {"d_in", "d_sae", "architecture", "source"},
     "corpus": ..., "n_tokens": counted tokens (BOS excluded unless include_bos),
     "settings": {DashboardConfig fields}, "created": ..., "versions": {...},
     "hist_edges": [161 floats]: histogram bin i covers [hist_edges[i], hist_edges[i+1]),
     "tokens": {"<token id>": "<token text>"} for every id in an example,
     "features": [
       {"feature": int, "explanation": str | null,
        "density": share of counted tokens where it is non-zero, "n_active": int,
        "max_activation", "mean_activation" (over all counted tokens), "mean_active" (over active ones),
        "hist_start": first non-empty bin, "histogram": counts of bins hist_start, hist_start+1, ...,
        "examples": [example, ...] top activations, best first,
        "bands": [{"low", "high", "examples": [example, ...]}, ...] equal-width bands of (0, max],
                 each example's activation in (low, high],
        "top_logits" / "bottom_logits": [[token text, logit effect], ...] most promoted / suppressed,
        "neighbours": [[feature, decoder cosine], ...] best first}, ...]}

    example = {"token_ids": [...], "activations": [...] (one per token; BOS shows 0),
               "peak": index in the window of the example's token, "activation": its value,
               "chunk": corpus chunk, "position": position of the peak token in the chunk}

Floats are kept to 4 significant digits (:func:`round_sig`), which is what the page shows.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

DASHBOARD_FORMAT = "trajectory-feature-dashboard"
DASHBOARD_FORMAT_VERSION = 1


def round_sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (what the files and pages keep)."""
    return float(f"{x:.{digits}g}")


@dataclass
class CardExample:
    """A token window around one activation (see the module docstring)."""

    token_ids: list[int]
    activations: list[float]
    peak: int
    activation: float
    chunk: int = 0
    position: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The example's JSON object (shares its lists with ``self``: for writing, not editing)."""
        return dict(vars(self))


@dataclass
class Band:
    """Sampled examples whose activation lies in ``(low, high]``."""

    low: float
    high: float
    examples: list[CardExample] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The band's JSON object (lists shared with ``self``)."""
        return {"low": self.low, "high": self.high, "examples": [e.to_dict() for e in self.examples]}


@dataclass
class FeatureCard:
    """Everything one feature's card shows (see the module docstring for each field)."""

    feature: int
    density: float
    n_active: int
    max_activation: float
    mean_activation: float
    mean_active: float
    hist_start: int = 0
    histogram: list[int] = field(default_factory=list)
    examples: list[CardExample] = field(default_factory=list)
    bands: list[Band] = field(default_factory=list)
    top_logits: list[tuple[str, float]] = field(default_factory=list)
    bottom_logits: list[tuple[str, float]] = field(default_factory=list)
    neighbours: list[tuple[int, float]] = field(default_factory=list)
    explanation: str | None = None

    def all_examples(self) -> Iterator[CardExample]:
        """The top examples, then every band's."""
        yield from self.examples
        for band in self.bands:
            yield from band.examples

    def to_dict(self) -> dict[str, Any]:
        """The card's JSON object, keys in field order as :func:`dataclasses.asdict` gives
        them (lists shared with ``self``: built by hand because ``asdict`` deep-copies every
        value, which dominated writing a page)."""
        d = dict(vars(self))
        d["examples"] = [e.to_dict() for e in self.examples]
        d["bands"] = [b.to_dict() for b in self.bands]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureCard":
        d = dict(d)
        d["examples"] = [CardExample(**e) for e in d.get("examples", [])]
        d["bands"] = [Band(b["low"], b["high"], [CardExample(**e) for e in b["examples"]]) for b in d.get("bands", [])]
        for key in ("top_logits", "bottom_logits", "neighbours"):
            d[key] = [tuple(pair) for pair in d.get(key, [])]
        return cls(**d)


@dataclass
class LayerDashboard:
    """One SAE's dashboard: what produced it and a :class:`FeatureCard` per feature.

    ``dashboard[f]`` is feature ``f``'s card; ``tokens`` maps the token ids used in the
    examples to their text (stored once, not per example).
    """

    name: str
    hook_name: str
    model_name: str
    sae: dict[str, Any]
    corpus: str
    n_tokens: int
    features: list[FeatureCard]
    tokens: dict[int, str] = field(default_factory=dict)
    hist_edges: list[float] = field(default_factory=list)
    layer: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    versions: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, feature: int) -> FeatureCard:
        for card in self.features:
            if card.feature == feature:
                return card
        raise KeyError(f"feature {feature} is not in the dashboard {self.name} (it has {self.feature_ids[:5]}...)")

    @property
    def feature_ids(self) -> list[int]:
        return [c.feature for c in self.features]

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON object (token ids as string keys, as JSON requires)."""
        from trajectory.io import package_versions

        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["features"] = [c.to_dict() for c in self.features]
        d["tokens"] = {str(i): s for i, s in self.tokens.items()}
        d["created"] = self.created or _now()
        d["versions"] = self.versions or package_versions()
        return {"format": DASHBOARD_FORMAT, "format_version": DASHBOARD_FORMAT_VERSION, **d}

    def to_json(self) -> str:
        return dashboard_json(self.to_dict())

    def save(self, path: str | Path) -> Path:
        """Write the JSON file atomically; returns ``path``."""
        from trajectory.io import atomic_write

        path = Path(path)
        with atomic_write(path) as fh:
            fh.write(self.to_json())
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "the data") -> "LayerDashboard":
        if d.get("format") != DASHBOARD_FORMAT:
            raise ValueError(f"{where} is not a feature dashboard file (format {d.get('format')!r}); "
                             "make one with `trajectory dashboard`")
        if d.get("format_version", 0) > DASHBOARD_FORMAT_VERSION:
            raise ValueError(f"{where} has dashboard format version {d['format_version']}; this trajectory reads "
                             f"up to {DASHBOARD_FORMAT_VERSION}: upgrade the package")
        body = {k: v for k, v in d.items() if k not in ("format", "format_version")}
        body["tokens"] = {int(i): s for i, s in body.get("tokens", {}).items()}
        body["features"] = [FeatureCard.from_dict(c) for c in body["features"]]
        return cls(**body)

    @classmethod
    def load(cls, path: str | Path) -> "LayerDashboard":
        """Read a file written by :meth:`save`."""
        path = Path(path)
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), where=str(path))


def dashboard_json(d: dict[str, Any]) -> str:
    """The file's text for a :meth:`LayerDashboard.to_dict` (compact, UTF-8 kept)."""
    return json.dumps(d, ensure_ascii=False, separators=(",", ":"))


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

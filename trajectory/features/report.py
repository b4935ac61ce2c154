"""Result objects of feature analysis, and their file format.

:class:`FeatureStats` holds everything known about one SAE feature from one mode
(``"real"``: a corpus scan; ``"synthetic"``: optimised inputs). :class:`FeatureReport`
is a mapping ``feature -> FeatureStats`` plus what produced it (model, hook, SAE,
corpus, settings); the visualiser and the CLI consume it.

File format (:meth:`FeatureReport.save` / :meth:`FeatureReport.load`): one UTF-8 JSON
file, written atomically::

    {"format": "trajectory-feature-report", "format_version": 1,
     "mode": "real" | "synthetic", "model_name": ..., "hook_name": ..., "layer": ...,
     "sae": {"d_in", "d_sae", "architecture", "source"}, "corpus": ..., "n_tokens": ...,
     "settings": {...}, "created": ..., "versions": {...},
     "features": [FeatureStats as a dict, ...]}

Everything in it is small (examples are windows of a few tokens, histograms a few
dozen bins), so JSON keeps it readable by any tool without torch. Files written before
``format_version`` existed say ``"version"``; both read the same.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from trajectory.hooks import layer_of

if TYPE_CHECKING:  # pragma: no cover
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

REPORT_FORMAT = "trajectory-feature-report"
REPORT_FORMAT_VERSION = 1
STATS_FORMAT = "trajectory-feature-stats"
COMPARISON_FORMAT = "trajectory-feature-comparison"
#: what each format is called in errors, where files of it come from, what to use instead
_KINDS = {
    REPORT_FORMAT: ("feature report", "run `trajectory real` or `trajectory synthetic` first",
                    "a single feature? use FeatureStats.load"),
    STATS_FORMAT: ("feature stats file", "FeatureStats.save writes one", "a whole report? use FeatureReport.load"),
    COMPARISON_FORMAT: ("feature comparison", "run `trajectory compare` first", "use FeatureReport.load for reports"),
}


@dataclass
class Example:
    """A token window with the feature's activation on every token.

    Attributes:
        tokens: token strings of the window (as the tokenizer decodes them).
        token_ids: their ids.
        activations: the feature's activation on each token (``len(tokens)`` floats;
            excluded BOS positions show 0).
        peak: index in the window of the token the example is about (its maximum).
        activation: activation at ``peak``.
        context: index of the corpus chunk (real) or of the restart (synthetic).
        position: position of the peak token in its chunk / sequence (BOS = 0).
    """

    tokens: list[str]
    token_ids: list[int]
    activations: list[float]
    peak: int
    activation: float
    context: int = 0
    position: int = 0


@dataclass
class FeatureStats:
    """What one analysis found about one feature.

    Attributes:
        feature: feature index in the SAE.
        mode: ``"real"`` or ``"synthetic"``.
        max_activation: the largest activation seen (real: over the corpus;
            synthetic: of the best projected token sequence).
        mean_activation: mean over all counted tokens, zeros included (real).
        mean_active: mean over tokens where the feature is active (real).
        density: share of counted tokens with activation > 0 (real).
        n_tokens / n_active: counted tokens (BOS excluded by default) / active ones.
        decoder_norm: ``||W_dec[feature]||``.
        decoder_neighbour / decoder_neighbour_cosine: the other feature whose decoder
            direction is closest to this one's, and the cosine between the two (real;
            ``None`` in files written before they existed, or when the SAE has one
            feature). Informative where every decoder row has norm 1.
        histogram_edges / histogram_counts: histogram of the non-zero activations
            (``len(edges) == len(counts) + 1``).
        examples: top-activating windows, best first (real), or the projected
            sequence of each restart, best first (synthetic).
        top_logits / bottom_logits: ``[token, value]`` pairs the decoder direction
            promotes / suppresses most through the unembedding.
        synthetic_activation: activation of the best projected sequence (synthetic).
        relaxed_activation: objective reached by the continuous relaxation (synthetic;
            for reference only — not an activation of any real input).
        best_real_activation: the best real activation it is compared with, when known.
        time_s: seconds spent on this feature (synthetic).
    """

    feature: int
    mode: str
    max_activation: float = 0.0
    mean_activation: float = 0.0
    mean_active: float = 0.0
    density: float = 0.0
    n_tokens: int = 0
    n_active: int = 0
    decoder_norm: float = 0.0
    decoder_neighbour: int | None = None
    decoder_neighbour_cosine: float | None = None
    histogram_edges: list[float] = field(default_factory=list)
    histogram_counts: list[int] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    top_logits: list[tuple[str, float]] = field(default_factory=list)
    bottom_logits: list[tuple[str, float]] = field(default_factory=list)
    synthetic_activation: float | None = None
    relaxed_activation: float | None = None
    best_real_activation: float | None = None
    time_s: float | None = None

    @property
    def sparsity(self) -> float:
        """``1 - density``."""
        return 1.0 - self.density

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top_logits"] = [[str(t), float(v)] for t, v in self.top_logits]
        d["bottom_logits"] = [[str(t), float(v)] for t, v in self.bottom_logits]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureStats":
        d = dict(d)
        d["examples"] = [Example(**e) for e in d.get("examples", [])]
        d["top_logits"] = [(str(t), float(v)) for t, v in d.get("top_logits", [])]
        d["bottom_logits"] = [(str(t), float(v)) for t, v in d.get("bottom_logits", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: str | Path) -> Path:
        """Write this one feature as JSON (atomically): ``{"format":
        "trajectory-feature-stats", "format_version": 1, ...fields...}``; returns ``path``.
        A whole run is saved with :meth:`FeatureReport.save`."""
        return write_doc(path, STATS_FORMAT, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        """Read a file written by :meth:`save`; a clear error on other files."""
        return cls.from_dict(read_doc(path, STATS_FORMAT))  # from_dict skips the header keys


@dataclass
class FeatureReport(Mapping):
    """Results of one analysis run: ``feature -> FeatureStats`` plus provenance.

    Attributes:
        mode: ``"real"`` or ``"synthetic"``.
        features: the per-feature results, keyed by feature index.
        model_name / hook_name / layer: where the SAE reads.
        sae: ``{"d_in", "d_sae", "architecture", "source"}``.
        corpus: corpus name (real).
        n_tokens: tokens counted (real; BOS excluded by default).
        settings: the arguments the run used.
    """

    mode: str
    features: dict[int, FeatureStats]
    model_name: str = ""
    hook_name: str = ""
    layer: int | None = None
    sae: dict[str, Any] = field(default_factory=dict)
    corpus: str | None = None
    n_tokens: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, feature: int) -> FeatureStats:
        try:
            return self.features[int(feature)]
        except KeyError:
            raise KeyError(f"feature {feature} is not in this {self.mode} report (it has {self.feature_ids[:10]}...)") from None

    def __iter__(self) -> Iterator[int]:
        return iter(self.features)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def feature_ids(self) -> list[int]:
        return sorted(self.features)

    @classmethod
    def from_run(cls, mode: str, features: dict[int, FeatureStats], *, model: "HookedTransformer", sae: "SAE",
                 hook_name: str, settings: dict[str, Any], **fields: Any) -> "FeatureReport":
        """The report of a run of ``sae`` at ``hook_name`` of ``model``: fills in
        ``model_name``, ``layer`` and ``sae`` (:func:`sae_info`); ``fields``: ``corpus``, ``n_tokens``."""
        return cls(mode=mode, features=features, model_name=str(model.cfg.model_name), hook_name=hook_name,
                   layer=layer_of(hook_name), sae=sae_info(sae), settings=settings, **fields)

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON (atomically); returns ``path``."""
        from trajectory.io import provenance

        head = {"mode": self.mode, "model_name": self.model_name, "hook_name": self.hook_name, "layer": self.layer,
                "sae": self.sae, "corpus": self.corpus, "n_tokens": self.n_tokens}
        prov = provenance(self.settings)
        # "settings" first, then "created" and "versions": the order the format has always had
        return write_doc(path, REPORT_FORMAT, {**head, "settings": prov.pop("settings"), **prov,
                                               "features": [self.features[f].to_dict() for f in self.feature_ids]})

    @classmethod
    def load(cls, path: str | Path) -> "FeatureReport":
        """Read a report written by :meth:`save`; a clear error on other files."""
        doc = read_doc(path, REPORT_FORMAT)
        feats = [FeatureStats.from_dict(d) for d in doc["features"]]
        return cls(
            mode=doc["mode"],
            features={s.feature: s for s in feats},
            model_name=doc.get("model_name", ""),
            hook_name=doc.get("hook_name", ""),
            layer=doc.get("layer"),
            sae=doc.get("sae", {}),
            corpus=doc.get("corpus"),
            n_tokens=int(doc.get("n_tokens", 0)),
            settings=doc.get("settings", {}),
        )


#: what the corpus names that :func:`trajectory.training.corpus.load_corpus` and
#: :func:`trajectory.features.real_activations.corpus_tokens` give stand for, in words
CORPUS_DESCRIPTIONS = {
    "default": "the Python documentation (the default corpus before 2026-12)",
    "mixed": "English prose and the Python documentation (default corpus)",
    "english": "English prose (markov-draftjs)",
    "python-docs": "the Python documentation",
    "documents": "the given documents",
    "tokens": "the given token chunks",
}


def corpus_description(name: str | None) -> str:
    """A report's corpus in words, for titles: ``"default"`` ->
    ``"the Python documentation (default corpus)"``; a file, folder or dataset name as
    ``"corpus <name>"``; ``None`` (no corpus: synthetic) -> ``"no corpus"``."""
    if name is None:
        return "no corpus"
    return CORPUS_DESCRIPTIONS.get(name, f"corpus {name}")


def feature_summary_lines(report: FeatureReport, limit: int | None = None, width: int = 60) -> list[str]:
    """One line per feature of ``report`` (by feature index), for a terminal.

    Real: feature, density (active / counted tokens), max activation, and the top
    example's context with its peak token in ``«»``; synthetic: the synthetic and best
    real activation, and the best projected sequence. Newlines and other control
    characters in tokens are escaped, so each entry is one line; the context is cut to
    about ``width`` characters around the peak. ``limit``: at most that many features,
    then one line saying how many more there are.

    Example:
        >>> s = FeatureStats(feature=3, mode="real", max_activation=2.5, density=0.25, n_tokens=8, n_active=2,
        ...     examples=[Example(tokens=["x", " =", " 1", "\\n"], token_ids=[0, 1, 2, 3],
        ...                       activations=[0, 0, 2.5, 0], peak=2, activation=2.5)])
        >>> feature_summary_lines(FeatureReport(mode="real", features={3: s}))
        ['feature 3: density 25.00% (2 of 8 tokens), max 2.5, top: "x =« 1»\\\\n"']
    """
    ids = report.feature_ids
    shown = ids if limit is None else ids[: max(int(limit), 0)]
    lines = [_summary_line(report[f], width) for f in shown]
    if len(shown) < len(ids):
        lines.append(f"... and {len(ids) - len(shown)} more feature(s) in the report")
    return lines


def _summary_line(s: FeatureStats, width: int) -> str:
    if s.mode == "real":
        if not s.n_active:
            return f"feature {s.feature}: never active in {s.n_tokens:,} tokens"
        head = (f"feature {s.feature}: density {s.density:.2%} ({s.n_active:,} of {s.n_tokens:,} tokens), "
                f"max {s.max_activation:.4g}")
    else:
        real = "" if s.best_real_activation is None else f" (best real {s.best_real_activation:.4g})"
        head = f"feature {s.feature}: synthetic {s.max_activation:.4g}{real}"
    return head + (f", top: {_context(s.examples[0], width)}" if s.examples else "")


def _context(e: Example, width: int) -> str:
    """The example's tokens with the peak token in ``«»``, escaped and cut around it."""
    from trajectory.render.style import display_token

    def shown(tokens: list[str]) -> str:
        return display_token("".join(tokens), max_len=0, mark_spaces=False) if tokens else ""

    peak = shown(e.tokens[e.peak : e.peak + 1])
    room = max(width - len(peak), 0)
    before, after = shown(e.tokens[: e.peak]), shown(e.tokens[e.peak + 1 :])
    keep_after = min(len(after), room // 3)  # most of the room for what led to the peak
    keep_before = min(len(before), room - keep_after)
    keep_after = min(len(after), room - keep_before)
    before = ("…" + before[len(before) - keep_before :]) if keep_before < len(before) else before
    after = (after[:keep_after] + "…") if keep_after < len(after) else after
    return '"' + before + "«" + peak + "»" + after + '"'


def sae_info(sae: "SAE") -> dict[str, Any]:
    """``{"d_in", "d_sae", "architecture", "source"}`` of a sae-lens SAE."""
    meta = sae.cfg.metadata
    return {
        "d_in": int(sae.cfg.d_in),
        "d_sae": int(sae.cfg.d_sae),
        "architecture": str(sae.cfg.architecture()),
        "source": str(getattr(meta, "source", None) or getattr(meta, "sae_lens_id", None) or ""),
    }


def write_doc(path: str | Path, fmt: str, body: Mapping[str, Any]) -> Path:
    """Write ``{"format": fmt, "format_version": ..., **body}`` as JSON, atomically; returns ``path``."""
    from trajectory.io import atomic_write

    with atomic_write(path) as fh:
        json.dump({"format": fmt, "format_version": REPORT_FORMAT_VERSION, **body}, fh, ensure_ascii=False, indent=1)
    return Path(path)


def read_doc(path: str | Path, fmt: str) -> dict:
    """The JSON document at ``path`` if it is a ``fmt`` file this version reads (header
    ``format_version``, or ``version`` in older files); else a clear error naming the
    problem and the fix."""
    what, missing_hint, other_hint = _KINDS[fmt]
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}; {missing_hint}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable {what} ({exc}); delete it and rerun") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise ValueError(f"{path} is not a trajectory {what} (format {found!r}; {other_hint})")
    version = int(doc.get("format_version", doc.get("version", 0)))
    if version > REPORT_FORMAT_VERSION:
        raise ValueError(f"{path} has {what} version {version}; this trajectory reads up to "
                         f"{REPORT_FORMAT_VERSION}: upgrade trajectory")
    return doc

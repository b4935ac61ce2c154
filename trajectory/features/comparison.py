"""Real versus synthetic activations, per feature and in summary.

File format (:meth:`Comparison.save`): JSON ``{"format": "trajectory-feature-comparison",
"format_version": 1, "hook_name", "model_name", "rows": [...], "summary": {...}}`` (older
files say ``"version"``; both read the same).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trajectory.features.report import COMPARISON_FORMAT, FeatureReport, read_doc, write_doc


@dataclass
class ComparisonRow:
    """One feature: best real activation, synthetic activation, their ratio.

    ``ratio`` = synthetic / best real (``None`` when the feature never fired on the
    corpus); ``exceeds``: the synthetic activation is at least the best real one.
    """

    feature: int
    best_real: float
    synthetic: float
    ratio: float | None
    exceeds: bool
    density: float
    real_example: str = ""
    synthetic_example: str = ""


@dataclass
class Comparison:
    """Per-feature rows and a summary (``n_features``, ``n_exceeds``, ``share_exceeds``,
    ``median_ratio``, ``max_ratio``, ``features_exceeding``, ``never_fired``)."""

    rows: list[ComparisonRow]
    summary: dict[str, Any] = field(default_factory=dict)
    hook_name: str = ""
    model_name: str = ""

    def save(self, path: str | Path) -> Path:
        """Write the comparison as JSON (atomically); returns ``path``."""
        return write_doc(path, COMPARISON_FORMAT, {"hook_name": self.hook_name, "model_name": self.model_name,
                                                   "rows": [asdict(r) for r in self.rows], "summary": self.summary})

    @classmethod
    def load(cls, path: str | Path) -> "Comparison":
        """Read a comparison written by :meth:`save`; a clear error on other files."""
        doc = read_doc(path, COMPARISON_FORMAT)
        return cls(rows=[ComparisonRow(**r) for r in doc["rows"]], summary=doc["summary"],
                   hook_name=doc.get("hook_name", ""), model_name=doc.get("model_name", ""))


def _snippet(stats, width: int = 6) -> str:
    if not stats.examples:
        return ""
    e = stats.examples[0]
    lo = max(0, e.peak - width)
    return "".join(e.tokens[lo : e.peak + 1])


def compare(real_report: FeatureReport, synthetic_report: FeatureReport) -> Comparison:
    """Compare a ``"real"`` and a ``"synthetic"`` report on the features they share.

    Raises ``ValueError`` when the modes are wrong, the reports read different hooks,
    or they share no feature.
    """
    if real_report.mode != "real" or synthetic_report.mode != "synthetic":
        raise ValueError(f"compare needs a real and a synthetic report, got {real_report.mode!r} and {synthetic_report.mode!r}")
    if real_report.hook_name and synthetic_report.hook_name and real_report.hook_name != synthetic_report.hook_name:
        raise ValueError(f"the reports read different hooks: {real_report.hook_name} vs {synthetic_report.hook_name}")
    shared = sorted(set(real_report) & set(synthetic_report))
    if not shared:
        raise ValueError("the real and synthetic reports share no feature; run both on the same --features")
    rows = []
    for f in shared:
        r, s = real_report[f], synthetic_report[f]
        best = float(r.max_activation)
        syn = float(s.synthetic_activation if s.synthetic_activation is not None else s.max_activation)
        ratio = syn / best if best > 0 else None
        rows.append(ComparisonRow(feature=f, best_real=best, synthetic=syn, ratio=ratio,
                                  exceeds=best > 0 and syn >= best, density=float(r.density),
                                  real_example=_snippet(r), synthetic_example=_snippet(s)))
    ratios = sorted(r.ratio for r in rows if r.ratio is not None)
    exceeding = [r.feature for r in rows if r.exceeds]
    fired = [r for r in rows if r.best_real > 0]
    summary = {
        "n_features": len(rows),
        "n_fired_real": len(fired),
        "n_exceeds": len(exceeding),
        # among features that fired on the corpus: a feature that never fired has no best real activation
        "share_exceeds": len(exceeding) / len(fired) if fired else None,
        "median_ratio": statistics.median(ratios) if ratios else None,
        "max_ratio": ratios[-1] if ratios else None,
        "features_exceeding": exceeding,
        "far_above": [r.feature for r in rows if r.ratio is not None and r.ratio >= 2.0],
        "never_fired": [r.feature for r in rows if r.ratio is None],
        "only_synthetic_fires": [r.feature for r in rows if r.ratio is None and r.synthetic > 0],
    }
    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    return Comparison(rows=rows, summary=summary, hook_name=real_report.hook_name, model_name=real_report.model_name)

"""Feature analysis: what SAE features fire on (real), what could fire them most
(synthetic), both side by side (compare), and PNG figures of all three.

::

    real(model, sae, "0-10") ──► FeatureReport ──┐
    synthetic(model, sae, "0-10") ─► FeatureReport ─┴─► compare ─► Comparison
                                     visualize.render_* ─► PNGs

Names are imported lazily (torch, matplotlib load only when used).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "parse_features": "trajectory.analysis.features",
    "FeatureSpecError": "trajectory.analysis.features",
    "Example": "trajectory.analysis.stats",
    "FeatureStats": "trajectory.analysis.stats",
    "FeatureReport": "trajectory.analysis.stats",
    "real": "trajectory.analysis.real_activations",
    "logit_effects": "trajectory.analysis.real_activations",
    "synthetic": "trajectory.analysis.synthetic_activations",
    "compare": "trajectory.analysis.comparison",
    "Comparison": "trajectory.analysis.comparison",
    "render_real": "trajectory.analysis.visualize",
    "render_synthetic": "trajectory.analysis.visualize",
    "render_comparison": "trajectory.analysis.visualize",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trajectory.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

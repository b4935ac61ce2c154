"""Feature analysis: what SAE features fire on (real), what could fire them most
(synthetic), both side by side (compare), and PNG figures of all three.

::

    real(model, sae, "0-10", corpus, config=RealConfig()) ─► FeatureReport ─┐
    synthetic(model, sae, "0-10", config=SyntheticConfig()) ─► FeatureReport ─┴─► compare ─► Comparison
                                                        render_real / render_synthetic / render_comparison ─► PNGs

- :mod:`~trajectory.features.spec`: feature sets as users write them (``"0-10,50"``);
- :mod:`~trajectory.features.config`: :class:`RealConfig`, :class:`SyntheticConfig`;
- :mod:`~trajectory.features.corpus_scan`: the streaming corpus scan shared with the
  dashboard (:class:`FeatureScan`, :class:`TopExamples`);
- :mod:`~trajectory.features.real_activations`: :func:`real` (a corpus scan);
- :mod:`~trajectory.features.synthetic_activations`: :func:`synthetic` (optimised inputs);
- :mod:`~trajectory.features.logits`: :func:`logit_effects` of decoder directions, their nearest neighbours;
- :mod:`~trajectory.features.report`: :class:`FeatureReport`, the output and its file format,
  :func:`feature_summary_lines` (one line per feature, for a terminal);
- :mod:`~trajectory.features.comparison`: :func:`compare`;
- :mod:`~trajectory.features.plots`: the PNG figures (:mod:`~trajectory.features.glyphs`: how
  token text is drawn in them).

Names are imported lazily (torch, matplotlib load only when used).
"""
from __future__ import annotations

from trajectory import lazy_exports

_MODULES = {
    "spec": ("parse_features", "FeatureSpecError"),
    "config": ("RealConfig", "SyntheticConfig"),
    "report": ("Example", "FeatureStats", "FeatureReport", "feature_summary_lines"),
    "real_activations": ("real",),
    "synthetic_activations": ("synthetic",),
    "logits": ("logit_effects",),
    "comparison": ("compare", "Comparison"),
    "plots": ("render_real", "render_synthetic", "render_comparison"),
}
__getattr__, __dir__, __all__ = lazy_exports(globals(), _MODULES)

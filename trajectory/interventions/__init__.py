"""Steering and causal tests through SAE latents.

- :mod:`~trajectory.interventions.intervention`: :class:`Intervention` (add, clamp,
  ablate, scale one latent at chosen positions) and its validation;
- :mod:`~trajectory.interventions.hooks`: :func:`steered`, the interventions as
  TransformerLens hooks inside a ``with`` block;
- :mod:`~trajectory.interventions.steering`: :func:`steer`, base and steered continuations
  side by side (:class:`SteeringResult`, saved as JSON);
- :mod:`~trajectory.interventions.knockout`: :func:`edge_effects`, a key knock-out
  and feature ablations for every edge of a trajectory graph;
- :mod:`~trajectory.interventions.render`: ``steer.html`` and ``steer.png``.
"""
from trajectory import lazy_exports

_MODULES = {
    "intervention": ("Intervention", "check_interventions", "MODES"),
    "hooks": ("steered", "Steering"),
    "steering": ("steer", "SteeringResult"),
    "knockout": ("edge_effects",),
    "render": ("steer_html", "steer_png", "write_steer_outputs"),
}
__getattr__, __dir__, __all__ = lazy_exports(globals(), _MODULES)

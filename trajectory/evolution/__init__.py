"""Stage 2: the top-k SAE features of every (prefix, layer, step) of a prompt.

- :mod:`~trajectory.evolution.attention`: the residual stream and attention pieces of one
  forward pass, and what each key token contributes to each query (``attn_contributions``);
- :mod:`~trajectory.evolution.topk`: top-k selection among active features;
- :mod:`~trajectory.evolution.encoder`: encoding every step vector by mixing in feature space;
- :mod:`~trajectory.evolution.engine`: :func:`evolve` (one prompt);
- :mod:`~trajectory.evolution.batch`: :func:`evolve_many` (a prompt set, resumable);
- :mod:`~trajectory.evolution.result`: :class:`Evolution`, the stage's output and its file format.
"""
from trajectory import lazy_exports

_EXPORTS = {
    "evolve": "trajectory.evolution.engine",
    "evolve_many": "trajectory.evolution.batch",
    "prompt_tokens": "trajectory.evolution.engine",
    "Evolution": "trajectory.evolution.result",
    "attn_contributions": "trajectory.evolution.attention",
    "attn_partial_sums": "trajectory.evolution.attention",
    "select_active_topk": "trajectory.evolution.topk",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

"""Stage 2: the top-k SAE features of every (prefix, layer, step) of a prompt.

- :mod:`~trajectory.evolution.attention`: the residual stream and attention pieces of one
  forward pass, and what each key token contributes to each query (``attn_contributions``);
- :mod:`~trajectory.evolution.topk`: top-k selection among active features;
- :mod:`~trajectory.evolution.encoder`: encoding every step vector by mixing in feature space;
- :mod:`~trajectory.evolution.engine`: :func:`evolve` (one prompt);
- :mod:`~trajectory.evolution.batch`: :func:`evolve_many` (a prompt set, resumable; prompts of
  similar length share forward passes), :func:`evolve_batch`;
- :mod:`~trajectory.evolution.distributed`: :func:`evolve_many_ray` (the same on Ray workers);
- :mod:`~trajectory.evolution.result`: :class:`Evolution`, the stage's output and its file format.
"""
from trajectory import lazy_exports

_MODULES = {
    "engine": ("evolve", "prompt_tokens"),
    "batch": ("evolve_many", "evolve_batch", "plan_prompts", "evolve_prompts", "write_index", "Plan"),
    "distributed": ("evolve_many_ray", "RayOptions", "WorkerSpec"),
    "result": ("Evolution",),
    "attention": ("attn_contributions", "attn_partial_sums"),
    "topk": ("select_active_topk",),
}
__getattr__, __dir__, __all__ = lazy_exports(globals(), _MODULES)

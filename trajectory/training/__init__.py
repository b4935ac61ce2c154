"""SAE training: corpus -> activations on disk -> TopK / BatchTopK SAEs -> a bank.

- :mod:`~trajectory.training.config`: :class:`TrainConfig` (every training setting, defaults);
- :mod:`~trajectory.training.corpus`: the offline default corpus and user corpora, tokenised;
- :mod:`~trajectory.training.store`: activations of many hooks collected in one pass, memory-mapped;
- :mod:`~trajectory.training.train`: one SAE per layer (sae-lens trainers) and :func:`train_bank`;
- :mod:`~trajectory.training.metrics`: L0, explained variance, dead features, spliced loss.
"""
from trajectory import lazy_exports

_MODULES = {
    "config": ("TrainConfig",),
    "train": ("train_bank", "train_sae"),
    "metrics": ("evaluate_sae", "spliced_losses"),
    "corpus": ("load_corpus",),
    "store": ("ActivationStore", "collect_activations"),
}
__getattr__, __dir__, __all__ = lazy_exports(globals(), _MODULES)

"""SAE training: corpus -> activations on disk -> TopK / BatchTopK SAEs -> a bank.

- :mod:`~trajectory.training.config`: :class:`TrainConfig` (every training setting, defaults);
- :mod:`~trajectory.training.corpus`: the offline default corpus and user corpora, tokenised;
- :mod:`~trajectory.training.store`: activations of many hooks collected in one pass, memory-mapped;
- :mod:`~trajectory.training.train`: one SAE per layer (sae-lens trainers) and :func:`train_bank`;
- :mod:`~trajectory.training.metrics`: L0, explained variance, dead features, spliced loss.
"""
from trajectory import lazy_exports

_EXPORTS = {
    "TrainConfig": "trajectory.training.config",
    "train_bank": "trajectory.training.train",
    "train_sae": "trajectory.training.train",
    "evaluate_sae": "trajectory.training.metrics",
    "spliced_losses": "trajectory.training.metrics",
    "load_corpus": "trajectory.training.corpus",
    "ActivationStore": "trajectory.training.store",
    "collect_activations": "trajectory.training.store",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

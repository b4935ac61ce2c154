"""SAE training: corpus -> activations on disk -> TopK / BatchTopK SAEs -> a bank.

- :mod:`~trajectory.training.config`: :class:`TrainConfig` (every training setting, defaults);
- :mod:`~trajectory.training.corpus`: the offline default corpus and user corpora, tokenised;
- :mod:`~trajectory.training.store`: activations of many hooks collected in one pass, memory-mapped;
- :mod:`~trajectory.training.sae`: one SAE (sae-lens trainers), in RAM or streamed from a memmap;
- :mod:`~trajectory.training.train`: one SAE per layer at any hook, :func:`train_saes` (alias :func:`train_bank`);
- :mod:`~trajectory.training.from_store`: SAEs on any activation store (:func:`train_on_store`);
- :mod:`~trajectory.training.lora` / :mod:`~trajectory.training.lora_collect`: a LoRA adapter
  fine-tuned with peft, its ``lora_A`` outputs per token collected into a store, spliced loss;
- :mod:`~trajectory.training.metrics`: L0, explained variance, dead features, spliced / zero-ablated loss.
"""
from trajectory import lazy_exports

_MODULES = {
    "config": ("TrainConfig",),
    "train": ("train_bank", "train_saes"),
    "sae": ("train_sae",),
    "from_store": ("train_on_store",),
    "metrics": ("evaluate_sae", "hook_losses", "spliced_losses"),
    "corpus": ("load_corpus", "default_corpus", "english_corpus", "python_docs_corpus", "mixed_corpus",
               "NAMED_CORPORA"),
    "store": ("ActivationStore", "collect_activations", "create_store"),
}
__getattr__, __dir__, __all__ = lazy_exports(globals(), _MODULES)

"""trajectory: SAE feature trajectories across layers and tokens, as NetworkX graphs.

The pipeline, one subpackage per stage::

    model.load_model ─► saes.SAEBank ─► evolution.evolve ─► evolution.Evolution
        ─► newcomers.find_newcomers ─► graph.trajectory_graph ─► render / graph.export

:mod:`trajectory.pipeline` runs the stages as the ``trajectory`` command does.

Heavy libraries (torch, sae_lens, transformer_lens) are imported only when a name
that needs them is first used, so ``trajectory --help`` and rendering saved graphs
stay fast.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# submodule -> the public names it defines (imported lazily on first access)
_MODULES = {
    "model.load": ("load_model",),
    "presets": ("PRESETS", "Preset", "get_preset"),
    "saes.bank": ("SAEBank",),
    "evolution.engine": ("evolve",),
    "evolution.batch": ("evolve_many", "evolve_batch"),
    "evolution.result": ("Evolution",),
    "newcomers": ("find_newcomers", "Newcomer"),
    "graph.build": ("trajectory_graph", "feature_graph"),
    "graph.export": ("export_graph", "read_graph"),
    "graph.aggregate": ("aggregate", "aggregate_folder"),
    "graph.diff": ("diff_graph",),
    "interventions.intervention": ("Intervention",),
    "interventions.hooks": ("steered",),
    "interventions.steering": ("steer", "SteeringResult"),
    "interventions.knockout": ("edge_effects",),
    "training.config": ("TrainConfig",),
    "training.train": ("train_saes",),
    "training.from_store": ("train_on_store",),
    "training.lora": ("LoraConfig", "finetune"),
    "training.lora_collect": ("CollectConfig", "lora_spliced_losses"),
}


def lazy_exports(namespace: dict[str, Any], modules: dict[str, tuple[str, ...]]):
    """``(__getattr__, __dir__, __all__)`` for a package whose public names live in submodules.

    ``modules`` maps a submodule (relative to the package) to the names it defines; a
    submodule is imported on first access to one of its names (so heavy libraries load
    only when a name that needs them is used) and the value is cached in ``namespace``
    (the package's ``globals()``).
    """
    package = namespace["__name__"]
    exports = {name: f"{package}.{module}" for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__, sorted(exports)


__getattr__, __dir__, __all__ = lazy_exports(globals(), _MODULES)
__all__ = __all__ + ["__version__"]

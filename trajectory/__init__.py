"""trajectory: SAE feature trajectories across layers and tokens, as NetworkX graphs.

The pipeline, one module per stage::

    models.load_model ─► sae_bank.SAEBank ─► engine.evolve ─► evolution.Evolution
        ─► newcomers.find_newcomers ─► graph.trajectory_graph ─► render / export

Heavy libraries (torch, sae_lens, transformer_lens) are imported only when a name
that needs them is first used, so ``trajectory --help`` and rendering saved graphs
stay fast.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily on first access)
_EXPORTS = {
    "load_model": "trajectory.models",
    "PRESETS": "trajectory.presets",
    "Preset": "trajectory.presets",
    "get_preset": "trajectory.presets",
    "SAEBank": "trajectory.sae_bank",
    "evolve": "trajectory.engine",
    "evolve_many": "trajectory.engine",
    "Evolution": "trajectory.evolution",
    "find_newcomers": "trajectory.newcomers",
    "Newcomer": "trajectory.newcomers",
    "trajectory_graph": "trajectory.graph",
    "feature_graph": "trajectory.graph",
    "export_graph": "trajectory.export",
    "read_graph": "trajectory.export",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trajectory' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

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

# public name -> module that defines it (imported lazily on first access)
_EXPORTS = {
    "load_model": "trajectory.model.load",
    "PRESETS": "trajectory.presets",
    "Preset": "trajectory.presets",
    "get_preset": "trajectory.presets",
    "SAEBank": "trajectory.saes.bank",
    "evolve": "trajectory.evolution.engine",
    "evolve_many": "trajectory.evolution.batch",
    "Evolution": "trajectory.evolution.result",
    "find_newcomers": "trajectory.newcomers",
    "Newcomer": "trajectory.newcomers",
    "trajectory_graph": "trajectory.graph.build",
    "feature_graph": "trajectory.graph.build",
    "export_graph": "trajectory.graph.export",
    "read_graph": "trajectory.graph.export",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def lazy_exports(namespace: dict[str, Any], exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for a package whose public names live in submodules.

    ``exports`` maps a public name to the module defining it; the module is imported on
    first access (so heavy libraries load only when a name that needs them is used) and
    the value is cached in ``namespace`` (the package's ``globals()``).
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

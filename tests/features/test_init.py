"""The package's lazy public names, and its old name ``trajectory.analysis``."""
from __future__ import annotations

import importlib


def test_public_names_resolve_to_the_functions_not_modules():
    import trajectory.features as features

    # importing the modules must not shadow the functions of the same concept
    importlib.import_module("trajectory.features.real_activations")
    importlib.import_module("trajectory.features.synthetic_activations")
    importlib.import_module("trajectory.features.comparison")
    for name in features.__all__:
        assert getattr(features, name) is not None, name
    assert callable(features.real) and features.real.__module__ == "trajectory.features.real_activations"
    assert features.synthetic.__module__ == "trajectory.features.synthetic_activations"
    assert features.compare.__module__ == "trajectory.features.comparison"
    # the helpers callers import from real_activations
    from trajectory.features.real_activations import (  # noqa: F401
        corpus_tokens, final_norm_direction, hook_activations, logit_effects, resolve_hook, sae_info, stop_layer)


def test_old_name_is_an_alias():
    import trajectory.analysis
    import trajectory.features

    assert trajectory.analysis is trajectory.features
    from trajectory.analysis import real

    assert real is trajectory.features.real

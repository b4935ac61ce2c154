"""Presets and layer specs."""
import pytest

from trajectory.presets import PRESETS, format_layers, get_preset, parse_layers


def test_presets_known_and_unknown():
    assert {"offline", "gemma-2-2b-res-16k", "gemma-2-2b-res-65k", "gemma-3-270m-res-16k"} <= set(PRESETS)
    p = get_preset("gemma-2-2b-res-16k")
    assert p.sae_id(12) == "layer_12/width_16k/canonical"
    assert p.neuronpedia_source(12) == "12-gemmascope-res-16k"
    with pytest.raises(ValueError, match="unknown preset 'nope'.*offline"):
        get_preset("nope")


def test_parse_layers():
    assert parse_layers("0-3,10", 18) == [0, 1, 2, 3, 10]
    assert parse_layers(None, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="out of range"):
        parse_layers("0-20", 18)
    with pytest.raises(ValueError, match="bad layer spec"):
        parse_layers("3-x", 18)


@pytest.mark.parametrize("layers", [[0], [0, 1, 2, 5], [3, 5, 7], list(range(18)), [1, 2, 4, 5, 9]])
def test_format_layers_inverts_parse_layers(layers):
    assert parse_layers(format_layers(layers), 18) == layers
    assert format_layers([]) == "none" and format_layers([0, 1, 2, 5]) == "0-2,5"

"""Feature-spec parsing."""
from __future__ import annotations

import pytest

from trajectory.features.spec import FeatureSpecError, parse_features


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0,5,10", [0, 5, 10]),
        ("0-3", [0, 1, 2, 3]),
        ("0-2,50-52", [0, 1, 2, 50, 51, 52]),
        (" 7 , 3,3 ", [3, 7]),
        ("4-4", [4]),
        (5, [5]),
        ([9, 2, 2], [2, 9]),
    ],
)
def test_valid_specs(spec, expected):
    assert parse_features(spec) == expected


@pytest.mark.parametrize("spec", ["", "a", "1,,2", "3-1", "-2", "1-", "-", "1-2-3", "0.5", "1;2", True])
def test_invalid_specs_raise_clear_error(spec):
    with pytest.raises(FeatureSpecError) as err:
        parse_features(spec)
    assert "feature" in str(err.value)


def test_out_of_range_names_width():
    assert parse_features("0-63", d_sae=64)[-1] == 63
    with pytest.raises(FeatureSpecError, match="64 features"):
        parse_features("60-64", d_sae=64)

"""The pieces every stage shares: presets, layer specs, atomic writes, the CLI entry."""
import subprocess
import sys

import pytest

from trajectory.io import atomic_path, atomic_write
from trajectory.presets import PRESETS, get_preset, parse_layers


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


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_files_get_the_usual_mode(tmp_path):
    """Outputs are readable like any file the user writes (not mkstemp's private 0600)."""
    import os

    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.json") as fh:
            fh.write("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_cli_help_is_fast_and_light():
    code = "import sys, trajectory.cli as c; c.build_parser(); print('torch' in sys.modules, 'sae_lens' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]

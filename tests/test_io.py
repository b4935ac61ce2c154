"""Atomic writes, provenance and JSON conversion shared by every file format."""
import json

import numpy as np
import pytest

from trajectory.io import PROVENANCE_PACKAGES, atomic_path, atomic_write, jsonable, provenance


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


def test_provenance_names_every_package_once():
    record = provenance({"k": 5})
    assert set(record) == {"created", "versions", "settings"} and record["settings"] == {"k": 5}
    assert list(record["versions"]) == list(PROVENANCE_PACKAGES)
    import torch

    assert record["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert record["versions"]["trajectory"] == __import__("trajectory").__version__
    assert record["created"].endswith("Z") and len(record["created"]) == 20


def test_jsonable_makes_plain_json():
    import torch

    value = {1: np.float32(0.5), "t": torch.tensor([1, 2]), "s": torch.tensor(3.0), "n": (np.int64(4), None), "o": object}
    out = jsonable(value)
    assert out == {"1": 0.5, "t": [1, 2], "s": 3.0, "n": [4, None], "o": str(object)}
    assert json.loads(json.dumps(out)) == out


def test_jsonable_strict_refuses_unknown_objects():
    with pytest.raises(TypeError, match="cannot be written as JSON"):
        jsonable({"a": [object()]}, strict=True)

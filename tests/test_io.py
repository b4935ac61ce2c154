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


def test_clean_stale_temp_files(tmp_path):
    """Only atomic_path's leftovers go: those of dead writers, and old ones of unknown writer."""
    import os
    import subprocess
    import sys
    import time

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = [tmp_path / f".graph.png.{dead.pid}-abcd1234.tmp.png", tmp_path / ".old.json.q2w3e4r5.tmp.json"]
    kept = [tmp_path / f".live.png.{os.getpid()}-abcd1234.tmp.png", tmp_path / ".new.json.z9x8c7v6.tmp.json",
            tmp_path / "graph.png", tmp_path / "user.tmp.png", tmp_path / ".hidden"]
    for path in gone + kept:
        path.write_text("x")
    hour_ago = time.time() - 7200
    os.utime(gone[1], (hour_ago, hour_ago))
    from trajectory.io import clean_stale_temp_files

    assert sorted(clean_stale_temp_files(tmp_path)) == sorted(gone)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in gone)
    with atomic_path(tmp_path / "a.txt") as tmp:  # its own temporary name carries this pid
        assert f".a.txt.{os.getpid()}-" in tmp.name and clean_stale_temp_files(tmp_path) == []


def test_output_path_checks(tmp_path):
    from trajectory.io import check_output_dir, check_output_file

    (tmp_path / "file").write_text("x")
    (tmp_path / "dir" / "graph.png").mkdir(parents=True)
    with pytest.raises(ValueError, match="existing folder"):
        check_output_file(tmp_path / "dir")
    with pytest.raises(ValueError, match="which is a file"):
        check_output_file(tmp_path / "file" / "x.json")
    with pytest.raises(ValueError, match="existing file"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(ValueError, match="'graph.png'"):
        check_output_dir(tmp_path / "dir", ["graph.json", "graph.png"])
    assert check_output_dir(tmp_path / "new" / "deeper", ["graph.png"]) == tmp_path / "new" / "deeper"
    assert check_output_file(tmp_path / "new" / "e.safetensors").name == "e.safetensors"

"""The bank folder format: readers without torch, the old ``version`` key, newer formats refused."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trajectory.saes.bank_format import (
    BANK_FORMAT,
    BANK_FORMAT_VERSION,
    MANIFEST,
    CorruptBankError,
    format_version,
    read_explanations,
    read_manifest,
)


def _manifest(folder, **header):
    folder.mkdir()
    (folder / "explanations").mkdir()
    (folder / "explanations" / "layer_03.json").write_text(json.dumps({"5": "dark room"}), encoding="utf-8")
    layers = {"3": {"explanations": "explanations/layer_03.json"}, "4": {"explanations": None}}
    (folder / MANIFEST).write_text(json.dumps({"format": BANK_FORMAT, **header, "layers": layers}), encoding="utf-8")
    return folder


def test_importing_needs_no_torch():
    code = "import sys, trajectory.saes.bank_format; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("key", ["format_version", "version"])
def test_both_version_keys_are_read(tmp_path, key):
    folder = _manifest(tmp_path / "bank", **{key: BANK_FORMAT_VERSION})
    assert format_version(read_manifest(folder)) == BANK_FORMAT_VERSION
    assert read_explanations(folder, 3) == {5: "dark room"} and read_explanations(folder, 4) == {}


@pytest.mark.parametrize("key", ["format_version", "version"])
def test_newer_format_is_refused(tmp_path, key):
    folder = _manifest(tmp_path / "bank", **{key: BANK_FORMAT_VERSION + 1})
    with pytest.raises(CorruptBankError, match="newer than this package reads"):
        read_manifest(folder)


def test_missing_explanations_file(tmp_path):
    folder = _manifest(tmp_path / "bank", format_version=BANK_FORMAT_VERSION)
    (folder / "explanations" / "layer_03.json").unlink()
    with pytest.raises(CorruptBankError, match=r"layer_03\.json is missing.*--force"):
        read_explanations(folder, 3)


def test_docstring_examples_run():
    import doctest

    from trajectory.saes import bank_format

    result = doctest.testmod(bank_format)
    assert result.attempted >= 1 and result.failed == 0

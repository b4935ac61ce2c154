"""Banks written before this version read back identically; new banks write ``format_version``.

``tests/data/v1/bank`` was written by the code before the ``saes`` split from
``trajectory.testing.tiny_bank(tiny_model())``; its manifest names its format version
``version``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from trajectory.saes.bank import SAEBank
from trajectory.saes.bank_format import read_manifest

OLD_BANK = Path(__file__).resolve().parent.parent / "data" / "v1" / "bank"


def _assert_same_bank(got: SAEBank, want: SAEBank) -> None:
    assert got.layers == want.layers and got.model_name == want.model_name
    for layer in want.layers:
        a, b = want.entry(layer), got.entry(layer)
        assert (b.hook_name, b.neuronpedia_id, b.architecture) == (a.hook_name, a.neuronpedia_id, a.architecture)
        sa, sb = a.sae.state_dict(), b.sae.state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), (layer, key)


def test_v1_bank_opens_equal_to_tiny_bank(tiny_bank):
    manifest = read_manifest(OLD_BANK)
    assert manifest["version"] == 1 and "format_version" not in manifest  # really the old header
    old = SAEBank.open(OLD_BANK)
    _assert_same_bank(old, tiny_bank)
    assert [old.hook_name(layer) for layer in old.layers] == [f"blocks.{layer}.hook_resid_post" for layer in (0, 1, 2)]
    assert SAEBank.load(OLD_BANK).layers == old.layers


def test_new_bank_writes_format_version_and_reads_back(tiny_bank, tmp_path):
    path = tiny_bank.save(tmp_path / "bank")
    manifest = read_manifest(path)
    assert manifest["format_version"] == 1 and "version" not in manifest
    back = SAEBank.load(path)
    _assert_same_bank(back, tiny_bank)
    assert read_manifest(OLD_BANK)["layers"]["1"]["tensors"] == manifest["layers"]["1"]["tensors"]

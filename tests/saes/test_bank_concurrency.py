"""Several processes writing one bank folder at once: no save fails, no layer is lost.

Two real processes (``concurrent_writer.py``) run, started together, three kinds of
writes into three folders; every rename takes 3 ms longer there (as on a network
filesystem), so that the swaps overlap often. Without the lock, 7-8 of the 40 ``same``
saves failed (``FileNotFoundError`` renaming the bank aside) and the ``merge`` bank lost
layers 0-1 (two runs). The three kinds:

- ``same``: both save the same 4-layer bank 20 times to one path (the folder swap of
  one must never trip over the other's);
- ``merge``: one saves layers 0-1, the other layers 2-3, 10 times each, with
  ``merge=True``;
- ``locked``: the same split, each time reading the bank's other layers, adding its
  own and saving, under ``bank_lock`` (the pattern of ``trajectory preload``).
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trajectory.saes.bank import SAEBank
from trajectory.saes.bank_format import bank_lock, read_explanations
from trajectory.testing import random_sae

WRITER = Path(__file__).with_name("concurrent_writer.py")
LAYERS = [0, 1, 2, 3]
SPLIT = [[0, 1], [2, 3]]


def _source_bank() -> SAEBank:
    saes = {
        layer: random_sae(16, 32, architecture=("topk" if layer % 2 else "jumprelu"), k=4, seed=layer,
                          hook_name=f"blocks.{layer}.hook_resid_post")
        for layer in LAYERS
    }
    bank = SAEBank.from_saes(saes, model_name="tiny", preset="tiny")
    bank.entry(2).explanations = {3: "dark room", 9: "flashlight"}
    return bank


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Run the two writers once; ``(source folder, {run name: bank folder}, errors per writer)``."""
    root = tmp_path_factory.mktemp("concurrent")
    source = _source_bank().save(root / "source")
    (root / "sync").mkdir()
    folders = {name: root / name / "bank" for name in ("same", "merge", "locked")}
    procs = []
    for me, mine in enumerate(SPLIT):
        runs = [
            {"name": "same", "bank": str(folders["same"]), "layers": LAYERS, "repeats": 20, "mode": "save"},
            {"name": "merge", "bank": str(folders["merge"]), "layers": mine, "repeats": 10, "mode": "merge"},
            {"name": "locked", "bank": str(folders["locked"]), "layers": mine, "repeats": 10, "mode": "locked"},
        ]
        job = {"rename_delay": 0.003, "id": me, "n": len(SPLIT), "sync": str(root / "sync"), "source": str(source),
               "result": str(root / f"result-{me}.json"), "runs": runs}
        procs.append(subprocess.Popen([sys.executable, str(WRITER), json.dumps(job)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        out, _ = proc.communicate(timeout=240)  # a deadlock fails here instead of hanging
        assert proc.returncode == 0, out
    errors = [json.loads((root / f"result-{me}.json").read_text()) for me in range(len(SPLIT))]
    return source, folders, errors


@pytest.mark.parametrize("name", ["same", "merge", "locked"])
def test_concurrent_writes_keep_every_layer(written, name):
    source, folders, errors = written
    failed = [e for per_writer in errors for e in per_writer[name]]
    saves = 40 if name == "same" else 20
    assert not failed, f"{len(failed)} of {saves} saves failed; first:\n{failed[0]}"
    path = folders[name]
    bank = SAEBank.open(path, verify="sha256")
    assert bank.layers == LAYERS
    for layer in LAYERS:  # every layer's file holds exactly what the source bank saved
        got, want = load_file(path / f"layer_{layer:02d}.safetensors"), load_file(source / f"layer_{layer:02d}.safetensors")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), layer
    assert read_explanations(path, 2) == {3: "dark room", 9: "flashlight"}
    assert sorted(p.name for p in path.parent.iterdir()) == [".bank.lock", "bank"]  # no temporary folders left


def test_lock_is_reentrant_in_one_thread(tmp_path):
    """``save`` inside ``bank_lock`` of the same folder takes the lock again without waiting for itself."""
    bank, errors = _source_bank(), []

    def save_twice_under_lock():
        try:
            with bank_lock(tmp_path / "bank"):
                bank.save(tmp_path / "bank")
                bank.save(tmp_path / "bank", merge=True)
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    worker = threading.Thread(target=save_twice_under_lock, daemon=True)
    worker.start()
    worker.join(timeout=60)  # a lock waiting for itself never returns
    assert not worker.is_alive(), "save() inside bank_lock() of the same folder deadlocked"
    assert errors == [] and SAEBank.open(tmp_path / "bank").layers == LAYERS

"""One of several processes writing SAE banks into the same folders at once (run by
``test_bank_concurrency.py``, not collected by pytest).

Usage: ``python concurrent_writer.py '<json job>'`` with keys ``id`` (this writer), ``n``
(writers in all), ``sync`` (a folder for start signals), ``source`` (a saved bank whose
layers are written), ``result`` (where to write the errors met, as JSON), ``rename_delay`` (seconds added
to every ``os.replace``, :func:`slow_renames`) and ``runs``, a
list of ``{"name", "bank", "layers", "repeats", "mode"}``; ``mode`` is

- ``save``: ``SAEBank.save(bank)`` of ``layers``;
- ``merge``: ``SAEBank.save(bank, merge=True)`` of ``layers``;
- ``locked``: under ``bank_lock(bank)``, read the layers the bank at ``bank`` has beyond
  ``layers``, add ``layers`` and save (what ``trajectory preload`` does).

The SAEs are stand-ins holding the saved tensors and cfg (:class:`StubSAE`), so this
process imports torch but not sae_lens, whose import alone takes 10-30 s on a busy
2-core machine; what is written goes through the real ``SAEBank.save``.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

from trajectory.saes.bank import BankEntry, SAEBank
from trajectory.saes.bank_format import MANIFEST, bank_lock, read_explanations, read_layer, read_manifest


class StubSAE:
    """What :meth:`SAEBank.save` reads of an sae-lens SAE: tensors, ``cfg``, ``W_enc``."""

    def __init__(self, tensors, record):
        self.tensors = tensors
        self.W_enc = tensors["W_enc"]
        self.cfg = SimpleNamespace(
            d_in=record["d_in"], d_sae=record["d_sae"],
            architecture=lambda: record["architecture"], to_dict=lambda: dict(record["cfg"]),
        )

    def state_dict(self):
        return dict(self.tensors)

    def process_state_dict_for_saving(self, state_dict):
        pass  # the tensors come from a saved file, already in saved form


def read_bank(path: Path, layers) -> SAEBank:
    """Layers ``layers`` of the bank at ``path`` with :class:`StubSAE` SAEs."""
    manifest = read_manifest(path)
    entries = {}
    for layer in layers:
        m = manifest["layers"][str(layer)]
        entries[layer] = BankEntry(
            layer=layer, sae=StubSAE(read_layer(path, m, verify="size"), m), hook_name=m["hook_name"],
            source=m["source"], neuronpedia_id=m["neuronpedia_id"], metrics=m["metrics"],
            explanations=read_explanations(path, layer),
        )
    return SAEBank(entries, model_name=manifest["model_name"], preset=manifest["preset"],
                   metadata=manifest["metadata"])


def save_locked(bank: SAEBank, path: Path) -> None:
    """Read the other layers of the bank at ``path``, add ``bank``'s, save: under the lock."""
    with bank_lock(path):
        others = []
        if (path / MANIFEST).is_file():
            others = [int(k) for k in read_manifest(path)["layers"] if int(k) not in bank]
        merged = read_bank(path, others).entries if others else {}
        SAEBank({**merged, **bank.entries}, model_name=bank.model_name, preset=bank.preset,
                metadata=bank.metadata).save(path)


def wait_for_all(sync: Path, name: str, me: int, n: int) -> None:
    """Start run ``name`` together with the other writers (so that their saves overlap)."""
    (sync / f"{name}-{me}").touch()
    deadline = time.monotonic() + 120
    while len(list(sync.glob(f"{name}-*"))) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the other writers never reached run {name}")
        time.sleep(0.005)


def slow_renames(seconds: float) -> None:
    """Make every ``os.replace`` take ``seconds`` longer (as on a network filesystem), so
    that the folder swaps of the writers overlap often instead of once in a while."""
    real = os.replace

    def replace(src, dst, **kw):
        time.sleep(seconds)
        return real(src, dst, **kw)

    os.replace = replace


def main(job: dict) -> None:
    sync = Path(job["sync"])
    slow_renames(job.get("rename_delay", 0.0))
    errors: dict[str, list[str]] = {}
    for run in job["runs"]:
        bank = read_bank(Path(job["source"]), run["layers"])
        path = Path(run["bank"])
        wait_for_all(sync, run["name"], job["id"], job["n"])
        errors[run["name"]] = []
        for _ in range(run["repeats"]):
            try:
                if run["mode"] == "locked":
                    save_locked(bank, path)
                else:
                    bank.save(path, **({"merge": True} if run["mode"] == "merge" else {}))
            except Exception:  # noqa: BLE001 - every failure is reported to the test
                errors[run["name"]].append(traceback.format_exc(limit=3))
    Path(job["result"]).write_text(json.dumps(errors), encoding="utf-8")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))

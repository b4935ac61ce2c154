"""evolve_many: one file per prompt, resumable after an interruption, refusing files of
other settings or SAEs unless told to overwrite."""
from __future__ import annotations

import numpy as np
import pytest

from trajectory.evolution.batch import evolve_many


def test_evolve_many_resumes_after_interruption(tiny_model, tiny_bank, tmp_path, monkeypatch):
    import trajectory.evolution.batch as batch
    from trajectory.evolution.result import Evolution

    prompts = ["the dark room", "mark gave flashlight to", "smith left ."]
    real = batch.evolve
    calls = []

    def crashing(model, bank, prompt, **kw):
        calls.append(prompt)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, bank, prompt, **kw)

    monkeypatch.setattr(batch, "evolve", crashing)
    with pytest.raises(KeyboardInterrupt):
        evolve_many(tiny_model, tiny_bank, prompts, tmp_path, k=5, progress=False)
    first = tmp_path / "prompt_0000.safetensors"
    assert first.exists() and not (tmp_path / "prompt_0001.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written files
    mtime = first.stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(batch, "evolve", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    paths = evolve_many(tiny_model, tiny_bank, prompts, tmp_path, k=5, progress=False)
    assert len(calls) == 2  # only the two missing prompts
    assert first.stat().st_mtime_ns == mtime
    evos = [Evolution.load(p) for p in paths]
    assert [e.tokens[1:] for e in evos] == [p.split() for p in prompts]
    assert [e.metadata["prompt"] for e in evos] == prompts
    fresh = real(tiny_model, tiny_bank, prompts[1], k=5, progress=False)
    for L in fresh.layers:
        np.testing.assert_array_equal(evos[1].rows[L].indices, fresh.rows[L].indices)

    calls.clear()
    evolve_many(tiny_model, tiny_bank, prompts, tmp_path, k=5, progress=False)
    assert calls == []  # all done: nothing recomputed
    paths[2].write_bytes(b"garbage")  # a corrupt file is recomputed
    evolve_many(tiny_model, tiny_bank, prompts, tmp_path, k=5, progress=False)
    assert len(calls) == 1 and Evolution.load(paths[2]).k == 5
    with pytest.raises(ValueError, match="other settings.*--overwrite"):
        evolve_many(tiny_model, tiny_bank, prompts, tmp_path, k=7, progress=False)
    # same prompts and settings, other SAEs: the old files are not silently kept
    from trajectory.testing import tiny_bank as make_bank

    other = make_bank(tiny_model, seed=7, d_sae=32)
    with pytest.raises(ValueError, match="SAE bank.*--overwrite"):
        evolve_many(tiny_model, other, prompts, tmp_path, k=5, progress=False)
    calls.clear()
    evolve_many(tiny_model, other, prompts, tmp_path, k=5, progress=False, overwrite=True)
    assert len(calls) == 3 and Evolution.load(paths[0]).metadata["saes"]["0"]["d_sae"] == 32

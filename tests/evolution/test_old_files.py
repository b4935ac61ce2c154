"""Files written before the restructuring read back and equal what the code computes now.

``tests/data/v1/evolution.safetensors`` was written by the earlier code with
``evolve(tiny_model(), tiny_bank(tiny_model()), PROMPT, k=8, progress=False)``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trajectory.evolution.result import FORMAT_VERSION, Evolution

OLD = Path(__file__).resolve().parents[1] / "data" / "v1" / "evolution.safetensors"
PROMPT = "mark gave the flashlight to smith"


@pytest.fixture(scope="module")
def fresh(tiny_model, tiny_bank):
    from trajectory.evolution.engine import evolve

    return evolve(tiny_model, tiny_bank, PROMPT, k=8, progress=False)


def _header(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return json.loads(f.metadata()["trajectory"])


def test_v1_file_loads_and_every_row_equals_a_fresh_evolution(fresh):
    old = Evolution.load(OLD)
    assert (old.tokens, old.token_ids, old.layers, old.k) == (fresh.tokens, fresh.token_ids, fresh.layers, fresh.k)
    assert (old.model_name, old.preset, old.postnorm) == (fresh.model_name, fresh.preset, fresh.postnorm)
    assert old.metadata["prompt"] == PROMPT and old.metadata["saes"] == fresh.metadata["saes"]
    rows = 0
    for L in fresh.layers:
        for n in fresh.prefix_lengths:
            for s in range(n + 2):
                (old_idx, old_val), (new_idx, new_val) = old.topk(n, L, s), fresh.topk(n, L, s)
                np.testing.assert_array_equal(old_idx, new_idx, err_msg=f"n={n} L={L} step={s}")
                np.testing.assert_allclose(old_val, new_val, rtol=0, atol=1e-6, err_msg=f"n={n} L={L} step={s}")
                assert old.n_active(n, L, s) == fresh.n_active(n, L, s)
                rows += 1
    assert rows == 3 * sum(n + 2 for n in range(2, 8))


def test_new_file_writes_format_version_and_loads_back_equal(fresh, tmp_path):
    path = fresh.save(tmp_path / "evo.safetensors")
    header = _header(path)
    assert header["format_version"] == FORMAT_VERSION and "version" not in header
    assert Evolution.load(path) == fresh


def test_old_version_key_is_read(tmp_path):
    """A header that names its version ``version`` (the older key) reads as ``format_version``."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(OLD), framework="numpy") as f:
        header = json.loads(f.metadata()["trajectory"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    header["version"] = header.pop("format_version")
    path = tmp_path / "old-key.safetensors"
    save_file(tensors, str(path), metadata={"trajectory": json.dumps(header)})
    back, old = Evolution.load(path), Evolution.load(OLD)
    assert "version" not in back.metadata
    assert back == old
    header["version"] = FORMAT_VERSION + 1
    save_file(tensors, str(path), metadata={"trajectory": json.dumps(header)})
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1}; upgrade trajectory"):
        Evolution.load(path)

"""An engine result written to disk reads back identical, without a model."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from trajectory.evolution.result import Evolution, row_offset

PROMPT = "mark gave flashlight to max and smith left"


@pytest.fixture(scope="module")
def evo(tiny_model, tiny_bank):
    from trajectory.evolution.engine import evolve

    return evolve(tiny_model, tiny_bank, PROMPT, k=7, progress=False)


def test_save_load_round_trip_identical(evo, tmp_path):
    path = evo.save(tmp_path / "sub" / "evo.safetensors")
    back = Evolution.load(path)
    assert back == evo
    for L in evo.layers:
        for n in evo.prefix_lengths:
            for s in range(n + 2):
                a, b = evo.topk(n, L, s), back.topk(n, L, s)
                np.testing.assert_array_equal(a[0], b[0])
                np.testing.assert_array_equal(a[1], b[1])
    assert back.steps(3) == ["initial", "key 0 '<bos>'", "key 1 'mark'", "key 2 'gave'", "mlp"]
    assert [p.name for p in path.parent.iterdir()] == ["evo.safetensors"]  # atomic: no temp left


def test_file_header_and_layout(evo, tmp_path):
    from safetensors import safe_open

    path = evo.save(tmp_path / "evo.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        header = json.loads(f.metadata()["trajectory"])
        names = set(f.keys())
        rows = row_offset(evo.n_tokens + 1)
        assert f.get_tensor("L0.offsets").shape == (rows + 1,)
        assert f.get_tensor("L0.indices").dtype == np.int32
        assert f.get_tensor("L2.values").dtype == np.float32
    assert names == {f"L{L}.{t}" for L in (0, 1, 2) for t in ("indices", "values", "offsets", "n_active")}
    assert header["tokens"] == ["<bos>"] + PROMPT.split()
    assert header["model_name"] == "tiny-gemma2" and header["k"] == 7 and header["layers"] == [0, 1, 2]
    assert header["postnorm"] == "per_partial_sum"
    assert header["versions"]["torch"] and header["versions"]["sae-lens"]
    assert header["settings"]["k"] == 7 and header["saes"]["1"]["architecture"] == "JumpReLUSAE"
    assert len(json.dumps(header)) < 4000  # lists of features live in tensors, not JSON


def test_load_needs_no_model(evo, tmp_path):
    path = evo.save(tmp_path / "evo.safetensors")
    code = (
        "import sys; from trajectory.evolution.result import Evolution; "
        f"e = Evolution.load({str(path)!r}); print(e.topk(4, 1, 'mlp')[0].tolist()); "
        "assert 'transformer_lens' not in sys.modules and 'sae_lens' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(evo.topk(4, 1, "mlp")[0].tolist())


def test_accessors_on_engine_output(evo):
    idx, val = evo.topk(5, 2, "initial")
    assert len(idx) <= 7 and np.all(np.diff(val) <= 0)
    feature = int(evo.topk(evo.n_tokens, 0, "mlp")[0][0])
    ranks = evo.feature_ranks(evo.n_tokens, 0, feature)
    assert len(ranks) == evo.n_tokens + 2 and ranks[-1] == 1
    table = evo.to_table(pandas=False)
    assert len(table) == sum(len(r.indices) for r in evo.rows.values())


def test_step_labels_are_accepted_as_steps(evo):
    n = evo.n_tokens
    for s, label in enumerate(evo.steps(n)):
        assert evo.step_index(n, label) == s
        assert evo.topk(n, 1, label)[0].tolist() == evo.topk(n, 1, s)[0].tolist()
    assert evo.step_index(n, ("key", 2)) == evo.step_index(n, evo.steps(n)[3])
    with pytest.raises(ValueError, match=r"label of evo.steps"):
        evo.step_index(n, "key 99 'nothing'")


def test_corrupt_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable trajectory evolution file"):
        Evolution.load(bad)


def test_step_labels_stored_for_other_readers(evo, tmp_path):
    from safetensors import safe_open

    path = evo.save(tmp_path / "evo.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        header = json.loads(f.metadata()["trajectory"])
    assert sorted(int(n) for n in header["steps"]) == list(evo.prefix_lengths)
    assert header["steps"]["3"] == ["initial", "key 0 '<bos>'", "key 1 'mark'", "key 2 'gave'", "mlp"]
    assert all(len(header["steps"][str(n)]) == n + 2 for n in evo.prefix_lengths)


@pytest.mark.parametrize("damage", ["drop_tensor", "short_offsets", "offsets_past_end"])
def test_malformed_layout_is_a_clear_error(evo, tmp_path, damage):
    """A file that parses but whose tensors break the documented layout is refused by name."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = evo.save(tmp_path / "evo.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if damage == "drop_tensor":
        del tensors["L1.values"]
    elif damage == "short_offsets":
        tensors["L0.offsets"] = tensors["L0.offsets"][:-3].copy()
    else:
        tensors["L2.offsets"] = tensors["L2.offsets"].copy()
        tensors["L2.offsets"][-1] += 5
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match=r"not a valid trajectory evolution file.*re-run `trajectory evolve`"):
        Evolution.load(path)


def _rewrite_header(path, change):
    """Rewrite the file at ``path`` with ``change(header)`` applied to its JSON header."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="numpy") as f:
        header = json.loads(f.metadata()["trajectory"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(header)
    save_file(tensors, str(path), metadata={"trajectory": json.dumps(header)})


@pytest.mark.parametrize(
    "field, change",
    [
        ("format_version", lambda h: h.pop("format_version")),
        ("format_version", lambda h: h.update(format_version="1")),
        ("tokens", lambda h: h.pop("tokens")),
        ("tokens", lambda h: h.update(tokens="<bos> mark")),
        ("token_ids", lambda h: h.pop("token_ids")),
        ("token_ids", lambda h: h.update(token_ids=h["token_ids"][:-1])),
        ("layers", lambda h: h.pop("layers")),
        ("layers", lambda h: h.update(layers=["0", "1"])),
        ("k", lambda h: h.pop("k")),
        ("k", lambda h: h.update(k="7")),
        ("k", lambda h: h.update(k=True)),
        ("model_name", lambda h: h.update(model_name=3)),
        ("preset", lambda h: h.update(preset=["offline"])),
        ("postnorm", lambda h: h.update(postnorm="layernorm")),
        ("steps", lambda h: h.update(steps=[])),
        ("versions", lambda h: h.update(versions="torch 2")),
        ("settings", lambda h: h.update(settings=None)),
    ],
)
def test_malformed_header_names_the_field(evo, tmp_path, field, change):
    path = evo.save(tmp_path / "evo.safetensors")
    _rewrite_header(path, change)
    with pytest.raises(ValueError, match=rf"not a valid trajectory evolution file \(header field.*'{field}'"):
        Evolution.load(path)


def test_header_that_is_not_an_object_is_a_clear_error(evo, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = evo.save(tmp_path / "evo.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={"trajectory": json.dumps(["trajectory-evolution"])})
    with pytest.raises(ValueError, match="not a readable trajectory evolution file"):
        Evolution.load(path)


@pytest.mark.parametrize("pandas", [False, True])
def test_table_rows_hold_the_values_of_topk(evo, pandas):
    """Every row of the tidy table, value by value, against a table built here from
    ``evo.topk``: ranks 1-based (1 = strongest), features and activations in order, step
    labels naming the key token, and nothing else."""
    if pandas:
        pytest.importorskip("pandas")
    expected = []
    for layer in (0, 1, 2):
        for n in range(2, len(PROMPT.split()) + 2):
            labels = ["initial"] + [f"key {j} {evo.tokens[j]!r}" for j in range(n)] + ["mlp"]
            for s, label in enumerate(labels):
                idx, val = evo.topk(n, layer, s)
                for position in range(len(idx)):
                    expected.append((n, layer, s, label, position + 1, int(idx[position]), float(val[position])))
    table = evo.to_table(pandas=pandas)
    rows = table.to_dict("records") if pandas else table
    got = [(r["n"], r["layer"], r["step"], r["step_label"], r["rank"], r["feature"], r["activation"]) for r in rows]
    assert got == expected
    assert {r[4] for r in got if r[2] == 0 and r[0] == 2 and r[1] == 0} == set(range(1, len(evo.topk(2, 0, 0)[0]) + 1))
    assert [r[3] for r in got if (r[0], r[1], r[4]) == (3, 1, 1)][1:4] == ["key 0 '<bos>'", "key 1 'mark'", "key 2 'gave'"]

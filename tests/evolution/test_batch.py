"""evolve_many: one file per prompt, resumable after an interruption, refusing files of
other settings or SAEs unless told to overwrite."""
from __future__ import annotations

import numpy as np
import pytest

from trajectory.evolution.batch import evolve_many, prompt_file_name


def test_evolve_many_resumes_after_interruption(tiny_model, tiny_bank, tmp_path, monkeypatch):
    import trajectory.evolution.batch as batch
    from trajectory.evolution.result import Evolution

    prompts = ["the dark room", "mark gave flashlight to", "smith left ."]  # 4, 5, 4 tokens
    real = batch.evolve_batch
    calls = []

    def crashing(model, bank, group, **kw):
        calls.append(list(group))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, bank, group, **kw)

    monkeypatch.setattr(batch, "evolve_batch", crashing)
    with pytest.raises(KeyboardInterrupt):  # groups by length: [dark room, smith left], [mark gave ...]
        evolve_many(tiny_model, tiny_bank, prompts, tmp_path, k=5, batch_size=2, progress=False)
    assert calls[0] == [prompts[0], prompts[2]]
    first = tmp_path / prompt_file_name(prompts[0])
    assert first.exists() and (tmp_path / prompt_file_name(prompts[2])).exists()
    assert not (tmp_path / prompt_file_name(prompts[1])).exists() and not (tmp_path / "index.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written files
    mtime = first.stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(batch, "evolve_batch", lambda m, b, group, **kw: (calls.extend(group), real(m, b, group, **kw))[1])
    paths = evolve_many(tiny_model, tiny_bank, prompts, tmp_path, k=5, progress=False)
    assert calls == [prompts[1]]  # only the missing prompt
    assert first.stat().st_mtime_ns == mtime
    evos = [Evolution.load(p) for p in paths]
    assert [e.tokens[1:] for e in evos] == [p.split() for p in prompts]
    assert [e.metadata["prompt"] for e in evos] == prompts
    from trajectory.evolution.engine import evolve

    fresh = evolve(tiny_model, tiny_bank, prompts[1], k=5, progress=False)
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


def _snapshot(folder):
    """Name -> (size, mtime) of every file in ``folder``: what a refused run must leave as it was."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def _counting(monkeypatch, calls):
    """Make ``evolve_many`` record the prompt of every evolution it computes."""
    import trajectory.evolution.batch as batch

    real = batch.evolve_batch
    monkeypatch.setattr(batch, "evolve_batch",
                        lambda model, bank, group, **kw: (calls.extend(group), real(model, bank, group, **kw))[1])


def _index(folder):
    import json

    return json.loads((folder / "index.json").read_text())


def test_files_are_named_by_prompt_hash():
    import hashlib

    for text in ("the dark room", "smith left .", "ünïcode ✓"):
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        assert prompt_file_name(text) == f"prompt_{digest[:12]}.safetensors"


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(k=7), "k 5 .this run: 7"),
        (dict(postnorm="frozen_scale"), "postnorm \"per_partial_sum\" .this run: \"frozen_scale\""),
        (dict(layers=[0, 1]), r"layers \[0\] .this run: \[0, 1\]"),
    ],
)
def test_resume_refuses_every_setting_that_shapes_the_numbers(tiny_model, tiny_bank, tmp_path, monkeypatch, change, named):
    """A rerun with another k, postnorm or layers neither keeps the old files silently nor
    touches anything (the index included) before refusing; --overwrite recomputes them."""
    from trajectory.evolution.result import Evolution

    prompts = ["the dark room", "smith left ."]
    base = dict(k=5, layers=[0], progress=False)
    evolve_many(tiny_model, tiny_bank, prompts, tmp_path, **base)
    before = _snapshot(tmp_path)
    calls = []
    _counting(monkeypatch, calls)
    with pytest.raises(ValueError, match=f"{named}.*nothing was written.*--overwrite"):
        evolve_many(tiny_model, tiny_bank, prompts, tmp_path, **{**base, **change})
    assert calls == [] and _snapshot(tmp_path) == before
    paths = evolve_many(tiny_model, tiny_bank, prompts, tmp_path, overwrite=True, **{**base, **change})
    assert sorted(calls) == sorted(prompts)
    for path in paths:
        evo = Evolution.load(path)
        assert (evo.k, evo.layers, evo.postnorm) == (change.get("k", 5), change.get("layers", [0]),
                                                     change.get("postnorm", "per_partial_sum"))


def test_edited_prompt_file_never_mislabels(tiny_model, tiny_bank, tmp_path, monkeypatch):
    """Reordering and editing the prompt set keeps the finished prompts' files and maps
    every prompt of the index to the file that holds it."""
    from trajectory.evolution.result import Evolution

    evolve_many(tiny_model, tiny_bank, ["the dark room", "mark gave flashlight to", "smith left ."], tmp_path,
                k=5, layers=[0], progress=False)
    calls = []
    _counting(monkeypatch, calls)
    edited = ["smith left .", "the empty room", "the dark room"]
    paths = evolve_many(tiny_model, tiny_bank, edited, tmp_path, k=5, layers=[0], progress=False)
    assert calls == ["the empty room"]  # the two finished prompts are kept, wherever they moved
    index = _index(tmp_path)
    assert [e["prompt"] for e in index] == edited and [tmp_path / e["file"] for e in index] == paths
    for entry in index:
        evo = Evolution.load(tmp_path / entry["file"])
        assert evo.metadata["prompt"] == entry["prompt"] and evo.tokens[1:] == entry["prompt"].split()


def test_too_long_prompt_is_reported_and_the_rest_done(tiny_model, tiny_bank, tmp_path, caplog):
    from trajectory.evolution.result import Evolution

    prompts = ["the dark room", "the final correct answer : max , mark", "smith left ."]
    with caplog.at_level("WARNING", logger="trajectory.evolution.batch"):
        paths = evolve_many(tiny_model, tiny_bank, prompts, tmp_path, k=5, layers=[0], max_tokens=5, progress=False)
    assert [Evolution.load(p).metadata["prompt"] for p in paths] == [prompts[0], prompts[2]]
    index = _index(tmp_path)
    assert [e["file"] for e in index] == [paths[0].name, None, paths[1].name]
    assert "9 tokens" in index[1]["error"] and "max_tokens=5" in index[1]["error"]
    assert "9 tokens" in caplog.text and "the final correct answer" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in paths] + ["index.json"])
    # none can be evolved: a clear error, and nothing at all is written
    empty = tmp_path / "none"
    with pytest.raises(ValueError, match="none of the 2 prompt.*max_tokens=3"):
        evolve_many(tiny_model, tiny_bank, prompts[:2], empty, k=5, layers=[0], max_tokens=3, progress=False)
    assert not empty.exists()
    for nothing in ([], "the dark room"):  # a bare string is not a list of prompts
        with pytest.raises(ValueError, match="non-empty list of prompts"):
            evolve_many(tiny_model, tiny_bank, nothing, empty, k=5, progress=False)
    assert not empty.exists()


def test_work_bound_applies_to_each_prompt(tiny_model, tiny_bank, tmp_path):
    """``max_rows`` (step rows of all layers) refuses the long prompt, before any work."""
    prompts = ["the dark room", "the final correct answer : max , mark"]  # 4 and 9 tokens
    rows = {n_tok: 2 * sum(n + 2 for n in range(2, n_tok + 1)) for n_tok in (4, 9)}  # two layers
    assert rows == {4: 30, 9: 120}  # 2·(4+5+6), 2·(4+5+...+11)
    paths = evolve_many(tiny_model, tiny_bank, prompts, tmp_path, k=5, layers=[0, 1], max_rows=50, progress=False)
    assert len(paths) == 1
    assert "120 step rows" in _index(tmp_path)[1]["error"] and "max_rows=50" in _index(tmp_path)[1]["error"]


def test_folder_of_positional_files_is_read_by_content(tiny_model, tiny_bank, tmp_path, monkeypatch):
    """Files of the earlier layout (``prompt_0000``, an index of positions) are matched by
    the prompt each records, never by position: a swapped pair is reused correctly, a file
    of other settings is left alone and the prompt recomputed."""
    import json

    from trajectory.evolution.engine import evolve
    from trajectory.evolution.result import Evolution

    a, b, c = "the dark room", "smith left .", "mark gave flashlight to"
    # as the earlier code left a folder after the prompt file was reordered: position 0 holds b
    evolve(tiny_model, tiny_bank, b, k=5, layers=[0], progress=False).save(tmp_path / "prompt_0000.safetensors")
    evolve(tiny_model, tiny_bank, a, k=5, layers=[0], progress=False).save(tmp_path / "prompt_0001.safetensors")
    evolve(tiny_model, tiny_bank, c, k=9, layers=[0], progress=False).save(tmp_path / "prompt_0002.safetensors")
    (tmp_path / "index.json").write_text(json.dumps([dict(prompt=p, file=f"prompt_{i:04d}.safetensors")
                                                     for i, p in enumerate([a, b, c])]))
    calls = []
    _counting(monkeypatch, calls)
    paths = evolve_many(tiny_model, tiny_bank, [a, b, c], tmp_path, k=5, layers=[0], progress=False)
    assert calls == [c]  # a and b reused, c had k=9
    assert [Evolution.load(p).metadata["prompt"] for p in paths] == [a, b, c]
    assert [e["file"] for e in _index(tmp_path)] == [p.name for p in paths]
    assert Evolution.load(tmp_path / "prompt_0002.safetensors").k == 9  # left alone
    assert not (tmp_path / "prompt_0000.safetensors").exists() and not (tmp_path / "prompt_0001.safetensors").exists()


def test_bank_of_another_model_is_refused_before_writing(tiny_model, tiny_bank, tmp_path):
    from trajectory.saes.bank import SAEBank

    other = SAEBank(tiny_bank.entries, model_name="google/gemma-3-270m")
    with pytest.raises(ValueError, match="made for 'google/gemma-3-270m'.*'tiny-gemma2'.*--allow-other-model"):
        evolve_many(tiny_model, other, ["the dark room"], tmp_path / "out", k=5, layers=[0], progress=False)
    assert not (tmp_path / "out").exists()
    paths = evolve_many(tiny_model, other, ["the dark room"], tmp_path / "out", k=5, layers=[0], progress=False,
                        allow_other_model=True)
    from trajectory.evolution.result import Evolution

    evo = Evolution.load(paths[0])
    assert evo.model_name == "tiny-gemma2" and evo.metadata["bank_model_name"] == "google/gemma-3-270m"


@pytest.mark.parametrize("hook", ["blocks.{layer}.hook_mlp_out", "blocks.{layer}.attn.hook_z",
                                  "blocks.{layer}.hook_attn_out"])
def test_banks_off_the_residual_stream_are_refused(tiny_model, tmp_path, hook):
    """The evolution encodes resid_pre + attention sums: SAEs on other hooks do not fit,
    refused (by evolve and evolve_many, before writing) with the accepted hooks named."""
    from trajectory.evolution.engine import evolve
    from trajectory.testing import tiny_bank

    bank = tiny_bank(tiny_model, d_sae=16, hook_template=hook)
    named = (r"reads 'blocks\.0\..*'; the evolution accepts SAEs on layer 0's residual stream only "
             r"\(blocks\.0\.hook_resid_pre, blocks\.0\.hook_resid_mid or blocks\.0\.hook_resid_post\)")
    with pytest.raises(ValueError, match=named):
        evolve(tiny_model, bank, "the dark room", k=5, layers=[0], progress=False)
    with pytest.raises(ValueError, match=named):
        evolve_many(tiny_model, bank, ["the dark room"], tmp_path / "out", k=5, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("position", ["pre", "mid", "post"])
def test_residual_stream_banks_are_accepted(tiny_model, position):
    from trajectory.evolution.engine import evolve
    from trajectory.testing import tiny_bank

    bank = tiny_bank(tiny_model, d_sae=16, hook_template="blocks.{layer}.hook_resid_" + position)
    evo = evolve(tiny_model, bank, "the dark room", k=5, layers=[1], progress=False)
    assert evo.layers == [1] and evo.metadata["saes"]["1"]["hook_name"] == f"blocks.1.hook_resid_{position}"
    with pytest.raises(ValueError, match="reads 'blocks.1.hook_resid_post'.*layer 0's residual stream only"):
        shifted = tiny_bank(tiny_model, d_sae=16)
        shifted.entries[0].hook_name = "blocks.1.hook_resid_post"  # another layer's stream
        evolve(tiny_model, shifted, "the dark room", k=5, layers=[0], progress=False)

"""Hostile inputs through the command users run (a subprocess): each gets a clear error
naming the problem, before any model loads, and nothing is written or lost."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.graph.test_build import make_evolution

PROMPT = "mark gave flashlight to"


def trajectory(*args, cwd=None, timeout=120):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "trajectory", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def assert_clear_error(res, *fragments):
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    for fragment in fragments:
        assert fragment in res.stderr, res.stderr


def test_evolve_output_paths_are_checked_before_the_model_loads(tmp_path):
    start = time.perf_counter()
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert_clear_error(trajectory("evolve", "--prompt", PROMPT, "--out", folder), "is an existing folder")
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    assert_clear_error(trajectory("evolve", "--prompt", PROMPT, "--out", blocker / "evo.safetensors"),
                       "which is a file")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n")
    assert_clear_error(trajectory("evolve", "--prompt-file", prompts, "--out", blocker), "is an existing file")
    assert blocker.read_text() == "keep me" and list(folder.iterdir()) == []
    # no model was loaded: loading Gemma alone takes longer than these three runs together
    assert time.perf_counter() - start < 60


def test_evolve_refuses_to_replace_another_prompts_file(tmp_path):
    evo = make_evolution()
    evo.metadata["prompt"] = "an older prompt"
    path = evo.save(tmp_path / "evo.safetensors")
    before = path.read_bytes()
    assert_clear_error(trajectory("evolve", "--prompt", PROMPT, "--out", path), "another prompt", "--overwrite")
    assert path.read_bytes() == before


def test_cuda_on_a_cpu_machine(tmp_path, tiny_bank):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    bank = tiny_bank.save(tmp_path / "bank")
    res = trajectory("evolve", "--bank", bank, "--device", "cuda", "--prompt", PROMPT, "--out", tmp_path / "e.st")
    assert_clear_error(res, "no CUDA GPU is usable", "--device cpu")
    assert "tl_name" not in res.stderr


def test_graph_output_paths(tmp_path):
    evo_path = make_evolution().save(tmp_path / "evo.safetensors")
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    assert_clear_error(trajectory("graph", evo_path, "--out", blocker), "is an existing file")
    assert_clear_error(trajectory("graph", evo_path, "--out", blocker / "sub"), "which is a file")
    out = tmp_path / "out"
    (out / "graph.png").mkdir(parents=True)
    assert_clear_error(trajectory("graph", evo_path, "--out", out, "--no-explanations"), "'graph.png'")
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("field, value, fragment", [
    ("k", '"seven"', "'k'"),
    ("tokens", "5", "'tokens'"),
])
def test_malformed_evolution_header(tmp_path, field, value, fragment):
    """A header field of the wrong type: a clear error, not a traceback from deep inside."""
    import json

    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    path = make_evolution().save(tmp_path / "evo.safetensors")
    with safe_open(str(path), "np") as fh:
        header = json.loads(fh.metadata()["trajectory"])
    header[field] = json.loads(value)
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(path)), str(bad), metadata={"trajectory": json.dumps(header)})
    assert_clear_error(trajectory("graph", bad, "--out", tmp_path / "g"), fragment)
    assert not (tmp_path / "g").exists()


def test_stale_temp_files_of_a_killed_run_are_cleaned(tmp_path):
    """A run killed with SIGKILL leaves its temporary files; the next run removes them (only ours)."""
    evo_path = make_evolution().save(tmp_path / "evo.safetensors")
    out = tmp_path / "out"
    (out / "evolution").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [out / f".graph.png.{dead.pid}-abcd1234.tmp.png", out / "evolution" / f".layer_05.png.{dead.pid}-x9k2m7ab.tmp.png"]
    for path in stale:
        path.write_bytes(b"half a picture")
    mine = out / "notes.tmp.png"
    mine.write_text("a user's file")
    res = trajectory("graph", evo_path, "--out", out, "--no-explanations", "--formats", "png")
    assert res.returncode == 0, res.stderr
    assert not any(p.exists() for p in stale) and mine.exists()
    assert not [p.name for p in out.rglob(".*.tmp*")]

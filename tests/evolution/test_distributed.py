"""Stage 2 on a local Ray cluster with the tiny fixtures: the folder equals the sequential
run's (same tensors, same index), a worker killed mid-run loses nothing and doubles
nothing, clear errors. One cluster for the module (Ray starts slowly)."""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is the optional extra: pip install 'trajectory[distributed]'")

from safetensors.numpy import load_file

from trajectory.evolution.batch import evolve_many, prompt_file_name
from trajectory.evolution.distributed import (
    WORKER_NAME,
    RayOptions,
    WorkerSpec,
    evolve_many_ray,
)
from trajectory.pipeline import EvolveConfig
from trajectory.saes.bank import SAEBank
from trajectory.testing import tiny_bank, tiny_model

#: different token counts (2..12 with BOS), so that groups of similar length form
PROMPTS = [
    "mark gave flashlight to",
    "the dark room",
    "smith left .",
    "max , mark and smith are in the empty dark room",
    "mark",
    "the final correct answer : max",
    "smith gave",
]
#: too long for max_tokens=12: reported and listed with its reason, the others done
TOO_LONG = "the final correct answer : max , mark and smith are in the empty dark room . smith left ."
OPTIONS = dict(k=5, max_tokens=12, device="cpu", preset="offline")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-bank") / "tiny"
    tiny_bank(tiny_model()).save(folder)
    return folder


def _spec(bank_dir) -> WorkerSpec:
    config = EvolveConfig(preset="offline", bank=str(bank_dir), device="cpu", k=OPTIONS["k"],
                          max_tokens=OPTIONS["max_tokens"])
    return WorkerSpec(config, functools.partial(tiny_model, seed=0))


def _sequential(bank_dir, prompts, out, batch_size):
    """The single-process run, with one torch thread as each worker (cpus_per_worker=1)
    has: on CPU the thread count decides the order of float sums, hence the last bits."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _evolve_many(bank_dir, prompts, out, batch_size)
    finally:
        torch.set_num_threads(threads)


def _evolve_many(bank_dir, prompts, out, batch_size):
    return evolve_many(tiny_model(), SAEBank.open(bank_dir), prompts, out, batch_size=batch_size,
                       progress=False, **OPTIONS)


def _assert_same_folder(got, want, prompts):
    """Same index, and every listed file holds exactly the same tensors."""
    index = json.loads((got / "index.json").read_text())
    assert index == json.loads((want / "index.json").read_text())
    assert [entry["prompt"] for entry in index] == list(prompts)  # each prompt once, in order
    for entry in index:
        if entry["file"] is None:
            continue
        a, b = load_file(str(got / entry["file"])), load_file(str(want / entry["file"]))
        assert sorted(a) == sorted(b)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{entry['file']} {name}")


def test_ray_folder_equals_the_sequential_run(cluster, bank_dir, tmp_path):
    prompts = PROMPTS + [TOO_LONG]
    want = tmp_path / "sequential"
    _sequential(bank_dir, prompts, want, batch_size=3)
    got = tmp_path / "ray"
    paths = evolve_many_ray(_spec(bank_dir), prompts, got, options=RayOptions(workers=2), batch_size=3,
                            progress=False)
    assert paths == [got / prompt_file_name(p) for p in PROMPTS]
    _assert_same_folder(got, want, prompts)
    failed = [e for e in json.loads((got / "index.json").read_text()) if e["file"] is None]
    assert [e["prompt"] for e in failed] == [TOO_LONG] and "max_tokens=12" in failed[0]["error"]
    assert not [p for p in got.iterdir() if p.name.startswith(".")]  # no temporary files left
    # the sequential run resumes the Ray run's folder: nothing is recomputed
    stamps = {p.name: p.stat().st_mtime_ns for p in got.glob("prompt_*.safetensors")}
    _sequential(bank_dir, prompts, got, batch_size=3)
    assert {p.name: p.stat().st_mtime_ns for p in got.glob("prompt_*.safetensors")} == stamps


def _busy_worker_pid(timeout: float = 600.0) -> int:
    """The pid of a worker of the running evolve_many_ray while it evolves a group."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in ray.util.list_named_actors():
            if name.startswith(WORKER_NAME):
                info = ray.get(ray.get_actor(name).info.remote(), timeout=timeout)
                if info["busy"]:
                    return info["pid"]
        time.sleep(0.05)
    raise AssertionError("no Ray worker was seen busy")


def test_worker_killed_mid_run_loses_nothing(cluster, bank_dir, tmp_path, caplog):
    """SIGKILL a worker in the middle of a group: Ray restarts it, the group is done again,
    every prompt is in the index exactly once with the sequential run's tensors; a file
    already there (from the sequential run) is kept."""
    prompts = PROMPTS + ["smith " + p for p in PROMPTS if len(p.split()) < 9]  # 13 prompts, one group each
    want = tmp_path / "sequential"
    _sequential(bank_dir, prompts, want, batch_size=1)
    got = tmp_path / "ray"
    got.mkdir()
    kept = got / prompt_file_name(prompts[0])
    kept.write_bytes((want / kept.name).read_bytes())
    stamp = kept.stat().st_mtime_ns
    result: dict = {}

    def run():
        try:
            result["paths"] = evolve_many_ray(_spec(bank_dir), prompts, got, options=RayOptions(workers=2),
                                              batch_size=1, progress=False)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            result["error"] = exc

    caplog.set_level(logging.WARNING, logger="trajectory")
    thread = threading.Thread(target=run)
    thread.start()
    os.kill(_busy_worker_pid(), signal.SIGKILL)
    thread.join(timeout=900)
    assert not thread.is_alive() and "error" not in result, result.get("error")
    assert "died" in caplog.text and "retrying" in caplog.text
    assert result["paths"] == [got / prompt_file_name(p) for p in prompts]
    _assert_same_folder(got, want, prompts)
    assert kept.stat().st_mtime_ns == stamp
    assert not [p for p in got.iterdir() if p.name.startswith(".")]


def test_a_worker_that_cannot_load_is_a_clear_error(cluster, tmp_path):
    spec = _spec(tmp_path / "no-bank")
    with pytest.raises(RuntimeError, match="could not load the model or the SAE bank.*no SAE bank"):
        evolve_many_ray(spec, PROMPTS[:2], tmp_path / "out", options=RayOptions(workers=1), progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_ray_options_are_refused():
    for bad in (dict(workers=0), dict(gpus_per_worker=-1), dict(cpus_per_worker=0), dict(max_attempts=0)):
        with pytest.raises(ValueError, match="must be"):
            RayOptions(**bad)

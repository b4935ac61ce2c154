"""``trajectory evolve`` end to end on the tiny fixtures: options reach the engine
(checked against the library's own result), one file per prompt, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from trajectory.cli import main
from trajectory.evolution.engine import evolve
from trajectory.evolution.result import Evolution

PROMPT = "mark gave flashlight to"


def _same_rows(a: Evolution, b: Evolution) -> None:
    assert a.layers == b.layers and a.tokens == b.tokens and a.k == b.k and a.postnorm == b.postnorm
    for n in a.prefix_lengths:
        for layer in a.layers:
            for step in range(n + 2):
                (ia, va), (ib, vb) = a.topk(n, layer, step), b.topk(n, layer, step)
                np.testing.assert_array_equal(ia, ib)
                np.testing.assert_allclose(va, vb, atol=1e-6)


@pytest.mark.parametrize("postnorm", ["per_partial_sum", "frozen_scale"])
def test_evolve_options_reach_the_engine(tiny_preset, tiny_model, tiny_bank, tiny_bank_dir, tmp_path, capsys,
                                         postnorm):
    out = tmp_path / "one" / "evo.safetensors"
    args = ["evolve", "--preset", "offline", "--bank", str(tiny_bank_dir), "--dtype", "float32", "--k", "5",
            "--layers", "0-1", "--postnorm", postnorm, "--device", "cpu", "--no-progress", "--prompt", PROMPT,
            "--out", str(out)]
    assert main(args) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    got = Evolution.load(out)
    assert got.preset == "offline" and got.metadata["settings"]["k"] == 5
    want = evolve(tiny_model, tiny_bank, PROMPT, k=5, layers=[0, 1], postnorm=postnorm, progress=False)
    _same_rows(got, want)


def test_postnorm_changes_the_result(tiny_preset, tiny_bank_dir, tmp_path):
    """The option is not ignored: the two norms give different lists on this prompt."""
    files = {}
    for postnorm in ("per_partial_sum", "frozen_scale"):
        files[postnorm] = tmp_path / f"{postnorm}.safetensors"
        assert main(["evolve", "--bank", str(tiny_bank_dir), "--k", "5", "--postnorm", postnorm, "--no-progress",
                     "--prompt", PROMPT, "--out", str(files[postnorm])]) == 0
    a, b = (Evolution.load(p) for p in files.values())
    with pytest.raises(AssertionError):
        _same_rows(a, b)


def test_prompt_file_writes_one_file_per_prompt(tiny_preset, tiny_model, tiny_bank, tiny_bank_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the dark room\n\nsmith left .\n")
    folder = tmp_path / "many"
    assert main(["evolve", "--bank", str(tiny_bank_dir), "--k", "5", "--layers", "0", "--no-progress",
                 "--prompt-file", str(prompts), "--out", str(folder)]) == 0
    assert "wrote 2 evolution file(s)" in capsys.readouterr().out
    import json

    index = json.loads((folder / "index.json").read_text())
    assert [e["prompt"] for e in index] == ["the dark room", "smith left ."]
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors") == sorted(e["file"] for e in index)
    for entry in index:
        _same_rows(Evolution.load(folder / entry["file"]),
                   evolve(tiny_model, tiny_bank, entry["prompt"], k=5, layers=[0], progress=False))


def test_evolve_errors_are_clear(tiny_preset, tiny_bank_dir, tmp_path, capsys):
    out = str(tmp_path / "evo.safetensors")
    common = ["evolve", "--bank", str(tiny_bank_dir), "--k", "5", "--no-progress", "--out", out]
    assert main(common + ["--prompt", " "]) == 1
    assert "prompt is empty" in capsys.readouterr().err
    assert main(common + ["--prompt", "the final correct answer", "--max-tokens", "3"]) == 1
    assert "--max-tokens" in capsys.readouterr().err
    assert main(common + ["--prompt", "the final correct answer", "--max-rows", "10"]) == 1
    assert "--max-rows" in capsys.readouterr().err
    assert main(common + ["--layers", "0-30", "--prompt", "the room"]) == 1
    assert "out of range" in capsys.readouterr().err
    assert main(common + ["--prompt", "a", "--prompt-file", "x.txt"]) == 1
    assert "either --prompt or --prompt-file" in capsys.readouterr().err
    assert main(["evolve", "--bank", str(tmp_path / "no-bank"), "--prompt", "the room", "--no-progress"]) == 1
    assert "run `trajectory preload --preset offline` first" in capsys.readouterr().err
    assert main(["evolve", "--preset", "nope", "--prompt", "the room"]) == 1
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_evolve_script_calls_the_same_command():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "evolve.py"
    res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--postnorm" in res.stdout and "--prompt-file" in res.stdout


def test_bank_of_another_model_is_refused_unless_allowed(tiny_preset, tiny_bank, tmp_path, capsys):
    from trajectory.saes.bank import SAEBank

    other = SAEBank(tiny_bank.entries, model_name="gpt2", metadata=tiny_bank.metadata)
    folder = other.save(tmp_path / "gpt2-bank")
    args = ["evolve", "--bank", str(folder), "--k", "5", "--no-progress", "--prompt", PROMPT,
            "--out", str(tmp_path / "e.safetensors")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "gpt2" in err and "--allow-other-model" in err and not (tmp_path / "e.safetensors").exists()
    assert main(args + ["--allow-other-model"]) == 0
    evo = Evolution.load(tmp_path / "e.safetensors")
    assert evo.model_name != "gpt2" and evo.metadata["bank_model_name"] == "gpt2"


# ----------------------------------------------------------------------------- prompt batches and Ray
def test_batch_size_reaches_evolve_many(tiny_preset, tiny_model, tiny_bank, tiny_bank_dir, tmp_path):
    """--batch-size groups prompts per forward pass exactly as evolve_many(batch_size=...)
    does (same tensors); --encode-batch-size is evolve's step-row batch."""
    from safetensors.numpy import load_file

    from trajectory.evolution.batch import evolve_many

    lines = ["the dark room", "smith left .", "mark gave flashlight to", "mark"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(lines) + "\n")
    folder = tmp_path / "cli"
    assert main(["evolve", "--bank", str(tiny_bank_dir), "--k", "5", "--no-progress", "--prompt-file", str(prompts),
                 "--batch-size", "3", "--encode-batch-size", "7", "--out", str(folder)]) == 0
    want = tmp_path / "lib"
    evolve_many(tiny_model, tiny_bank, lines, want, batch_size=3, encode_batch_size=7, k=5, preset="offline",
                progress=False)
    for name in (p.name for p in want.glob("prompt_*.safetensors")):
        a, b = load_file(str(folder / name)), load_file(str(want / name))
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_ray_options_need_a_prompt_file(tiny_preset, tiny_bank_dir, tmp_path, capsys):
    common = ["evolve", "--bank", str(tiny_bank_dir), "--no-progress", "--out", str(tmp_path / "out")]
    assert main(common + ["--prompt", "the room", "--ray"]) == 1
    assert "--ray runs a prompt set: pass --prompt-file" in capsys.readouterr().err
    assert main(common + ["--prompt", "the room", "--workers", "3"]) == 1
    assert "--workers and --gpus-per-worker need --ray" in capsys.readouterr().err
    assert main(common + ["--prompt", "the room", "--batch-size", "3"]) == 1
    assert "needs --prompt-file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("the dark room\nsmith left .\n")
    return path


def test_ray_without_the_extra_names_it(tiny_bank_dir, tmp_path, capsys, monkeypatch):
    """``import ray`` fails (the extra is not installed): a clear error naming the extra,
    nothing written, no model loaded."""
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # what a missing package looks like to `import ray`
    out = tmp_path / "out"
    assert main(["evolve", "--bank", str(tiny_bank_dir), "--no-progress", "--prompt-file", str(_prompt_file(tmp_path)),
                 "--out", str(out), "--ray", "auto", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "--ray needs Ray" in err and "pip install 'trajectory[distributed]'" in err
    assert not out.exists()


def test_unreachable_ray_address_is_a_clear_error(tiny_bank_dir, tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is the optional extra: pip install 'trajectory[distributed]'")
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    start = time.monotonic()
    assert main(["evolve", "--bank", str(tiny_bank_dir), "--no-progress", "--prompt-file", str(_prompt_file(tmp_path)),
                 "--out", str(out), "--ray", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach a Ray cluster at '127.0.0.1:{port}'" in err and "ray start --head" in err
    assert time.monotonic() - start < 30 and not out.exists()
    assert main(["evolve", "--bank", str(tiny_bank_dir), "--no-progress", "--prompt-file", str(_prompt_file(tmp_path)),
                 "--out", str(out), "--ray", "no-port-here"]) == 1
    assert "is not host:port" in capsys.readouterr().err

"""``trajectory aggregate`` and ``trajectory diff`` end to end on tiny evolution files."""
from __future__ import annotations

import dataclasses

import networkx as nx
import pytest

import trajectory.cli as cli
from trajectory.cli import main

PROMPTS = ["mark gave the flashlight to smith", "mark gave the book to smith", "the cat and the dog are in the room"]


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The two sub-commands in the CLI (whether or not the list names them yet)."""
    mods = [m for m in ("trajectory.cli.aggregate", "trajectory.cli.diff") if m not in cli.SUBCOMMAND_MODULES]
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", cli.SUBCOMMAND_MODULES + mods)


@pytest.fixture(scope="module")
def prompt_dir(tmp_path_factory, tiny_model, tiny_bank):
    from trajectory.evolution.batch import evolve_many

    folder = tmp_path_factory.mktemp("runs") / "set"
    evolve_many(tiny_model, tiny_bank, PROMPTS, folder, k=8, progress=False)
    return folder


def files(prompt_dir, prompt):
    from trajectory.evolution.batch import prompt_file_name

    return prompt_dir / prompt_file_name(prompt)


def test_aggregate_writes_graphs_and_pictures(prompt_dir, tmp_path, capsys):
    from trajectory.graph.aggregate import aggregate_folder
    from trajectory.graph.export import read_graph

    out = tmp_path / "agg"
    assert main(["aggregate", str(prompt_dir), "--T", "8", "--out", str(out), "--no-explanations",
                 "--no-progress", "--top-n", "30"]) == 0
    printed = capsys.readouterr().out
    assert "aggregate of 3 prompts (T=8" in printed
    want = aggregate_folder(prompt_dir, T=8)
    for fmt in ("graphml", "gexf", "json"):
        assert str(out / f"aggregate.{fmt}") in printed
        assert nx.utils.graphs_equal(read_graph(out / f"aggregate.{fmt}"), want), fmt
    assert (out / "aggregate.png").read_bytes()[:4] == b"\x89PNG"
    assert "aggregate-graph" in (out / "aggregate.html").read_text(encoding="utf-8")
    assert (out / "plotly.min.js").is_file()
    # default output folder, explanations looked up offline (none for the tiny SAEs: still fine)
    assert main(["aggregate", str(prompt_dir), "--T", "8", "--offline", "--no-progress"]) == 0
    assert (prompt_dir / "aggregate" / "aggregate.json").is_file()


def test_aggregate_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["aggregate", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "has no index.json" in err and "trajectory evolve --prompt-file" in err
    assert not (empty / "aggregate").exists()  # nothing half-written
    assert main(["aggregate", str(tmp_path / "nowhere")]) == 1
    assert "no prompt-set folder" in capsys.readouterr().err
    assert main(["aggregate", str(empty), "--top-n", "0"]) == 1
    assert "--top-n" in capsys.readouterr().err


def test_diff_writes_graphs_and_pictures(prompt_dir, tmp_path, capsys):
    from trajectory.evolution.result import Evolution
    from trajectory.graph.diff import diff_graph
    from trajectory.graph.export import read_graph

    a, b = files(prompt_dir, PROMPTS[0]), files(prompt_dir, PROMPTS[1])
    out = tmp_path / "diff"
    assert main(["diff", str(a), str(b), "--T", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "first difference at token 4" in printed
    want = diff_graph(Evolution.load(a), Evolution.load(b), T=8)
    for fmt in ("graphml", "gexf", "json"):
        assert nx.utils.graphs_equal(read_graph(out / f"diff.{fmt}"), want), fmt
    assert (out / "diff.png").read_bytes()[:4] == b"\x89PNG" and (out / "diff.html").is_file()
    assert main(["diff", str(a), str(a), "--T", "8", "--out", str(tmp_path / "same")]) == 0
    assert "the prompts are equal: empty diff" in capsys.readouterr().out


def test_diff_errors(prompt_dir, tmp_path, capsys):
    from trajectory.evolution.result import Evolution

    a = files(prompt_dir, PROMPTS[0])
    assert main(["diff", str(a), str(tmp_path / "missing.safetensors")]) == 1
    assert "no evolution file" in capsys.readouterr().err
    other = dataclasses.replace(Evolution.load(files(prompt_dir, PROMPTS[1])), k=4).save(tmp_path / "k4.safetensors")
    assert main(["diff", str(a), str(other), "--out", str(tmp_path / "d")]) == 1
    assert "differ in k" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()

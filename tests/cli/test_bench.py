"""``trajectory bench evolve`` runs the benchmark on the tiny model and writes its rows;
the ratios it prints are the ones it computed from its own timings."""
import json

import pytest

from trajectory.cli import main


def test_bench_evolve_tiny(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "evolve", "--tiny", "--lengths", "6", "--widths", "128", "--layers", "0,2", "--k", "8",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "orig/engine" in text and "floor/engine" in text and f"wrote {out}" in text
    record = json.loads(out.read_text())
    assert record["layers"] == [0, 2] and record["k"] == 8
    (row,) = record["rows"]
    assert row["n_tokens"] == 6 and row["saes"].startswith("random-128")
    assert row["speedup_vs_original"] == pytest.approx(row["original_s"] / row["engine_s"])
    assert row["speedup_vs_floor"] == pytest.approx(row["floor_s"] / row["engine_s"])
    assert row["rows_equal_but_ties"] == 1.0  # the engine's lists are the direct encode's


def test_bench_unknown_target(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "nothing"])
    assert "invalid choice" in capsys.readouterr().err

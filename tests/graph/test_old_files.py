"""Graph files written before the package layout changed read back identically, and equal
the graph built now from the evolution file written at the same time (tests/data/v1)."""
from __future__ import annotations

from pathlib import Path

import pytest

from trajectory.evolution.result import Evolution
from trajectory.graph.build import trajectory_graph
from trajectory.graph.export import export_graph, read_graph

from tests.graph.test_build import assert_same

DATA = Path(__file__).resolve().parents[1] / "data" / "v1"


@pytest.mark.parametrize("fmt", ["graphml", "gexf", "json"])
def test_old_exports_read_back_equal_to_todays_graph(fmt, tmp_path):
    old = read_graph(DATA / f"graph.{fmt}")
    now = trajectory_graph(Evolution.load(DATA / "evolution.safetensors"), T=4)
    assert now.number_of_edges() > 0
    assert_same(old, now)
    again = read_graph(export_graph(now, tmp_path / f"g.{fmt}"))
    assert_same(again, now)


@pytest.mark.parametrize("key", ["version", "format_version"])
def test_newer_export_format_is_refused(tmp_path, key):
    text = (DATA / "graph.graphml").read_text(encoding="utf-8")
    assert '"version": 1' in text  # written before the key was renamed
    path = tmp_path / "new.graphml"
    path.write_text(text.replace('"version": 1', f'"{key}": 99'), encoding="utf-8")
    with pytest.raises(ValueError, match="newer trajectory.*upgrade"):
        read_graph(path)

"""Export round trips: GraphML, GEXF and node-link JSON read back as equal graphs,
attribute types included."""
from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest

from trajectory.graph.export import export_graph, read_graph
from trajectory.graph.build import feature_graph, trajectory_graph

from tests.graph.test_build import make_evolution

FORMATS = ["graphml", "gexf", "json"]


def same_types(a, b, where="") -> None:
    """Exact equality including Python types, recursively (1 != 1.0 != True here)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} {a!r} vs {type(b).__name__} {b!r}"
    if isinstance(a, dict):
        assert list(sorted(a)) == list(sorted(b)), where
        for k in a:
            same_types(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_types(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_round_trip(g, h) -> None:
    assert nx.utils.graphs_equal(g, h)
    assert type(g) is type(h)
    same_types(g.graph, h.graph, "graph")
    for n, d in g.nodes(data=True):
        m = next(x for x in h.nodes if x == n)
        same_types(n, m, f"node id {n}")
        same_types(d, h.nodes[n], f"node {n}")
    for u, v, d in g.edges(data=True):
        same_types(d, h.edges[u, v], f"edge {u}->{v}")


@pytest.fixture(scope="module")
def graphs():
    evo = make_evolution()
    expl = {(1, 100): 'a <script>alert("x")</script> & "quotes"', (0, 400): "ünïcödé → tokens"}
    return {
        "trajectory": trajectory_graph(evo, T=5, include_bos=True, explanations=expl),
        "trajectory_mlp": trajectory_graph(evo, T=5, through="mlp"),
        "feature": feature_graph(evo, T=5, explanations=expl),
    }


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("which", ["trajectory", "trajectory_mlp", "feature"])
def test_round_trip(graphs, tmp_path, fmt, which):
    g = graphs[which]
    path = export_graph(g, tmp_path / f"g.{fmt}")
    assert path.is_file() and path.stat().st_size > 0
    assert_round_trip(g, read_graph(path))


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_awkward_graph(tmp_path, fmt):
    """Mixed node id kinds, None, mixed int/float, GEXF-reserved names, numpy scalars, undirected."""
    g = nx.Graph(name="n", mode="m", flag=False, nothing=None, ratio=0.1, nested={"a": [1, 2.5, None]})
    g.add_node((0, -1), label="L", weight=2, id="x", start=3)
    g.add_node("word", mixed=1)
    g.add_node(7, mixed=1.0, big=2**40, tiny=1e-300, neg=-0.0)
    g.add_edge((0, -1), "word", weight=3, type="t", label=None, id=4, f=np.float32(0.25))
    g.add_edge("word", 7, f=0.5)
    path = export_graph(g, tmp_path / f"g.{fmt}")
    h = read_graph(path)
    g.edges[(0, -1), "word"]["f"] = 0.25  # numpy scalars come back as Python ones
    assert_round_trip(g, h)


def test_format_argument_and_errors(tmp_path, graphs):
    g = graphs["trajectory"]
    p = export_graph(g, tmp_path / "graph.xml", format="graphml")
    assert_round_trip(g, read_graph(p, format="graphml"))
    with pytest.raises(ValueError, match="suffix"):
        export_graph(g, tmp_path / "graph.txt")
    with pytest.raises(ValueError, match="unknown graph format"):
        export_graph(g, tmp_path / "graph.json", format="dot")
    with pytest.raises(FileNotFoundError):
        read_graph(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="multigraph"):
        export_graph(nx.MultiDiGraph([(1, 2)]), tmp_path / "m.json")
    bad = tmp_path / "bad.graphml"
    bad.write_text("<graphml><graph", encoding="utf-8")
    with pytest.raises(ValueError, match="not a readable graphml"):
        read_graph(bad)


def test_files_are_standard(graphs, tmp_path):
    """Other tools can read the files: plain JSON node-link, GraphML/GEXF via networkx without our decoder."""
    g = graphs["trajectory"]
    data = json.loads(export_graph(g, tmp_path / "g.json").read_text(encoding="utf-8"))
    assert {"nodes", "edges", "graph", "directed"} <= set(data)
    raw = nx.read_graphml(export_graph(g, tmp_path / "g.graphml"))
    assert raw.number_of_edges() == g.number_of_edges()
    raw_node = raw.nodes["[3, 1]"]
    assert isinstance(raw_node["newcomers"], str) and raw_node["token_index"] == 3  # scalars stay native
    raw_gexf = nx.read_gexf(export_graph(g, tmp_path / "g.gexf"))
    assert raw_gexf.number_of_edges() == g.number_of_edges()


def test_atomic_write_keeps_old_file_on_failure(graphs, tmp_path):
    path = export_graph(graphs["trajectory"], tmp_path / "g.json")
    before = path.read_bytes()
    bad = nx.DiGraph()
    bad.add_node(1, value=object())  # not JSON-serialisable
    with pytest.raises(TypeError):
        export_graph(bad, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]


def test_json_attribute_named_like_link_keys(tmp_path):
    g = nx.DiGraph()
    g.add_node((1, 2), id="mine", _id=5)
    g.add_edge((1, 2), (3, 4), source="s", target="t")
    h = read_graph(export_graph(g, tmp_path / "g.json"))
    assert_round_trip(g, h)

"""Graph analysis helpers: their docstring examples run (doctest), and the results on a
hand-made evolution's graph match values worked out by hand / by brute force."""
from __future__ import annotations

import doctest

import networkx as nx
import pytest

import trajectory.graph.analysis as ga
import trajectory.graph.build
import trajectory.graph.export
import trajectory.hooks
import trajectory.newcomers
from trajectory.graph.build import trajectory_graph

from tests.graph.test_build import make_evolution


@pytest.mark.parametrize("module", [ga, trajectory.graph.build, trajectory.newcomers, trajectory.graph.export,
                                    trajectory.hooks])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.fixture(scope="module")
def g():
    return trajectory_graph(make_evolution(), T=5)


def brute_force_paths(g, targets):
    """Every source->target path with its summed best_rank (all simple paths; small graph)."""
    sources = [n for n in g if g.in_degree(n) == 0]
    out = []
    for s in sources:
        for t in targets:
            for p in nx.all_simple_paths(g, s, t):
                out.append((sum(g.edges[u, v]["best_rank"] for u, v in zip(p, p[1:])), p))
    return sorted(out)


def test_strongest_paths(g):
    targets = ga.last_token_nodes(g)
    assert targets == [(3, 0), (3, 1)]
    paths = ga.strongest_paths(g, k=10)
    expected = brute_force_paths(g, targets)
    assert [p["cost"] for p in paths] == [float(c) for c, _ in expected]
    assert sorted(map(tuple, (p["nodes"] for p in paths))) == sorted(tuple(p) for _, p in expected)
    best = paths[0]
    # (3,-1)->(3,0) rank 1 is the single cheapest hop
    assert best["nodes"] == [(3, -1), (3, 0)] and best["worst_rank"] == 1 and best["features"] == [200]
    three_hop = next(p for p in paths if p["nodes"] == [(1, -1), (1, 0), (3, 1)])
    assert three_hop["cost"] == 3.0 and three_hop["worst_rank"] == 2 and three_hop["min_trajectories"] == 1
    assert three_hop["tokens"] == [1, 1, 3] and three_hop["features"] == [100, 103]


def test_strongest_paths_custom_weight_and_edge_cases(g):
    # into (3, 1): via (1, 0) costs 1 + 1/2 (the only edge with 2 trajectories), via (2, 0) 1 + 1
    wide = ga.strongest_paths(g, k=2, weight=lambda u, v, d: 1 / d["num_trajectories"], targets=[(3, 1)])
    assert [(p["nodes"], p["cost"]) for p in wide] == [([(1, -1), (1, 0), (3, 1)], 1.5), ([(1, -1), (2, 0), (3, 1)], 2.0)]
    by_rank = ga.strongest_paths(g, k=2, targets=[(3, 1)])
    assert [(p["nodes"], p["cost"]) for p in by_rank] == [([(1, -1), (1, 0), (3, 1)], 3.0), ([(1, -1), (2, 0), (3, 1)], 4.0)]
    assert ga.strongest_paths(nx.DiGraph(), k=3) == []
    assert ga.strongest_paths(g, k=0) == []
    with pytest.raises(ValueError, match="negative"):
        ga.strongest_paths(g, weight=lambda u, v, d: -1.0)


def test_layer_flow(g):
    flow = ga.layer_flow(g)
    assert list(flow) == [0, 1]
    assert flow[0] == dict(edges=4, trajectories=4, best_rank=1, source_tokens=[1, 3], target_tokens=[1, 2, 3],
                           newcomers=2 + 2 + 1)  # nodes (3,0), (1,0), (2,0)
    assert flow[1] == dict(edges=2, trajectories=3, best_rank=1, source_tokens=[1, 2], target_tokens=[3], newcomers=4)


def test_recurring_features():
    g = nx.DiGraph(layers=[0, 1])
    g.add_node((1, 0), layer=0, newcomers=[{"feature": 5, "rank": 3}], mlp_newcomers=[{"feature": 9, "rank": 1}])
    g.add_node((2, 0), layer=0, newcomers=[{"feature": 5, "rank": 2, "explanation": "five"}])
    g.add_node((3, 0), layer=0, newcomers=[{"feature": 5, "rank": 4}, {"feature": 9, "rank": 2}])
    g.add_node((3, 1), layer=1, newcomers=[{"feature": 5, "rank": 1}])
    by_layer = ga.recurring_features(g)
    assert [(r["layer"], r["feature"], r["count"], r["best_rank"], r["explanation"]) for r in by_layer] == [
        (0, 5, 3, 2, "five"), (0, 9, 2, 1, None)]
    assert ga.recurring_features(g, include_mlp=False)[0]["feature"] == 5
    assert len(ga.recurring_features(g, include_mlp=False)) == 1
    across = ga.recurring_features(g, by="feature", min_count=4)
    assert [(r["layer"], r["feature"], r["nodes"]) for r in across] == [(None, 5, [(1, 0), (2, 0), (3, 0), (3, 1)])]
    with pytest.raises(ValueError, match="by must"):
        ga.recurring_features(g, by="token")


def test_compare_graphs(g):
    same = ga.compare_graphs(g, g)
    assert same["edges"]["jaccard"] == 1.0 and same["features"]["only_first"] == []
    small = trajectory_graph(make_evolution(), T=1)
    c = ga.compare_graphs(g, small)
    assert c["edges"]["shared"] == sorted(small.edges)
    assert c["edges"]["jaccard"] == pytest.approx(small.number_of_edges() / g.number_of_edges())
    assert set(c["features"]["only_second"]) == set()
    # by token: a prompt with one more word in front still lines up on the shared words
    shifted = nx.relabel_nodes(g, {n: (n[0] + 1, n[1]) for n in g})
    shifted.graph["tokens"] = ["<bos>", "Z"] + g.graph["tokens"][1:]
    assert ga.compare_graphs(g, shifted)["edges"]["shared"] == []
    by_token = ga.compare_graphs(g, shifted, by="token")
    assert by_token["edges"]["jaccard"] == 1.0 and by_token["nodes"]["only_first"] == []

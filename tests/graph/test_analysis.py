"""Graph analysis helpers: their docstring examples run (doctest), and the results on a
hand-made evolution's graph match values worked out by hand / by brute force."""
from __future__ import annotations

import doctest
import random
import warnings
from fractions import Fraction

import networkx as nx
import pytest

import trajectory.graph.analysis as ga
import trajectory.graph.build
import trajectory.graph.export
import trajectory.hooks
import trajectory.newcomers
from trajectory.graph.build import trajectory_graph

from tests.graph.test_build import make_evolution
from tests.test_newcomers import random_evolution


@pytest.mark.parametrize("module", [ga, trajectory.graph.build, trajectory.newcomers, trajectory.graph.export,
                                    trajectory.hooks])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.fixture(scope="module")
def g():
    return trajectory_graph(make_evolution(), T=5)


def brute_force_paths(g, sources, targets, strength=lambda d: Fraction(1, d["best_rank"])):
    """Every source->target path (networkx.all_simple_paths) with its exact mean edge
    strength (Fractions), best first."""
    out = []
    for s in sources:
        for t in targets:
            for p in (nx.all_simple_paths(g, s, t) if s != t else []):
                edges = list(zip(p, p[1:]))
                out.append((sum(strength(g.edges[e]) for e in edges) / len(edges), p))
    return sorted(out, key=lambda sp: -sp[0])


def assert_top_k(got, g, sources, targets, k, min_length, **kwargs):
    """``got`` are k best paths of ``brute_force_paths`` by mean (any order among exact ties)."""
    every = [(s, p) for s, p in brute_force_paths(g, sources, targets, **kwargs) if len(p) - 1 >= min_length]
    exact = {tuple(p): s for s, p in every}
    assert len(got) == min(k, len(every))
    assert [r["score"] for r in got] == pytest.approx([float(s) for s, _ in every[:k]])
    assert len({tuple(r["nodes"]) for r in got}) == len(got)
    for r in got:
        assert r["score"] == pytest.approx(float(exact[tuple(r["nodes"])]))
        assert r["edges"] == list(zip(r["nodes"], r["nodes"][1:])) and r["length"] == len(r["nodes"]) - 1
    if got:  # every path strictly better than the last one returned is returned
        cut = exact[tuple(got[-1]["nodes"])]
        assert {tuple(p) for s, p in every if s > cut} <= {tuple(r["nodes"]) for r in got}


def random_layered_graph(seed, tokens=6, layers=4, p=0.45):
    """Edges (t, L-1) -> (q, L), t <= q, with random best_rank / num_trajectories."""
    rng = random.Random(seed)
    g = nx.DiGraph(tokens=[f"t{i}" for i in range(tokens)])
    for L in range(layers):
        for q in range(1, tokens):
            for t in range(1, q + 1):
                if rng.random() < p:
                    g.add_edge((t, L - 1), (q, L), best_rank=rng.randint(1, 6), num_trajectories=rng.randint(1, 4),
                               features=[{"feature": rng.randint(0, 99)}])
    g.add_nodes_from((tokens - 1, L) for L in range(layers))
    return g


def test_strongest_paths_hand_graph(g):
    assert ga.last_token_nodes(g) == [(3, 0), (3, 1)]
    # sources (1,-1), (3,-1); into (3,1): via (1,0) ranks 2, 1 -> (1/2 + 1)/2; via (2,0) ranks 1, 3 -> (1 + 1/3)/2;
    # one hop into (3,0): (3,-1) rank 1 -> 1, (1,-1) rank 2 -> 1/2
    paths = ga.strongest_paths(g, k=10)
    assert [(p["nodes"], p["score"]) for p in paths] == [
        ([(1, -1), (1, 0), (3, 1)], 0.75), ([(1, -1), (2, 0), (3, 1)], pytest.approx(2 / 3))]
    best = paths[0]
    assert best["worst_rank"] == 2 and best["min_trajectories"] == 1 and best["length"] == 2
    assert best["tokens"] == [1, 1, 3] and best["features"] == [100, 103]
    assert best["edges"] == [((1, -1), (1, 0)), ((1, 0), (3, 1))]
    one_hop = ga.strongest_paths(g, k=10, min_length=1)
    assert [(p["nodes"], p["score"]) for p in one_hop][::3] == [([(3, -1), (3, 0)], 1.0), ([(1, -1), (3, 0)], 0.5)]
    assert [p["length"] for p in one_hop] == [1, 2, 2, 1]
    assert_top_k(one_hop, g, [(1, -1), (3, -1)], [(3, 0), (3, 1)], 10, 1)


def test_strongest_paths_prefers_longer_paths_with_stronger_edges():
    # one rank-3 hop (mean 1/3, summed ranks 3) against three hops of ranks 1, 1, 2 (mean 5/6, summed ranks 4):
    # a sum of ranks would pick the single hop
    g = nx.DiGraph(tokens=["<bos>", "a", "b", "c"])
    for u, v, r in [((1, -1), (1, 0), 1), ((1, 0), (2, 1), 1), ((2, 1), (3, 2), 2), ((3, 1), (3, 2), 3)]:
        g.add_edge(u, v, best_rank=r, num_trajectories=1)
    paths = ga.strongest_paths(g, k=2, min_length=1)
    assert [len(p["nodes"]) for p in paths] == [4, 2]
    assert [p["score"] for p in paths] == [pytest.approx(5 / 6), pytest.approx(1 / 3)]
    assert [p["nodes"] for p in ga.strongest_paths(g, k=2)] == [[(1, -1), (1, 0), (2, 1), (3, 2)]]
    assert ga.strongest_paths(g, min_length=4) == []


@pytest.mark.parametrize("seed", range(12))
def test_strongest_paths_against_brute_force(seed):
    g = random_layered_graph(seed)
    last = ga.last_token_nodes(g)
    sources = [n for n in g if g.in_degree(n) == 0]
    for k, min_length in [(1, 1), (3, 1), (5, 2), (1000, 1), (1000, 3)]:
        got = ga.strongest_paths(g, k=k, min_length=min_length)
        assert all(p["length"] >= min_length for p in got)
        assert_top_k(got, g, sources, last, k, min_length)
    top = [n for n in last if n[1] == 2]
    assert_top_k(ga.strongest_paths(g, k=4, target_layer=2, source_layer=-1), g,
                 [n for n in g if n[1] == -1], top, 4, 2)
    assert_top_k(ga.strongest_paths(g, k=4, strength="num_trajectories", min_length=1), g, sources, last, 4, 1,
                 strength=lambda d: Fraction(d["num_trajectories"]))
    wide = ga.strongest_paths(g, k=4, strength=lambda u, v, d: d["num_trajectories"] / d["best_rank"])
    assert_top_k(wide, g, sources, last, 4, 2, strength=lambda d: Fraction(d["num_trajectories"], d["best_rank"]))


def test_strongest_paths_returns_long_paths_on_random_graphs():
    """Over the random graphs the best path is often longer than one edge (not a sum's artefact)."""
    lengths = [ga.strongest_paths(random_layered_graph(seed), k=1, min_length=1)[0]["length"] for seed in range(12)]
    assert max(lengths) >= 3 and lengths.count(1) < len(lengths)


@pytest.mark.parametrize("seed", [0, 3])
def test_strongest_paths_on_traced_graphs(seed):
    g = trajectory_graph(random_evolution(seed, N=7, layers=(0, 1, 2, 3)), T=4)
    sources = [n for n in g if g.in_degree(n) == 0]
    assert_top_k(ga.strongest_paths(g, k=6), g, sources, ga.last_token_nodes(g), 6, 2)


def test_strongest_paths_bad_input(g):
    assert ga.strongest_paths(nx.DiGraph(), k=3) == []
    assert ga.strongest_paths(g, k=0) == []
    with pytest.raises(ValueError, match="min_length must be ≥ 1"):
        ga.strongest_paths(g, min_length=0)
    with pytest.raises(ValueError, match="finite"):
        ga.strongest_paths(g, strength=lambda u, v, d: float("nan"))
    with pytest.raises(ValueError, match="no attribute 'width'"):
        ga.strongest_paths(g, strength="width")
    with pytest.raises(ValueError, match="targets or target_layer"):
        ga.strongest_paths(g, targets=[(3, 1)], target_layer=1)
    with pytest.raises(ValueError, match=r"no node at layer 5; its layers are \[0, 1\]"):
        ga.strongest_paths(g, target_layer=5)
    with pytest.raises(ValueError, match="no node at source_layer 7"):
        ga.strongest_paths(g, source_layer=7)
    with pytest.raises(ValueError, match=r"targets \[\(9, 9\)\] are not nodes"):
        ga.strongest_paths(g, targets=[(9, 9)])
    no_rank = nx.DiGraph(tokens=["<bos>", "a"])
    no_rank.add_edge((1, -1), (1, 0))
    no_rank.add_edge((1, 0), (1, 1))
    with pytest.raises(ValueError, match="no best_rank ≥ 1.*strength="):
        ga.strongest_paths(no_rank)
    cycle = nx.DiGraph([((1, 0), (1, 1)), ((1, 1), (1, 0)), ((1, -1), (1, 0))], tokens=["<bos>", "a"])
    nx.set_edge_attributes(cycle, 1, "best_rank")
    with pytest.raises(ValueError, match="acyclic"):
        ga.strongest_paths(cycle)


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
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same prompt: no warning
        same = ga.compare_graphs(g, g)
        small = trajectory_graph(make_evolution(), T=1)
        c = ga.compare_graphs(g, small)
    assert same["edges"]["jaccard"] == 1.0 and same["features"]["only_first"] == []
    assert same["alignment"] == [(0, 0), (1, 1), (2, 2), (3, 3)] and same["first_difference"] is None
    assert c["edges"]["shared"] == sorted(small.edges)
    assert c["edges"]["jaccard"] == pytest.approx(small.number_of_edges() / g.number_of_edges())
    assert set(c["features"]["only_second"]) == set()
    # by token: a prompt with one more word in front still lines up on the shared words
    shifted = nx.relabel_nodes(g, {n: (n[0] + 1, n[1]) for n in g})
    shifted.graph["tokens"] = ["<bos>", "Z"] + g.graph["tokens"][1:]
    with pytest.warns(UserWarning, match=r"differ in length \(4 vs 5 tokens\) and first differ at token 1 \('A' vs 'Z'\)"):
        assert ga.compare_graphs(g, shifted)["edges"]["shared"] == []
    with pytest.warns(UserWarning, match="differ in length"):
        by_token = ga.compare_graphs(g, shifted, by="token")
    assert by_token["edges"]["jaccard"] == 1.0 and by_token["nodes"]["only_first"] == []
    assert by_token["alignment"] == [(0, 0), (1, 2), (2, 3), (3, 4)] and by_token["first_difference"] == 1
    with pytest.raises(ValueError, match="by must"):
        ga.compare_graphs(g, g, by="string")
    with pytest.raises(ValueError, match="needs g.graph\\['tokens'\\] in both graphs"):
        ga.compare_graphs(g, nx.DiGraph(), by="token")


def john_graphs():
    """'John met Mary. John left' and 'Then John met Mary. John left': the first 'John' has no
    leading space, so it matches no token of the second prompt."""
    a = nx.DiGraph(tokens=["<bos>", "John", " met", " Mary", ".", " John", " left"])
    b = nx.DiGraph(tokens=["<bos>", "Then", " John", " met", " Mary", ".", " John", " left"])
    a.add_edge((5, -1), (6, 0), layer=0, features=[{"feature": 7}])  # second ' John' -> ' left'
    a.add_edge((1, -1), (5, 0), layer=0, features=[{"feature": 8}])  # 'John' -> second ' John'
    a.add_edge((3, 0), (6, 1), layer=1, features=[{"feature": 9}])  # ' Mary' -> ' left'
    b.add_edge((6, -1), (7, 0), layer=0, features=[{"feature": 7}])  # second ' John' -> ' left'
    b.add_edge((2, -1), (6, 0), layer=0, features=[{"feature": 8}])  # first ' John' -> second ' John'
    b.add_edge((4, 0), (7, 1), layer=1, features=[{"feature": 5}])  # ' Mary' -> ' left'
    return a, b


def test_compare_graphs_token_alignment():
    a, b = john_graphs()
    with pytest.warns(UserWarning, match="differ in length"):
        c = ga.compare_graphs(a, b, by="token")
    # '<bos>' pairs, then the run ' met' ... ' left'; 'John' / 'Then' / first ' John' stay unpaired
    assert c["alignment"] == [(0, 0), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7)]
    assert c["first_difference"] == 1
    # nodes: 5 of 7 keys shared, only 'John' (1, None, -1) and the first ' John' (None, 2, -1) differ
    assert c["nodes"]["only_first"] == [(1, None, -1)] and c["nodes"]["only_second"] == [(None, 2, -1)]
    assert c["nodes"]["jaccard"] == pytest.approx(5 / 7)
    # edges: ' John' -> ' left' and ' Mary' -> ' left' shared; the two edges into the second ' John' differ
    assert c["edges"]["shared"] == [((3, 4, 0), (6, 7, 1)), ((5, 6, -1), (6, 7, 0))]
    assert c["edges"]["jaccard"] == pytest.approx(2 / 4)
    # features {(0,7), (0,8), (1,9)} vs {(0,7), (0,8), (1,5)}
    assert c["features"]["shared"] == [(0, 7), (0, 8)] and c["features"]["jaccard"] == pytest.approx(2 / 4)


def test_compare_graphs_by_position_warns_and_compares_positions():
    a, b = john_graphs()
    with pytest.warns(UserWarning, match=r"\(7 vs 8 tokens\) and first differ at token 1 \('John' vs 'Then'\).*by='token'"):
        c = ga.compare_graphs(a, b)
    # positions: only (6, 0) is a node of both; no edge in common
    assert c["nodes"]["shared"] == [(6, 0)] and c["nodes"]["jaccard"] == pytest.approx(1 / 11)
    assert c["edges"]["shared"] == [] and c["edges"]["jaccard"] == 0.0
    assert c["features"]["jaccard"] == pytest.approx(2 / 4)  # features ignore positions
    assert c["alignment"] == [(i, i) for i in range(7)] and c["first_difference"] == 1
    same_length = a.copy()
    same_length.graph["tokens"] = ["<bos>", "John", " met", " Anna", ".", " John", " left"]
    with pytest.warns(UserWarning, match=r"prompts first differ at token 3 \(' Mary' vs ' Anna'\)"):
        assert ga.compare_graphs(a, same_length)["edges"]["jaccard"] == 1.0
    prefix = a.copy()
    prefix.graph["tokens"] = a.graph["tokens"] + [" early"]
    with pytest.warns(UserWarning, match="first differ at token 7 \\(one prompt ends there\\)"):
        ga.compare_graphs(a, prefix)

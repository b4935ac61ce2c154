"""Trajectory graphs of hand-made evolutions: exact nodes, edges and attributes;
backward tracing (stops at BOS and the embeddings); feature-level view; and the
traced graph against an independent recursive reference on random evolutions."""
from __future__ import annotations

import networkx as nx
import pytest

from trajectory.evolution.result import Evolution
from trajectory.graph.build import attach_explanations, feature_graph, graph_features, graph_for_prefix, trajectory_graph

from tests.test_newcomers import random_evolution, reference_newcomers


def st(*features):
    return list(features), [float(len(features) - i) for i in range(len(features))]


TOKENS = ["<bos>", "A", "B", "C"]


def make_evolution() -> Evolution:
    e = lambda n: [st() for _ in range(n + 2)]  # noqa: E731
    lists = {
        # node (3, 1): 100 r1 from A, 101 r3 from B, 102 r4 from BOS, 103 r5 from A; 1 is there from the start
        (4, 1): [st(1), st(1, 102), st(100, 1, 102, 103), st(100, 101, 1, 102, 103),
                 st(100, 1, 101, 102, 103), st(600, 100, 1, 101, 102, 103)],
        # node (3, 0): 200 r1 from C itself, 201 r2 from A
        (4, 0): [st(), st(), st(201), st(201), st(200, 201), st(200, 201)],
        # node (1, 0): 300 r1 from BOS, 301 r2 from A itself
        (2, 0): [st(), st(300), st(300, 301), st(300, 301)],
        # node (2, 0): 400 r1 from A
        (3, 0): [st(), st(), st(400), st(400), st(400)],
        # node (2, 1): has newcomers but no traced edge reaches it
        (3, 1): [st(), st(), st(500), st(500), st(500)],
        (2, 1): e(2),
    }
    return Evolution.from_lists(TOKENS, lists, k=10, model_name="hand", preset="test")


@pytest.fixture(scope="module")
def evo():
    return make_evolution()


def fd(feature, rank, activation, first_step, explanation=None):
    return dict(feature=feature, rank=rank, activation=activation, first_step=first_step, explanation=explanation)


def nd(feature, rank, activation, source, first_step, explanation=None):
    return dict(feature=feature, activation=activation, rank=rank, source_token=source, first_step=first_step,
                explanation=explanation)


def edge(t, q, L, feats):
    return ((t, L - 1), (q, L), dict(layer=L, source_token=t, target_token=q, prefix_length=q + 1,
                                     num_trajectories=len(feats), best_rank=min(f["rank"] for f in feats),
                                     features=feats))


def node(t, L, newcomers=(), mlp=()):
    return ((t, L), dict(token_index=t, layer=L, token=TOKENS[t], is_bos=t == 0, newcomers=list(newcomers),
                         mlp_newcomers=list(mlp), n_newcomers=len(newcomers) + len(mlp)))


NEW_3_1 = [nd(100, 1, 5.0, 1, 2), nd(101, 3, 3.0, 2, 3), nd(102, 4, 2.0, 0, 1), nd(103, 5, 1.0, 1, 2)]
NEW_3_0 = [nd(200, 1, 2.0, 3, 4), nd(201, 2, 1.0, 1, 2)]
NEW_1_0 = [nd(300, 1, 2.0, 0, 1), nd(301, 2, 1.0, 1, 2)]
NEW_2_0 = [nd(400, 1, 1.0, 1, 2)]

EXPECTED_EDGES = [
    edge(1, 3, 1, [fd(100, 1, 5.0, 2), fd(103, 5, 1.0, 2)]),
    edge(2, 3, 1, [fd(101, 3, 3.0, 3)]),
    edge(3, 3, 0, [fd(200, 1, 2.0, 4)]),
    edge(1, 3, 0, [fd(201, 2, 1.0, 2)]),
    edge(1, 1, 0, [fd(301, 2, 1.0, 2)]),
    edge(1, 2, 0, [fd(400, 1, 1.0, 2)]),
]
EXPECTED_NODES = [
    node(3, 1, NEW_3_1), node(3, 0, NEW_3_0), node(1, 0, NEW_1_0), node(2, 0, NEW_2_0),
    node(3, -1), node(1, -1),
]
BOS_EDGES = [edge(0, 3, 1, [fd(102, 4, 2.0, 1)]), edge(0, 1, 0, [fd(300, 1, 2.0, 1)])]
BOS_NODES = [node(0, 0), node(0, -1)]


def expected_graph(edges, nodes, **graph):
    g = nx.DiGraph(kind="trajectory", tokens=TOKENS, model_name="hand", preset="test", k=10, T=5,
                   through="attention", include_bos=False, layers=[0, 1])
    g.graph.update(graph)
    g.add_nodes_from(nodes)
    g.add_edges_from(edges)
    return g


def assert_same(g, h):
    assert g.graph == h.graph
    assert dict(g.nodes(data=True)) == dict(h.nodes(data=True))
    assert {(u, v): d for u, v, d in g.edges(data=True)} == {(u, v): d for u, v, d in h.edges(data=True)}


def test_graph_equals_hand_computed(evo):
    g = trajectory_graph(evo, T=5)
    assert_same(g, expected_graph(EXPECTED_EDGES, EXPECTED_NODES))
    assert (2, 1) not in g  # newcomers there, but no traced edge leads to it


def test_include_bos_adds_bos_edges_and_stops_there(evo):
    g = trajectory_graph(evo, T=5, include_bos=True)
    assert_same(g, expected_graph(EXPECTED_EDGES + BOS_EDGES, EXPECTED_NODES + BOS_NODES, include_bos=True))
    assert g.in_degree((0, 0)) == 0 and g.nodes[(0, 0)]["is_bos"]


def test_tracing_stops_at_embeddings(evo):
    g = trajectory_graph(evo, T=5)
    assert all(g.in_degree(n) == 0 for n in g if n[1] == -1)
    assert min(layer for _, layer in g) == -1
    assert nx.is_directed_acyclic_graph(g)
    assert all(v[1] == u[1] + 1 for u, v in g.edges)


def test_last_token_nodes_always_present():
    # no newcomer anywhere: the last token's column is still there, one node per layer
    evo = Evolution.from_lists(["<bos>", "x", "y"], {(n, L): [st(5)] * (n + 2) for n in (2, 3) for L in (0, 1, 2)}, k=3)
    g = trajectory_graph(evo)
    assert sorted(g.nodes) == [(2, 0), (2, 1), (2, 2)] and g.number_of_edges() == 0


def test_T_filters_edges(evo):
    g = trajectory_graph(evo, T=1)
    assert sorted(g.edges) == [((1, 0), (3, 1)), ((3, -1), (3, 0))]  # (1, 0) only has a BOS newcomer at rank 1
    assert g.edges[(1, 0), (3, 1)]["features"] == [fd(100, 1, 5.0, 2)]


def test_through_mlp(evo):
    g = trajectory_graph(evo, T=5, through="mlp")
    d = g.nodes[(3, 1)]
    # mlp step: 600 r1 (MLP), 100 r2, 1 (from the start), 101 r4, 102 r5; 103 r6 is out
    assert d["mlp_newcomers"] == [nd(600, 1, 6.0, 3, 5)]
    assert d["newcomers"] == [nd(100, 2, 5.0, 1, 2), nd(101, 4, 3.0, 2, 3), nd(102, 5, 2.0, 0, 1)]
    assert d["n_newcomers"] == 4
    assert g.edges[(1, 0), (3, 1)]["features"] == [fd(100, 2, 5.0, 2)]
    assert g.graph["through"] == "mlp"


def test_explanations_mapping_and_callable(evo):
    g = trajectory_graph(evo, T=5, explanations={(1, 100): "the word <b>", (0, 400): "A again"})
    assert g.nodes[(3, 1)]["newcomers"][0]["explanation"] == "the word <b>"
    assert g.edges[(1, 0), (3, 1)]["features"][0]["explanation"] == "the word <b>"
    assert g.edges[(1, 0), (3, 1)]["features"][1]["explanation"] is None
    assert g.edges[(1, -1), (2, 0)]["features"][0]["explanation"] == "A again"
    h = trajectory_graph(evo, T=5, explanations=lambda layer, f: f"L{layer}F{f}" if f != 201 else None)
    assert h.nodes[(3, 0)]["newcomers"] == [nd(200, 1, 2.0, 3, 4, "L0F200"), nd(201, 2, 1.0, 1, 2, None)]
    # attaching later gives the same graph
    plain = trajectory_graph(evo, T=5)
    attach_explanations(plain, lambda layer, f: f"L{layer}F{f}" if f != 201 else None)
    assert_same(plain, h)


def test_graph_features(evo):
    assert graph_features(trajectory_graph(evo, T=5)) == [(0, 200), (0, 201), (0, 300), (0, 301), (0, 400),
                                                          (1, 100), (1, 101), (1, 102), (1, 103)]


def test_graph_for_prefix(evo):
    g = graph_for_prefix(evo, 4, T=5)
    assert sorted(g.edges) == [((1, -1), (3, 0)), ((1, 0), (3, 1)), ((2, 0), (3, 1)), ((3, -1), (3, 0))]
    assert g.nodes[(1, 0)]["newcomers"] == NEW_1_0  # sources carry their own node's newcomers
    g3 = graph_for_prefix(evo, 3, T=5)
    assert sorted(g3.edges) == [((1, -1), (2, 0)), ((1, 0), (2, 1))]


def test_feature_graph(evo):
    fg = feature_graph(evo, T=5)
    assert fg.graph["kind"] == "feature"
    assert set(fg.nodes) == {
        (3, 1, 100), (3, 1, 101), (3, 1, 102), (3, 1, 103), (3, 0, 200), (3, 0, 201),
        (1, 0, 300), (1, 0, 301), (2, 0, 400), (3, -1, -1), (1, -1, -1),
    }
    assert set(fg.edges) == {
        ((1, 0, 300), (3, 1, 100)), ((1, 0, 301), (3, 1, 100)), ((1, 0, 300), (3, 1, 103)), ((1, 0, 301), (3, 1, 103)),
        ((2, 0, 400), (3, 1, 101)), ((3, -1, -1), (3, 0, 200)), ((1, -1, -1), (3, 0, 201)),
        ((1, -1, -1), (1, 0, 301)), ((1, -1, -1), (2, 0, 400)),
    }
    assert fg.nodes[(3, 1, 103)] == dict(token_index=3, layer=1, token="C", is_bos=False, feature=103, kind="attention",
                                         rank=5, activation=1.0, source_token=1, first_step=2, explanation=None)
    assert fg.nodes[(3, -1, -1)]["kind"] == "residual" and fg.nodes[(3, -1, -1)]["rank"] is None
    assert fg.edges[(2, 0, 400), (3, 1, 101)] == dict(layer=1, source_token=2, target_token=3, prefix_length=4,
                                                      rank=3, activation=3.0, first_step=3)
    # from a built graph, explanations attached on the way
    fg2 = feature_graph(trajectory_graph(evo, T=5), explanations={(1, 103): "x"})
    assert fg2.nodes[(3, 1, 103)]["explanation"] == "x" and set(fg2.edges) == set(fg.edges)
    with pytest.raises(ValueError, match="kind='trajectory'"):
        feature_graph(nx.DiGraph())


def test_feature_graph_mlp_nodes(evo):
    fg = feature_graph(evo, T=5, through="mlp")
    assert fg.nodes[(3, 1, 600)]["kind"] == "mlp" and fg.in_degree((3, 1, 600)) == 0


def test_attribute_types_are_plain_python(evo):
    g = trajectory_graph(evo, T=5, include_bos=True)
    plain = (int, float, str, bool, type(None), list, dict)

    def check(value):
        assert type(value) in plain, type(value)
        if isinstance(value, list):
            for v in value:
                check(v)
        if isinstance(value, dict):
            for v in value.values():
                check(v)

    for _, d in g.nodes(data=True):
        check(d)
    for *_, d in g.edges(data=True):
        check(d)
    check(g.graph)


def test_bad_arguments(evo):
    with pytest.raises(ValueError, match="through must"):
        trajectory_graph(evo, through="both")
    with pytest.raises(ValueError, match="T must"):
        trajectory_graph(evo, T=0)
    with pytest.raises(ValueError, match="out of range"):
        graph_for_prefix(evo, 9)


# ---------------------------------------------------------------- reference
def reference_traced_edges(evo, T, through, include_bos):
    """Recursive backward tracing written independently: {(source, target): [features by rank]}."""
    edges: dict = {}

    def expand(q, L, visited):
        if (q, L) in visited or q < 1 or L not in evo.layers:
            return
        visited.add((q, L))
        for f, first, src, via, rank, act in reference_newcomers(evo, q + 1, L, T, through):
            if via != "attention" or (src == 0 and not include_bos):
                continue
            edges.setdefault(((src, L - 1), (q, L)), []).append((rank, f))
            if L - 1 >= 0:
                expand(src, L - 1, visited)

    visited: set = set()
    for L in evo.layers:
        expand(evo.n_tokens - 1, L, visited)
    return {e: sorted(v) for e, v in edges.items()}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("include_bos", [False, True])
def test_traced_graph_matches_reference(seed, include_bos):
    evo = random_evolution(seed, N=7, layers=(0, 1, 2, 3))
    for through in ("attention", "mlp"):
        g = trajectory_graph(evo, T=4, through=through, include_bos=include_bos)
        got = {(u, v): [(f["rank"], f["feature"]) for f in d["features"]] for u, v, d in g.edges(data=True)}
        assert got == reference_traced_edges(evo, 4, through, include_bos)
        for u, v, d in g.edges(data=True):
            assert d["num_trajectories"] == len(d["features"]) and d["best_rank"] == d["features"][0]["rank"]

"""The contrastive diff of two prompts: against per-position newcomers computed here;
causality (nothing before the first differing token); bad input; exports; and
compare_graphs' warnings."""
from __future__ import annotations

import dataclasses
import warnings

import networkx as nx
import numpy as np
import pytest

from trajectory.graph.diff import diff_graph, first_difference
from trajectory.graph.export import export_graph, read_graph
from trajectory.newcomers import find_newcomers

K, T = 8, 8
A = "mark gave the flashlight to smith"
B = "mark gave the book to smith"  # one token changed, at position 4


@pytest.fixture(scope="module")
def evo_a(tiny_model, tiny_bank):
    from trajectory.evolution.engine import evolve

    return evolve(tiny_model, tiny_bank, A, k=K, progress=False)


@pytest.fixture(scope="module")
def evo_b(tiny_model, tiny_bank):
    from trajectory.evolution.engine import evolve

    return evolve(tiny_model, tiny_bank, B, k=K, progress=False)


def edges_by_position(evo, start, *, include_bos=False):
    """``{((t, L-1), (q, L)): (best rank, feature ids)}`` for every query q ≥ start, straight
    from the newcomers of each prefix (no graph code)."""
    out = {}
    for q in range(max(start, 1), evo.n_tokens):
        for layer in evo.layers:
            by_key = {}
            for c in find_newcomers(evo, q + 1, layer, T=T):
                if c.via == "attention" and (c.source_token != 0 or include_bos):
                    by_key.setdefault(c.source_token, []).append(c)
            for t, cs in by_key.items():
                out[((t, layer - 1), (q, layer))] = (min(c.final_rank for c in cs), {c.feature for c in cs})
    return out


def test_one_token_change_matches_per_position_newcomers(evo_a, evo_b):
    d = first_difference(evo_a, evo_b)
    assert d == 4 and evo_a.tokens[:4] == evo_b.tokens[:4] and evo_a.tokens[4] != evo_b.tokens[4]
    g = diff_graph(evo_a, evo_b, T=T)
    assert g.graph["first_difference"] == 4 and g.graph["kind"] == "diff"
    assert g.graph["prefix_max_abs_diff"] == 0.0  # same engine, same prefix: bit-identical rows
    # causality: no edge ends before the changed token
    assert g.number_of_edges() > 0
    assert all(v[0] >= d for _, v in g.edges)
    ea, eb = edges_by_position(evo_a, d), edges_by_position(evo_b, d)
    assert set(g.edges) == set(ea) | set(eb)
    for e, attrs in g.edges.items():
        side = "both" if e in ea and e in eb else ("a" if e in ea else "b")
        assert attrs["side"] == side
        ra, fa = ea.get(e, (None, set()))
        rb, fb = eb.get(e, (None, set()))
        assert (attrs["best_rank_a"], attrs["best_rank_b"]) == (ra, rb)
        assert attrs["rank_change"] == (rb - ra if side == "both" else None)
        assert set(attrs["features_only_a"]) == fa - fb and set(attrs["features_only_b"]) == fb - fa
        assert set(attrs["features_shared"]) == fa & fb
    assert {s for *_, s in g.edges(data="side")} >= {"a", "b"}


def test_identical_prompts_give_an_empty_diff(evo_a, tiny_model, tiny_bank):
    from trajectory.evolution.engine import evolve

    again = evolve(tiny_model, tiny_bank, A, k=K, progress=False)
    g = diff_graph(evo_a, again, T=T)
    assert g.number_of_edges() == 0 and g.number_of_nodes() == 0 and g.graph["first_difference"] is None


def test_float_noise_is_accepted_and_real_differences_refused(evo_a, evo_b):
    def with_values(evo, fn):
        rows = {L: dataclasses.replace(r, values=fn(r.values.copy())) for L, r in evo.rows.items()}
        return dataclasses.replace(evo, rows=rows)

    noisy = with_values(evo_b, lambda v: (v * (1 + 1e-6)).astype(np.float32))
    g = diff_graph(evo_a, noisy, T=T)
    assert 0 < g.graph["prefix_max_abs_diff"] < 1e-4
    assert set(g.edges) == set(diff_graph(evo_a, evo_b, T=T).edges)

    def bump_first_row(v):
        v[0] += 0.5
        return v

    with pytest.raises(ValueError, match="differ at layer 0, prefix length 2, step 0"):
        diff_graph(evo_a, with_values(evo_b, bump_first_row), T=T)


def test_mismatched_evolutions_are_refused(evo_a, evo_b, tmp_path):
    with pytest.raises(ValueError, match="differ in model_name"):
        diff_graph(evo_a, dataclasses.replace(evo_b, model_name="other"), T=T)
    with pytest.raises(ValueError, match="differ in k"):
        diff_graph(evo_a, dataclasses.replace(evo_b, k=4), T=T)
    with pytest.raises(ValueError, match="differ in layers"):
        diff_graph(evo_a, dataclasses.replace(evo_b, layers=[0], rows={0: evo_b.rows[0]}), T=T)
    with pytest.raises(ValueError, match="not a valid|no evolution|not a readable|No such"):
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(b"nonsense")
        diff_graph(evo_a, bad, T=T)


def test_prompt_that_extends_the_other(evo_a, tiny_model, tiny_bank):
    from trajectory.evolution.engine import evolve

    short = evolve(tiny_model, tiny_bank, "mark gave the flashlight", k=K, progress=False)
    g = diff_graph(short, evo_a, T=T)
    assert g.graph["first_difference"] == short.n_tokens
    assert {s for *_, s in g.edges(data="side")} <= {"b"}
    assert set(g.edges) == set(edges_by_position(evo_a, short.n_tokens))


def test_diff_exports_round_trip(evo_a, evo_b, tmp_path):
    g = diff_graph(evo_a, evo_b, T=T, explanations=lambda layer, f: f"feature {f} of L{layer}")
    feats = [f for *_, fs in g.edges(data="features_a") for f in fs]
    assert feats and all(f["explanation"] == f"feature {f['feature']} of L{e}" for e, f in
                         [(d["layer"], f) for *_, d in g.edges(data=True) for f in d["features_a"]])
    for fmt in ("graphml", "gexf", "json"):
        h = read_graph(export_graph(g, tmp_path / f"diff.{fmt}"))
        assert h.graph == g.graph and dict(h.nodes(data=True)) == dict(g.nodes(data=True)), fmt
        assert {(u, v): d for u, v, d in h.edges(data=True)} == {(u, v): d for u, v, d in g.edges(data=True)}, fmt


def test_compare_graphs_documents_and_warns(evo_a, evo_b):
    """compare_graphs on traced graphs may differ before the changed token (tracing reach);
    it warns, and by='token' warns on different lengths."""
    from trajectory.graph.analysis import compare_graphs
    from trajectory.graph.build import trajectory_graph

    ga, gb = trajectory_graph(evo_a, T=T), trajectory_graph(evo_b, T=T)
    with pytest.warns(UserWarning, match="diff_graph"):
        compare_graphs(ga, gb)
    assert "diff_graph" in compare_graphs.__doc__ and "traced" in compare_graphs.__doc__
    longer = nx.DiGraph(tokens=list(ga.graph["tokens"]) + ["x"])
    with pytest.warns(UserWarning, match=r"differ in length \(7 vs 8 tokens\)"):
        compare_graphs(ga, longer, by="token")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare_graphs(ga, ga, by="token")  # same length: no warning
        compare_graphs(ga, ga)



def test_docstring_examples_run():
    import doctest

    import trajectory.graph.diff as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0

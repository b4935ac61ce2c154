"""The aggregated feature-flow graph against an aggregation written here from the
per-prompt feature graphs; inputs of every kind; prompt-set folders; exports; analyses."""
from __future__ import annotations

import dataclasses
import itertools
import json

import networkx as nx
import pytest

from trajectory.graph.aggregate import (
    aggregate,
    aggregate_folder,
    consistent_features,
    shared_flow_prompts,
    top_flows,
)
from trajectory.graph.build import feature_graph, trajectory_graph
from trajectory.graph.export import export_graph, read_graph

PROMPTS = [
    "mark gave the flashlight to smith",
    "mark gave the book to smith",
    "the cat and the dog are in the room",
    "mark gave the dog to the king",
]
K, T = 8, 8


@pytest.fixture(scope="module")
def prompt_dir(tmp_path_factory, tiny_model, tiny_bank):
    from trajectory.evolution.batch import evolve_many

    folder = tmp_path_factory.mktemp("promptset")
    evolve_many(tiny_model, tiny_bank, PROMPTS, folder, k=K, progress=False)
    return folder


@pytest.fixture(scope="module")
def evos(prompt_dir):
    from trajectory.evolution.batch import prompt_file_name
    from trajectory.evolution.result import Evolution

    return [Evolution.load(prompt_dir / prompt_file_name(p)) for p in PROMPTS]


def reference(fgs):
    """Aggregate by brute force: one record per feature-graph node / edge, then grouped."""
    node_recs, edge_recs = [], []
    for p, fg in enumerate(fgs):
        toks = fg.graph["tokens"]

        def name(n):
            t, layer, f = n
            return (layer, f) if f >= 0 else (layer, toks[t])

        for n, d in fg.nodes(data=True):
            node_recs.append((name(n), p, d, toks))
        for u, v, d in fg.edges(data=True):
            edge_recs.append(((name(u), name(v)), p, d, toks[u[0]]))
    nodes = {}
    for key in {r[0] for r in node_recs}:
        recs = [r for r in node_recs if r[0] == key]
        ranks = [r[2]["rank"] for r in recs if r[2]["rank"] is not None]
        keys, queries = {}, {}
        for _, _, d, toks in recs:
            if d["feature"] >= 0:
                queries[toks[d["token_index"]]] = queries.get(toks[d["token_index"]], 0) + 1
                if d["kind"] == "attention":
                    keys[toks[d["source_token"]]] = keys.get(toks[d["source_token"]], 0) + 1
        nodes[key] = dict(prompts=len({r[1] for r in recs}), prompt_ids=sorted({r[1] for r in recs}),
                          occurrences=len(recs), best_rank=min(ranks) if ranks else None,
                          mean_rank=sum(ranks) / len(ranks) if ranks else None, key_tokens=keys,
                          query_tokens=queries, via_mlp=sum(1 for r in recs if r[2]["kind"] == "mlp"))
    edges = {}
    for key in {r[0] for r in edge_recs}:
        recs = [r for r in edge_recs if r[0] == key]
        keys = {}
        for *_, tok in recs:
            keys[tok] = keys.get(tok, 0) + 1
        edges[key] = dict(prompts=len({r[1] for r in recs}), prompt_ids=sorted({r[1] for r in recs}),
                          occurrences=len(recs), best_rank=min(r[2]["rank"] for r in recs),
                          mean_rank=sum(r[2]["rank"] for r in recs) / len(recs), key_tokens=keys)
    return nodes, edges


def assert_matches(g, fgs):
    nodes, edges = reference(fgs)
    assert set(g.nodes) == set(nodes)
    assert set(g.edges) == set(edges)
    for n, want in nodes.items():
        got = g.nodes[n]
        for k, v in want.items():
            assert got[k] == (pytest.approx(v) if isinstance(v, float) else v), (n, k)
    for e, want in edges.items():
        got = g.edges[e]
        for k, v in want.items():
            assert got[k] == (pytest.approx(v) if isinstance(v, float) else v), (e, k)
        assert got["layer"] == e[1][0] == e[0][0] + 1


@pytest.mark.parametrize("through,include_bos", [("attention", False), ("mlp", True)])
def test_aggregate_equals_reference(evos, through, include_bos):
    fgs = [feature_graph(e, T=T, through=through, include_bos=include_bos) for e in evos]
    g = aggregate(evos, T=T, through=through, include_bos=include_bos)
    assert sum(fg.number_of_edges() for fg in fgs) > 20  # the fixtures do have flows
    assert_matches(g, fgs)
    assert g.graph["n_prompts"] == len(PROMPTS) and g.graph["prompts"] == PROMPTS
    assert (g.graph["T"], g.graph["through"], g.graph["include_bos"]) == (T, through, include_bos)
    assert nx.is_directed_acyclic_graph(g)
    kinds = {d["kind"] for _, d in g.nodes(data=True)}
    assert {"feature", "embedding"} <= kinds
    assert max(d["prompts"] for *_, d in g.edges(data=True)) >= 2  # some flow recurs across prompts


def test_inputs_of_every_kind_give_the_same_graph(evos, prompt_dir):
    from trajectory.evolution.batch import prompt_file_name

    want = aggregate(evos, T=T)
    mixed = [evos[0], prompt_dir / prompt_file_name(PROMPTS[1]), feature_graph(evos[2], T=T),
             trajectory_graph(evos[3], T=T)]
    got = aggregate(mixed, T=T, labels=PROMPTS)
    assert nx.utils.graphs_equal(want, got)
    folder = aggregate_folder(prompt_dir, T=T)
    assert nx.utils.graphs_equal(want, folder)


def test_explanations_fill_features(evos):
    g = aggregate(evos[:2], T=T, explanations=lambda layer, f: f"L{layer} f{f}")
    for n, d in g.nodes(data=True):
        assert d["explanation"] == (f"L{n[0]} f{n[1]}" if d["kind"] == "feature" else None)


def test_exports_round_trip(evos, tmp_path):
    g = aggregate(evos, T=T)
    for fmt in ("graphml", "gexf", "json"):
        h = read_graph(export_graph(g, tmp_path / f"agg.{fmt}"))
        assert h.graph == g.graph, fmt
        assert dict(h.nodes(data=True)) == dict(g.nodes(data=True)), fmt
        assert {(u, v): d for u, v, d in h.edges(data=True)} == {(u, v): d for u, v, d in g.edges(data=True)}, fmt


def test_bad_inputs(evos, tmp_path, prompt_dir):
    with pytest.raises(ValueError, match="at least one"):
        aggregate([])
    with pytest.raises(ValueError, match="model_name"):
        aggregate([evos[0], dataclasses.replace(evos[1], model_name="other-model")], T=T)
    with pytest.raises(ValueError, match="k=4"):
        aggregate([evos[0], dataclasses.replace(evos[1], k=4)], T=T)
    assert evos[0].metadata["saes"]  # the engine records the SAEs
    other_saes = dataclasses.replace(evos[1], metadata={**evos[1].metadata, "saes": {"0": {"width": 1}}})
    with pytest.raises(ValueError, match="other SAEs"):
        aggregate([evos[0], other_saes], T=T)
    with pytest.raises(ValueError, match="built with T=5, not 8"):
        aggregate([evos[0], feature_graph(evos[1], T=5)], T=T)
    with pytest.raises(ValueError, match="T=5"):  # T from the first input, then a graph of another T
        aggregate([feature_graph(evos[0], T=T), feature_graph(evos[1], T=5)])
    with pytest.raises(TypeError, match="not int"):
        aggregate([3])
    with pytest.raises(ValueError, match="kind 'aggregate'"):
        aggregate([aggregate(evos[:1], T=T)])
    with pytest.raises(FileNotFoundError, match="trajectory evolve"):
        aggregate([tmp_path / "missing.safetensors"])
    # folders
    with pytest.raises(FileNotFoundError, match="no prompt-set folder"):
        aggregate_folder(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="has no index.json"):
        aggregate_folder(empty)
    (empty / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a prompt index"):
        aggregate_folder(empty)
    (empty / "index.json").write_text(json.dumps([{"prompt": "x", "file": None, "error": "too long"}]))
    with pytest.raises(ValueError, match="no evolved prompt"):
        aggregate_folder(empty)
    (empty / "index.json").write_text(json.dumps([{"prompt": "x", "file": "prompt_gone.safetensors"}]))
    with pytest.raises(FileNotFoundError, match="prompt_gone.safetensors"):
        aggregate_folder(empty)


def test_failed_prompts_are_left_out(evos, prompt_dir, tmp_path):
    import shutil

    folder = tmp_path / "partial"
    shutil.copytree(prompt_dir, folder)
    index = json.loads((folder / "index.json").read_text())
    index.insert(1, {"prompt": "a prompt too long", "file": None, "error": "too long"})
    index.append(dict(index[0]))  # a repeated prompt: one file, counted once
    (folder / "index.json").write_text(json.dumps(index))
    g = aggregate_folder(folder, T=T)
    assert g.graph["prompts"] == PROMPTS
    assert nx.utils.graphs_equal(g, aggregate(evos, T=T))


def test_analysis_helpers_against_brute_force(evos):
    fgs = [feature_graph(e, T=T) for e in evos]
    g = aggregate(fgs, labels=PROMPTS)
    _, edges = reference(fgs)
    # top flows: the edges sorted by prompts, then occurrences, then best rank
    flows = top_flows(g, 5)
    ranked = sorted(edges.items(), key=lambda kv: (-kv[1]["prompts"], -kv[1]["occurrences"], kv[1]["best_rank"]))
    want = [(d["prompts"], d["occurrences"]) for _, d in ranked[:5]]
    assert [(f["prompts"], f["occurrences"]) for f in flows] == want
    assert all(g.nodes[f["source"]]["kind"] == "feature" for f in top_flows(g, 50, features_only=True))
    # features always brought by one token string, per occurrence in the feature graphs
    by_feature: dict = {}
    for p, fg in enumerate(fgs):
        for n, d in fg.nodes(data=True):
            if d["feature"] >= 0:
                rec = by_feature.setdefault((d["layer"], d["feature"]), dict(tokens=set(), prompts=set(), mlp=False))
                rec["prompts"].add(p)
                if d["kind"] == "mlp":
                    rec["mlp"] = True
                else:
                    rec["tokens"].add(fg.graph["tokens"][d["source_token"]])
    want = {(key, next(iter(r["tokens"]))) for key, r in by_feature.items()
            if len(r["tokens"]) == 1 and not r["mlp"] and len(r["prompts"]) >= 2}
    got = {((r["layer"], r["feature"]), r["token"]) for r in consistent_features(g, min_prompts=2, include_bos=True)}
    assert got == want
    no_bos = {((r["layer"], r["feature"]), r["token"]) for r in consistent_features(g, min_prompts=2)}
    assert no_bos == {(key, tok) for key, tok in want if tok != "<bos>"}
    # prompts sharing the most flows: pairwise intersections of each prompt's edge set
    per_prompt = [{e for e, d in edges.items() if p in d["prompt_ids"]} for p in range(len(fgs))]
    pairs = {(i, j): len(per_prompt[i] & per_prompt[j]) for i, j in itertools.combinations(range(len(fgs)), 2)}
    shared = shared_flow_prompts(g, n=10)
    assert {r["prompts"]: r["shared"] for r in shared} == {k: v for k, v in pairs.items() if v}
    assert [r["shared"] for r in shared] == sorted((v for v in pairs.values() if v), reverse=True)
    top = shared[0]
    i, j = top["prompts"]
    assert top["labels"] == (PROMPTS[i], PROMPTS[j])
    assert top["jaccard"] == pytest.approx(top["shared"] / len(per_prompt[i] | per_prompt[j]))


def test_docstring_examples_run():
    import doctest

    import trajectory.graph.aggregate as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0

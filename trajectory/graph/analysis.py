"""Analyses people run on trajectory graphs, as plain functions (NetworkX style).

Each function takes a graph made by :func:`trajectory.graph.trajectory_graph` (or a
graph with the same attributes, e.g. one read back by :func:`trajectory.graph.export.read_graph`)
and returns plain data: lists and dicts of ints, floats and strings.

- :func:`strongest_paths`: the best chains of edges into the last token;
- :func:`layer_flow`: edges, trajectories and tokens per layer;
- :func:`recurring_features`: SAE features that arrive at several tokens or layers;
- :func:`compare_graphs`: shared and unique edges and features of two prompts' graphs.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Hashable, Iterable, Literal, Union

import networkx as nx

from trajectory.graph.build import graph_features

__all__ = ["last_token_nodes", "strongest_paths", "layer_flow", "recurring_features", "compare_graphs"]

Weight = Union[str, Callable[[Hashable, Hashable, dict], float]]


def last_token_nodes(g: nx.DiGraph) -> list[tuple[int, int]]:
    """Nodes of the prompt's last token, by layer (its embedding node, layer -1, left out).

    The last token is ``len(g.graph["tokens"]) - 1`` when the graph has tokens, else
    the largest ``token_index`` among its nodes.

    Examples
    --------
    >>> g = nx.DiGraph(tokens=["<bos>", "a", "b"])
    >>> g.add_edge((1, 0), (2, 1), best_rank=1, num_trajectories=1)
    >>> g.add_node((2, 0))
    >>> last_token_nodes(g)
    [(2, 0), (2, 1)]
    """
    tokens = g.graph.get("tokens")
    last = len(tokens) - 1 if tokens else max((n[0] for n in g.nodes), default=None)
    return sorted(n for n in g.nodes if n[0] == last and n[1] >= 0)


def strongest_paths(
    g: nx.DiGraph,
    k: int = 5,
    *,
    weight: Weight = "best_rank",
    targets: Iterable[Hashable] | None = None,
    sources: Iterable[Hashable] | None = None,
) -> list[dict[str, Any]]:
    """The ``k`` cheapest paths from a source node to a node of the last token.

    A path's cost is the sum of its edges' costs; by default an edge costs its
    ``best_rank`` (1 = the strongest newcomer), so a path of strong edges beats one
    with a weak link, and every hop costs at least 1. Pass
    ``weight=lambda u, v, d: 1 / d["num_trajectories"]`` to favour wide edges.

    Parameters
    ----------
    g : a trajectory graph.
    k : how many paths.
    weight : an edge attribute name or a callable ``(u, v, data) -> cost`` (≥ 0).
    targets : end nodes (default :func:`last_token_nodes`).
    sources : start nodes (default: the nodes without incoming edges).

    Returns
    -------
    list of dicts, cheapest first: ``nodes`` (the path), ``tokens`` (token index per
    node), ``cost``, ``worst_rank`` (largest ``best_rank`` along the path),
    ``min_trajectories`` (smallest ``num_trajectories`` along it) and ``features``
    (the feature indices the last edge brought to the target).

    Examples
    --------
    >>> g = nx.DiGraph(tokens=["<bos>", "a", "b"])
    >>> g.add_edge((1, -1), (1, 0), best_rank=3, num_trajectories=1, features=[{"feature": 4}])
    >>> g.add_edge((1, 0), (2, 1), best_rank=1, num_trajectories=2, features=[{"feature": 9}])
    >>> g.add_edge((2, 0), (2, 1), best_rank=5, num_trajectories=1, features=[{"feature": 8}])
    >>> [(p["nodes"], p["cost"]) for p in strongest_paths(g, k=2)]
    [([(1, -1), (1, 0), (2, 1)], 4.0), ([(2, 0), (2, 1)], 5.0)]
    """
    if g.number_of_edges() == 0 or k < 1:
        return []
    cost = weight if callable(weight) else (lambda u, v, d, _w=weight: float(d[_w]))
    targets = list(targets) if targets is not None else last_token_nodes(g)
    sources = list(sources) if sources is not None else [n for n in g.nodes if g.in_degree(n) == 0]
    start, end = ("__paths_source__",), ("__paths_target__",)
    h = nx.DiGraph()
    for u, v, d in g.edges(data=True):
        c = float(cost(u, v, d))
        if c < 0:
            raise ValueError(f"edge {u} -> {v} has a negative cost {c}; strongest_paths needs costs ≥ 0")
        h.add_edge(u, v, cost=c)
    h.add_edges_from(((start, s) for s in sources if s in h), cost=0.0)
    h.add_edges_from(((t, end) for t in targets if t in h), cost=0.0)
    if start not in h or end not in h or not nx.has_path(h, start, end):
        return []
    out = []
    for path in nx.shortest_simple_paths(h, start, end, weight="cost"):
        if len(out) == k:
            break
        nodes = path[1:-1]
        if len(nodes) < 2:  # a node that is both source and target: no edge
            continue
        edges = [g.edges[u, v] for u, v in zip(nodes, nodes[1:])]
        out.append(
            dict(
                nodes=nodes,
                tokens=[n[0] for n in nodes],
                cost=sum(h.edges[u, v]["cost"] for u, v in zip(nodes, nodes[1:])),
                worst_rank=max(int(d.get("best_rank", 0)) for d in edges),
                min_trajectories=min(int(d.get("num_trajectories", 0)) for d in edges),
                features=[int(f["feature"]) for f in edges[-1].get("features", [])],
            )
        )
    return out


def layer_flow(g: nx.DiGraph) -> dict[int, dict[str, Any]]:
    """Per layer L: what layer L's attention moved (edges ``(t, L-1) → (q, L)``).

    Returns
    -------
    ``{L: {"edges", "trajectories", "best_rank", "source_tokens", "target_tokens",
    "newcomers"}}`` for every layer of ``g.graph["layers"]`` (or of its nodes), ascending:
    number of edges, sum of their ``num_trajectories``, smallest ``best_rank`` (None
    without edges), sorted token indices the edges leave from and arrive at, and the
    sum of ``n_newcomers`` over the layer's nodes.

    Examples
    --------
    >>> g = nx.DiGraph(layers=[0, 1])
    >>> g.add_edge((1, -1), (2, 0), layer=0, best_rank=2, num_trajectories=3)
    >>> g.add_edge((2, -1), (2, 0), layer=0, best_rank=1, num_trajectories=1)
    >>> flow = layer_flow(g)
    >>> flow[0]["edges"], flow[0]["trajectories"], flow[0]["best_rank"], flow[0]["source_tokens"]
    (2, 4, 1, [1, 2])
    >>> flow[1]["edges"]
    0
    """
    layers = set(g.graph.get("layers") or []) | {n[1] for n in g.nodes if n[1] >= 0}
    flow: dict[int, dict[str, Any]] = {
        L: dict(edges=0, trajectories=0, best_rank=None, source_tokens=set(), target_tokens=set(), newcomers=0)
        for L in sorted(layers)
    }
    for u, v, d in g.edges(data=True):
        row = flow.setdefault(int(d.get("layer", v[1])), dict(edges=0, trajectories=0, best_rank=None,
                                                               source_tokens=set(), target_tokens=set(), newcomers=0))
        row["edges"] += 1
        row["trajectories"] += int(d.get("num_trajectories", 1))
        r = d.get("best_rank")
        if r is not None:
            row["best_rank"] = int(r) if row["best_rank"] is None else min(row["best_rank"], int(r))
        row["source_tokens"].add(u[0])
        row["target_tokens"].add(v[0])
    for n, d in g.nodes(data=True):
        if n[1] in flow:
            flow[n[1]]["newcomers"] += int(d.get("n_newcomers", 0))
    for row in flow.values():
        row["source_tokens"] = sorted(row["source_tokens"])
        row["target_tokens"] = sorted(row["target_tokens"])
    return dict(sorted(flow.items()))


def recurring_features(
    g: nx.DiGraph,
    *,
    min_count: int = 2,
    by: Literal["layer_feature", "feature"] = "layer_feature",
    include_mlp: bool = True,
) -> list[dict[str, Any]]:
    """Features that arrive as newcomers at several nodes.

    ``by="layer_feature"`` groups by ``(layer, feature)``: the same SAE latent arriving
    at several tokens (node ``(t, L)`` is prefix length ``t + 1``, so this is recurrence
    across prefixes). ``by="feature"`` groups by the bare index across layers too — only
    meaningful when the layers share one SAE (each layer normally has its own SAE, whose
    latent ``i`` is unrelated to latent ``i`` of another layer).

    Returns
    -------
    list of dicts, most frequent first (ties: best rank, then key): ``layer`` (None when
    ``by="feature"``), ``feature``, ``count``, ``nodes`` (sorted ``(token, layer)``),
    ``best_rank`` and ``explanation`` (the first non-empty one).

    Examples
    --------
    >>> g = nx.DiGraph()
    >>> g.add_node((1, 0), newcomers=[{"feature": 5, "rank": 2, "explanation": "cats"}])
    >>> g.add_node((2, 0), newcomers=[{"feature": 5, "rank": 1}, {"feature": 6, "rank": 3}])
    >>> [(r["layer"], r["feature"], r["count"], r["nodes"]) for r in recurring_features(g)]
    [(0, 5, 2, [(1, 0), (2, 0)])]
    """
    if by not in ("layer_feature", "feature"):
        raise ValueError(f"by must be 'layer_feature' or 'feature', not {by!r}")
    groups: dict[tuple, list] = defaultdict(list)
    keys = ("newcomers", "mlp_newcomers") if include_mlp else ("newcomers",)
    for node, d in g.nodes(data=True):
        layer = int(d.get("layer", node[1]))
        for key in keys:
            for f in d.get(key) or []:
                gk = (layer, int(f["feature"])) if by == "layer_feature" else (None, int(f["feature"]))
                groups[gk].append((node, f))
    out = []
    for (layer, feature), hits in groups.items():
        nodes = sorted({n for n, _ in hits})
        if len(nodes) < min_count:
            continue
        ranks = [int(f["rank"]) for _, f in hits if f.get("rank") is not None]
        expl = next((f.get("explanation") for _, f in hits if f.get("explanation")), None)
        out.append(dict(layer=layer, feature=feature, count=len(nodes), nodes=nodes,
                        best_rank=min(ranks) if ranks else None, explanation=expl))
    out.sort(key=lambda r: (-r["count"], r["best_rank"] if r["best_rank"] is not None else 1 << 30,
                            r["layer"] if r["layer"] is not None else -1, r["feature"]))
    return out


def _node_keys(g: nx.DiGraph, by: str) -> dict:
    if by == "position":
        return {n: n for n in g.nodes}
    tokens = list(g.graph.get("tokens") or [])
    if not tokens:
        raise ValueError("compare_graphs(by='token') needs g.graph['tokens']")
    seen: dict[str, int] = defaultdict(int)
    occurrence = []
    for tok in tokens:  # the i-th occurrence of a token string, so repeated words stay apart
        occurrence.append(seen[tok])
        seen[tok] += 1
    return {n: (tokens[n[0]], occurrence[n[0]], n[1]) for n in g.nodes}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def compare_graphs(g1: nx.DiGraph, g2: nx.DiGraph, *, by: Literal["position", "token"] = "position") -> dict[str, Any]:
    """Shared and unique nodes, edges and ``(layer, feature)`` newcomers of two graphs.

    ``by="position"`` matches nodes by ``(token_index, layer)`` (prompts of the same
    shape); ``by="token"`` by ``(token string, occurrence, layer)`` so that two prompts
    that differ in length or word order still line up on shared words.

    Returns
    -------
    ``{"nodes": ..., "edges": ..., "features": ...}``, each
    ``{"shared", "only_first", "only_second", "jaccard"}`` (sorted lists and a float
    in ``[0, 1]``; two empty sets have Jaccard 1). Nodes and edges are given as keys
    of ``by``.

    Examples
    --------
    >>> a, b = nx.DiGraph(), nx.DiGraph()
    >>> a.add_edge((1, -1), (2, 0), features=[{"feature": 3}])
    >>> a.add_edge((2, -1), (2, 0), features=[{"feature": 4}])
    >>> b.add_edge((1, -1), (2, 0), features=[{"feature": 3}, {"feature": 5}])
    >>> c = compare_graphs(a, b)
    >>> c["edges"]["shared"], c["edges"]["jaccard"]
    ([((1, -1), (2, 0))], 0.5)
    >>> c["features"]["only_first"], c["features"]["only_second"], round(c["features"]["jaccard"], 3)
    ([(0, 4)], [(0, 5)], 0.333)
    """
    if by not in ("position", "token"):
        raise ValueError(f"by must be 'position' or 'token', not {by!r}")
    k1, k2 = _node_keys(g1, by), _node_keys(g2, by)
    sets = {
        "nodes": (set(k1.values()), set(k2.values())),
        "edges": ({(k1[u], k1[v]) for u, v in g1.edges}, {(k2[u], k2[v]) for u, v in g2.edges}),
        "features": (set(graph_features(g1)), set(graph_features(g2))),
    }
    return {
        name: dict(shared=sorted(a & b), only_first=sorted(a - b), only_second=sorted(b - a), jaccard=_jaccard(a, b))
        for name, (a, b) in sets.items()
    }

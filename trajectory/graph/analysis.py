"""Analyses people run on trajectory graphs, as plain functions (NetworkX style).

Each function takes a graph made by :func:`trajectory.graph.trajectory_graph` (or a
graph with the same attributes, e.g. one read back by :func:`trajectory.graph.export.read_graph`)
and returns plain data: lists and dicts of ints, floats and strings.

- :func:`strongest_paths`: the chains of edges into the last token with the strongest edges on average;
- :func:`layer_flow`: edges, trajectories and tokens per layer;
- :func:`recurring_features`: SAE features that arrive at several tokens or layers;
- :func:`compare_graphs`: shared and unique edges and features of two prompts' graphs.
"""
from __future__ import annotations

import difflib
import heapq
import logging
import math
import warnings
from collections import defaultdict
from typing import Any, Callable, Hashable, Iterable, Literal, Union

import networkx as nx

from trajectory.graph.build import graph_features

__all__ = ["last_token_nodes", "strongest_paths", "layer_flow", "recurring_features", "compare_graphs"]

logger = logging.getLogger(__name__)

#: per-edge strength of :func:`strongest_paths`: None (``1 / best_rank``), an edge
#: attribute name or a callable ``(u, v, data) -> float``; larger = stronger.
Strength = Union[str, Callable[[Hashable, Hashable, dict], float], None]


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


def _edge_strength(strength: Strength) -> Callable[[Hashable, Hashable, dict], float]:
    """The per-edge strength function of :func:`strongest_paths` (checked: finite)."""
    if strength is None:
        def raw(u, v, d):
            if d.get("best_rank") is None or d["best_rank"] < 1:
                raise ValueError(f"edge {u} -> {v} has no best_rank ≥ 1 ({d.get('best_rank')!r}); pass "
                                 "strength=<edge attribute or callable> to score its edges otherwise")
            return 1.0 / d["best_rank"]
    elif callable(strength):
        raw = strength
    else:
        def raw(u, v, d):
            if strength not in d:
                raise ValueError(f"edge {u} -> {v} has no attribute {strength!r}; edges have {sorted(d)}")
            return d[strength]

    def checked(u, v, d):
        value = float(raw(u, v, d))
        if not math.isfinite(value):
            raise ValueError(f"edge {u} -> {v} has strength {value}; strongest_paths needs finite strengths")
        return value

    return checked


def _path_ends(g: nx.DiGraph, source_layer: int | None, target_layer: int | None,
               targets: Iterable[Hashable] | None) -> tuple[list, list]:
    """Start and end nodes of :func:`strongest_paths`."""
    if targets is not None:
        if target_layer is not None:
            raise ValueError("strongest_paths: give targets or target_layer, not both")
        targets = list(targets)
        missing = [t for t in targets if t not in g]
        if missing:
            raise ValueError(f"strongest_paths: targets {missing} are not nodes of the graph")
    else:
        targets = last_token_nodes(g)
        if target_layer is not None:
            targets = [n for n in targets if n[1] == target_layer]
            if not targets:
                raise ValueError(f"the last token has no node at layer {target_layer}; its layers are "
                                 f"{[n[1] for n in last_token_nodes(g)]}")
    if source_layer is None:
        sources = [n for n in g.nodes if g.in_degree(n) == 0]
    else:
        sources = [n for n in g.nodes if n[1] == source_layer]
        if not sources:
            raise ValueError(f"no node at source_layer {source_layer}; the graph's layers are "
                             f"{sorted({n[1] for n in g.nodes})} (-1 = embeddings)")
    return sources, targets


def _k_best_sums(g: nx.DiGraph, sources: list, targets: list, k: int, strength: Callable) -> dict:
    """``{node: {length: [(sum, path), ...]}}``: the ``k`` paths of each length from a source
    into each node with the largest sums of edge strengths (ties: the smaller node tuple),
    for the targets and their ancestors, by dynamic programming in topological order.

    Exact: a path in the top ``k`` into ``v`` extends one in the top ``k`` (one edge
    shorter) into its predecessor, else ``k`` better prefixes would give ``k`` better paths.
    """
    keep = set(targets).union(*(nx.ancestors(g, t) for t in targets))
    sub = g.subgraph(keep)
    try:
        order = list(nx.topological_sort(sub))
    except nx.NetworkXUnfeasible:
        raise ValueError("strongest_paths needs an acyclic graph (every edge of a trajectory graph "
                         "climbs one layer); this one has a cycle") from None
    starts, best = set(sources), {}
    for v in order:
        by_length: dict[int, list] = defaultdict(list)
        if v in starts:
            by_length[0].append((0.0, (v,)))
        for u in sub.predecessors(v):
            s_uv = strength(u, v, g.edges[u, v])
            for length, paths in best[u].items():
                by_length[length + 1].extend((s + s_uv, p + (v,)) for s, p in paths)
        best[v] = {n: heapq.nsmallest(k, ps, key=lambda x: (-x[0], x[1])) for n, ps in by_length.items()}
    return best


def strongest_paths(
    g: nx.DiGraph,
    k: int = 5,
    *,
    min_length: int = 2,
    strength: Strength = None,
    source_layer: int | None = None,
    target_layer: int | None = None,
    targets: Iterable[Hashable] | None = None,
) -> list[dict[str, Any]]:
    """The ``k`` paths into the last token with the strongest edges on average.

    A path runs from a source node along edges ``(t, L-1) → (q, L)``, one layer per
    edge; its ``score`` is the **mean** strength of its edges, by default
    ``1 / best_rank`` (1 for an edge that brought a rank-1 newcomer, 1/2 for rank 2).
    A mean favours neither short nor long paths (two rank-1 hops score 1.0, as do
    eighteen); ``min_length`` (edges) keeps single strong hops from filling the top.
    Ties: the longer path first, then the smaller nodes.

    Why no enumeration: the number of paths grows exponentially with the layers. The
    graph is acyclic and, for a fixed length, the best mean is the best sum, so a
    dynamic programme in topological order keeps the ``k`` best sums per node and
    length (:func:`_k_best_sums`): ``O(edges · layers · k log k)``, exact.

    Parameters
    ----------
    g : a trajectory graph.
    k : how many paths (fewer when fewer exist; ``k < 1`` gives ``[]``).
    min_length : fewest edges a path may have (≥ 1).
    strength : larger = stronger: ``None`` (``1 / best_rank``), an edge attribute
        (``"num_trajectories"``) or a callable ``(u, v, data) -> float``.
    source_layer : start at this layer's nodes (``-1``: embeddings); default: at every
        node without an incoming edge (embeddings, nodes whose prefix brought nothing).
    target_layer : end at the last token's node of this layer; default: at any of
        :func:`last_token_nodes` (the top layers often receive no edge).
    targets : end at these nodes instead (not together with ``target_layer``).

    Returns
    -------
    list of dicts, best first: ``nodes`` (the path), ``edges`` (``(u, v)`` pairs),
    ``length`` (edges), ``score`` (mean strength), ``tokens`` (token index per node),
    ``worst_rank`` / ``min_trajectories`` (largest ``best_rank`` / smallest
    ``num_trajectories`` along it), ``features`` (those the last edge brought).

    Examples
    --------
    A three-hop path of ranks 1, 1, 2 (mean strength 5/6) beats a single rank-3 hop
    (1/3), which ``min_length=2`` leaves out anyway:

    >>> g = nx.DiGraph(tokens=["<bos>", "a", "b", "c"])
    >>> for u, v, r in [((1, -1), (1, 0), 1), ((1, 0), (2, 1), 1), ((2, 1), (3, 2), 2), ((3, 1), (3, 2), 3)]:
    ...     g.add_edge(u, v, best_rank=r, num_trajectories=1, features=[{"feature": 10 * r}])
    >>> [(p["nodes"], round(p["score"], 3)) for p in strongest_paths(g, min_length=1)]
    [([(1, -1), (1, 0), (2, 1), (3, 2)], 0.833), ([(3, 1), (3, 2)], 0.333)]
    >>> [(p["length"], p["worst_rank"], p["features"]) for p in strongest_paths(g)]
    [(3, 2, [20])]
    >>> [(p["nodes"], p["score"]) for p in strongest_paths(g, source_layer=0)]
    [([(1, 0), (2, 1), (3, 2)], 0.75)]
    """
    if min_length < 1:
        raise ValueError(f"min_length must be ≥ 1 (edges), not {min_length}")
    if g.number_of_edges() == 0 or k < 1:
        return []
    sources, targets = _path_ends(g, source_layer, target_layer, targets)
    best = _k_best_sums(g, sources, targets, k, _edge_strength(strength))
    found = [(total / n, p) for t in targets for n, paths in best[t].items() if n >= min_length for total, p in paths]
    found = heapq.nsmallest(k, found, key=lambda x: (-x[0], -len(x[1]), x[1]))
    if not found:
        logger.info("no path of ≥ %d edges from %d sources into %s", min_length, len(sources), targets)
    out = []
    for score, path in found:
        edges = list(zip(path, path[1:]))
        data = [g.edges[e] for e in edges]
        out.append(dict(
            nodes=list(path), edges=edges, length=len(edges), score=score, tokens=[n[0] for n in path],
            worst_rank=max(int(d.get("best_rank", 0)) for d in data),
            min_trajectories=min(int(d.get("num_trajectories", 0)) for d in data),
            features=[int(f["feature"]) for f in data[-1].get("features", [])],
        ))
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


def _token_alignment(t1: list[str], t2: list[str]) -> list[tuple[int, int]]:
    """Position pairs ``(i, j)`` with ``t1[i] == t2[j]``, increasing in both: the matching
    runs of :class:`difflib.SequenceMatcher` (longest common run first, then recursively
    on either side of it; no junk heuristic, so frequent tokens align too)."""
    matcher = difflib.SequenceMatcher(None, t1, t2, autojunk=False)
    return [(m.a + i, m.b + i) for m in matcher.get_matching_blocks() for i in range(m.size)]


def _first_difference(t1: list[str], t2: list[str]) -> int | None:
    """First position where the token lists differ (the shorter one's length if one is a
    prefix of the other); None if they are equal."""
    if t1 == t2:
        return None
    return next((i for i, (a, b) in enumerate(zip(t1, t2)) if a != b), min(len(t1), len(t2)))


def _warn_positions(t1: list[str], t2: list[str], first: int) -> None:
    at = (f"{t1[first]!r} vs {t2[first]!r}" if first < min(len(t1), len(t2))
          else "one prompt ends there")
    lengths = f"differ in length ({len(t1)} vs {len(t2)} tokens) and " if len(t1) != len(t2) else ""
    warnings.warn(
        f"compare_graphs(by='position'): the prompts {lengths}first differ at token {first} ({at}); "
        "nodes are matched by (token_index, layer), so from there on different tokens are compared, and each "
        "graph is traced back from its own last token, so edges can differ even before that token. "
        "Pass by='token' to align the prompts on their shared tokens, or use trajectory.graph.diff.diff_graph "
        "on the two evolutions for a per-position diff.", UserWarning, stacklevel=3)


def _warn_lengths(t1: list[str], t2: list[str]) -> None:
    warnings.warn(f"compare_graphs(by='token'): the prompts differ in length ({len(t1)} vs {len(t2)} tokens); each "
                  "graph is traced back from its own last token, so aligned positions can have different edges only "
                  "because the tracing reached them from different ends. trajectory.graph.diff.diff_graph compares "
                  "two evolutions position by position without tracing.", UserWarning, stacklevel=3)


def _by_key(x: Any) -> Any:
    """Sort key that orders None (no counterpart) before every position."""
    return tuple(_by_key(y) for y in x) if isinstance(x, tuple) else (-1 if x is None else x)


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def compare_graphs(g1: nx.DiGraph, g2: nx.DiGraph, *, by: Literal["position", "token"] = "position") -> dict[str, Any]:
    """Shared and unique nodes, edges and ``(layer, feature)`` newcomers of two graphs.

    What is compared, each as a set, by Jaccard index ``|A ∩ B| / |A ∪ B|``:

    - ``nodes``: the graphs' nodes, as keys of ``by``;
    - ``edges``: their edges, as pairs of node keys;
    - ``features``: every ``(layer, feature)`` either graph names (node newcomers, MLP
      newcomers, edge features: :func:`~trajectory.graph.build.graph_features`), wherever
      it arrives; positions and ``by`` play no part.

    ``by="position"`` keys a node by ``(token_index, layer)`` (two graphs of one prompt,
    e.g. two ``T``); it warns when the prompts' tokens differ. ``by="token"`` aligns the token lists (:class:`difflib.SequenceMatcher` on the exact
    strings: the longest common run pairs up position by position, then the same on
    either side of it, order kept) and keys a node by ``(i, j, layer)``, its positions in
    the first and second prompt (``None`` where its token has no counterpart). Strings
    must be equal to align: ``" John"`` (leading space) and ``"John"`` at the start of a
    sentence stay apart. ``alignment`` in the result gives the pairs used.

    What it does *not* compare: the evolutions. Both graphs are traced backwards from
    their own last token (:func:`~trajectory.graph.build.trajectory_graph`), so an edge
    is in a graph only if the tracing reached its target. By causality, positions before
    ``first_difference`` read the same prefix in both prompts and their evolutions are
    identical, yet the traced graphs can still differ there, because the tracing from a
    different last token reached other nodes. For two variants of one prompt use
    :func:`trajectory.graph.diff.diff_graph` on the evolutions: it checks the shared
    positions are equal, leaves them out, and compares every edge from the first
    difference on.

    Warnings (``UserWarning``): with ``by="position"`` whenever the prompts' tokens differ
    (in length or anywhere); with ``by="token"`` when their lengths differ.

    Returns
    -------
    ``{"nodes", "edges", "features"}``, each ``{"shared", "only_first", "only_second",
    "jaccard"}`` (sorted lists and a float in ``[0, 1]``; two empty sets have Jaccard
    1); ``"alignment"``: the ``(i, j)`` position pairs matched (``(i, i)`` for every
    shared position with ``by="position"``; None when a graph has no ``tokens``);
    ``"first_difference"``: the first position where the prompts differ (None if they
    are equal or a graph has no ``tokens``).

    Examples
    --------
    >>> a, b = nx.DiGraph(tokens=["<bos>", "x", "y"]), nx.DiGraph(tokens=["<bos>", "x", "y"])
    >>> a.add_edge((1, -1), (2, 0), features=[{"feature": 3}])
    >>> a.add_edge((2, -1), (2, 0), features=[{"feature": 4}])
    >>> b.add_edge((1, -1), (2, 0), features=[{"feature": 3}, {"feature": 5}])
    >>> c = compare_graphs(a, b)
    >>> c["edges"]["shared"], c["edges"]["jaccard"]
    ([((1, -1), (2, 0))], 0.5)
    >>> c["features"]["only_first"], c["features"]["only_second"], round(c["features"]["jaccard"], 3)
    ([(0, 4)], [(0, 5)], 0.333)
    >>> b.graph["tokens"] = ["<bos>", "z", "x", "y"]
    >>> b = nx.relabel_nodes(b, {n: (n[0] + 1, n[1]) for n in b})
    >>> with warnings.catch_warnings(record=True) as caught:  # 3 vs 4 tokens: traced from different ends
    ...     warnings.simplefilter("always")
    ...     c = compare_graphs(a, b, by="token")
    >>> str(caught[0].message)[:64]
    "compare_graphs(by='token'): the prompts differ in length (3 vs 4"
    >>> c["alignment"], c["first_difference"], c["edges"]["shared"]
    ([(0, 0), (1, 2), (2, 3)], 1, [((1, 2, -1), (2, 3, 0))])
    """
    if by not in ("position", "token"):
        raise ValueError(f"by must be 'position' or 'token', not {by!r}")
    t1, t2 = list(g1.graph.get("tokens") or []), list(g2.graph.get("tokens") or [])
    first = _first_difference(t1, t2) if t1 and t2 else None
    if by == "position":
        alignment = [(i, i) for i in range(min(len(t1), len(t2)))] if t1 and t2 else None
        if first is not None:
            _warn_positions(t1, t2, first)
        k1, k2 = {n: n for n in g1.nodes}, {n: n for n in g2.nodes}
    else:
        if not (t1 and t2):
            raise ValueError("compare_graphs(by='token') needs g.graph['tokens'] in both graphs; "
                             "use by='position' for graphs without tokens")
        if len(t1) != len(t2):
            _warn_lengths(t1, t2)
        alignment = _token_alignment(t1, t2)
        to_second, to_first = dict(alignment), {j: i for i, j in alignment}
        k1 = {n: (n[0], to_second.get(n[0]), n[1]) for n in g1.nodes}
        k2 = {n: (to_first.get(n[0]), n[0], n[1]) for n in g2.nodes}
    sets = {
        "nodes": (set(k1.values()), set(k2.values())),
        "edges": ({(k1[u], k1[v]) for u, v in g1.edges}, {(k2[u], k2[v]) for u, v in g2.edges}),
        "features": (set(graph_features(g1)), set(graph_features(g2))),
    }
    out: dict[str, Any] = {
        name: dict(shared=sorted(a & b, key=_by_key), only_first=sorted(a - b, key=_by_key),
                   only_second=sorted(b - a, key=_by_key), jaccard=_jaccard(a, b))
        for name, (a, b) in sets.items()
    }
    return dict(out, alignment=alignment, first_difference=first)

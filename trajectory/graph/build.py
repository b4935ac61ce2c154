"""Trajectory graphs: which key tokens' attention brought new SAE features where.

Built from an :class:`~trajectory.evolution.Evolution` and its newcomers
(:mod:`trajectory.newcomers`). Plain ``networkx.DiGraph`` objects whose attributes are
plain Python values (int, float, bool, str, None, lists and dicts of those), so any
NetworkX algorithm runs on them and :mod:`trajectory.graph.export` writes them to GraphML,
GEXF and node-link JSON.

Trajectory graph (:func:`trajectory_graph`)
-------------------------------------------
``g.graph`` (graph attributes):

=============  ==============================================================
kind           ``"trajectory"``
tokens         ``list[str]``: the full prompt's tokens, BOS first (``N`` of them)
model_name     ``str``
preset         ``str | None``
k              ``int``: top-k size of the evolution
T              ``int``: final-rank cut-off of newcomers
through        ``"attention"`` | ``"mlp"``: the final step of newcomers
include_bos    ``bool``: whether edges from BOS are drawn
layers         ``list[int]``: the layers the evolution computed
=============  ==============================================================

**Nodes** are tuples ``(token_index, layer)``; ``layer == -1`` stands for the token
embeddings (the input of layer 0), so an edge into layer 0 comes from ``(t, -1)``.
Node ``(t, L)`` is the residual stream of token ``t`` at layer ``L``; its newcomers
are those of prefix length ``n = t + 1`` at layer ``L`` (``t`` is that prefix's query).

===============  ==================================================================
token_index      ``int``
layer            ``int`` (``-1`` = embeddings)
token            ``str``: ``tokens[token_index]``
is_bos           ``bool``: ``token_index == 0``
newcomers        ``list[dict]``: every feature that newly arrived at this node through
                 attention (also those brought by BOS when BOS edges are hidden), sorted
                 by rank: ``{feature:int, activation:float, rank:int, source_token:int,
                 first_step:int, explanation:str|None}``
mlp_newcomers    ``list[dict]``, same keys with ``source_token`` = the node's own token:
                 features first seen at the ``mlp`` step (only when ``through="mlp"``;
                 they make no edge)
n_newcomers      ``int``: ``len(newcomers) + len(mlp_newcomers)``
===============  ==================================================================

Embedding nodes, BOS nodes and nodes of layers the evolution did not compute have
empty lists.

**Edges** ``(t, L-1) → (q, L)``: "layer L's attention from key token ``t`` brought
newcomers to query ``q``" (``t ≤ q``; ``t == q`` is a token attending to itself):

=================  ==============================================================
layer              ``int``: ``L``
source_token       ``int``: ``t``
target_token       ``int``: ``q``
prefix_length      ``int``: ``q + 1``
num_trajectories   ``int``: number of newcomer features the edge carries (≥ 1)
best_rank          ``int``: smallest final rank among them (1 = strongest)
features           ``list[dict]`` sorted by rank: ``{feature:int, rank:int,
                   activation:float, first_step:int, explanation:str|None}``
=================  ==============================================================

**Backward tracing.** The graph starts at the full prompt's last token: node
``(N-1, L)`` for every computed layer (present even without edges) and the edges of
prefix length ``N``. For every source node ``(t, L-1)`` reached (``L-1 ≥ 0``, a
computed layer, ``t ≥ 1``) the edges of prefix length ``t + 1`` ending at
``(t, L-1)`` are added, recursively. Tracing stops at the embeddings (layer -1), at
BOS (prefix length 1 does not exist) and at layers that were not computed. Edges from
BOS are left out unless ``include_bos=True`` (attention sinks put many there), but
the newcomers they brought stay listed on the target node.

Feature graph (:func:`feature_graph`)
-------------------------------------
The same trajectories one feature at a time: node ``(token_index, layer, feature)``
for every newcomer at every node of the trajectory graph (``feature == -1``: the
residual stream of a source node that has no newcomers of its own, e.g. an
embedding). For each trajectory edge ``(t, L-1) → (q, L)`` and each feature ``f``
it carries there is an edge from every newcomer ``f'`` of ``(t, L-1)`` (or from
``(t, L-1, -1)`` when it has none) to ``(q, L, f)``: ``f`` reached ``q`` through a
residual stream into which ``f'`` had itself newly arrived. ``g.graph`` is as above
with ``kind="feature"``. Node attributes: ``token_index, layer, feature, token,
is_bos, kind`` (``"attention" | "mlp" | "residual"``), ``rank, activation,
source_token, first_step, explanation`` (None for residual nodes). Edge attributes:
``layer, source_token, target_token, prefix_length`` and the target feature's
``rank, activation, first_step``.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from typing import Any, Callable, Mapping, Union

import networkx as nx

from trajectory.newcomers import Newcomer, Through, _check, find_newcomers

__all__ = [
    "trajectory_graph",
    "graph_for_prefix",
    "feature_graph",
    "attach_explanations",
    "graph_features",
]

#: ``{(layer, feature): text}`` or a callable ``(layer, feature) -> text | None``.
Explanations = Union[Mapping[tuple[int, int], str], Callable[[int, int], Union[str, None]], None]


def _auto_explanations(build: Callable[..., nx.DiGraph]) -> Callable[..., nx.DiGraph]:
    """Let ``build(evo, ..., explanations="auto")`` attach the explanations the CLI shows:
    the bank's stored labels (the bank recorded in the evolution, else
    ``results/banks/<preset>``), else Neuronpedia (cached) — see
    :func:`trajectory.explanations.lookup.explain_features`."""

    @functools.wraps(build)
    def wrapper(evo, *args: Any, explanations: "Explanations | str" = None, **kwargs: Any) -> nx.DiGraph:
        if not isinstance(explanations, str):
            return build(evo, *args, explanations=explanations, **kwargs)
        if explanations != "auto":
            raise ValueError(f"explanations={explanations!r}: pass 'auto', a dict {{(layer, feature): text}}, "
                             "a callable (layer, feature) -> text, or None")
        from trajectory.explanations.lookup import explain_features

        g = build(evo, *args, explanations=None, **kwargs)
        return attach_explanations(g, explain_features(evo, graph_features(g), progress=False))

    return wrapper


def _explainer(explanations: Explanations) -> Callable[[int, int], str | None]:
    if explanations is None:
        return lambda layer, feature: None
    if callable(explanations) and not isinstance(explanations, Mapping):
        fn = explanations
    else:
        fn = lambda layer, feature: explanations.get((layer, feature))  # noqa: E731

    def lookup(layer: int, feature: int) -> str | None:
        text = fn(int(layer), int(feature))
        return None if text is None else str(text)

    return lookup


class _Newcomers:
    """Newcomers per (n, layer), computed once on first use."""

    def __init__(self, evo, T: int, through: str) -> None:
        self.evo, self.T, self.through = evo, T, through
        self._cache: dict[tuple[int, int], list[Newcomer]] = {}

    def at_node(self, t: int, layer: int) -> list[Newcomer]:
        """Newcomers of node (t, layer): prefix length t + 1; none for BOS, embeddings, missing layers."""
        if t < 1 or layer not in self.evo.rows:
            return []
        key = (t + 1, layer)
        if key not in self._cache:
            self._cache[key] = find_newcomers(self.evo, t + 1, layer, T=self.T, through=self.through)
        return self._cache[key]


def _graph_attrs(evo, kind: str, T: int, through: str, include_bos: bool) -> dict[str, Any]:
    return dict(
        kind=kind,
        tokens=[str(t) for t in evo.tokens],
        model_name=str(evo.model_name or ""),
        preset=evo.preset,
        k=int(evo.k),
        T=int(T),
        through=str(through),
        include_bos=bool(include_bos),
        layers=[int(x) for x in evo.layers],
    )


def _edge_groups(news: list[Newcomer]) -> dict[int, list[Newcomer]]:
    groups: dict[int, list[Newcomer]] = defaultdict(list)
    for c in news:
        if c.via == "attention":
            groups[c.source_token].append(c)
    return groups


def _feature_dict(c: Newcomer, explain, *, source: bool) -> dict[str, Any]:
    d: dict[str, Any] = dict(feature=int(c.feature), activation=float(c.activation), rank=int(c.final_rank))
    if source:
        d["source_token"] = int(c.source_token if c.source_token is not None else c.query_token)
    d["first_step"] = int(c.first_step)
    d["explanation"] = explain(c.layer, c.feature)
    return d


def _add_edge(g: nx.DiGraph, t: int, q: int, layer: int, feats: list[Newcomer], explain) -> None:
    feats = sorted(feats, key=lambda c: (c.final_rank, c.feature))
    g.add_edge(
        (int(t), int(layer) - 1),
        (int(q), int(layer)),
        layer=int(layer),
        source_token=int(t),
        target_token=int(q),
        prefix_length=int(q) + 1,
        num_trajectories=len(feats),
        best_rank=int(feats[0].final_rank),
        features=[_feature_dict(c, explain, source=False) for c in feats],
    )


def _fill_nodes(g: nx.DiGraph, evo, news: _Newcomers, explain) -> None:
    for node in g.nodes:
        t, layer = node
        found = news.at_node(t, layer)
        attn = [_feature_dict(c, explain, source=True) for c in found if c.via == "attention"]
        mlp = [_feature_dict(c, explain, source=True) for c in found if c.via == "mlp"]
        g.nodes[node].update(
            token_index=int(t),
            layer=int(layer),
            token=str(evo.tokens[t]),
            is_bos=t == 0,
            newcomers=attn,
            mlp_newcomers=mlp,
            n_newcomers=len(attn) + len(mlp),
        )


def _validate(evo, T: int, through: str) -> None:
    _check(T, through)
    if evo.n_tokens < 2:
        raise ValueError("the evolution has fewer than 2 tokens; a trajectory graph needs a prefix of length ≥ 2")


@_auto_explanations
def graph_for_prefix(
    evo,
    n: int,
    *,
    T: int = 22,
    through: Through = "attention",
    include_bos: bool = False,
    explanations: Explanations = None,
) -> nx.DiGraph:
    """The untraced graph of one prefix length ``n``: edges into the query ``(n-1, L)``
    for every layer, nodes ``(n-1, L)`` for every computed layer plus the sources.
    Attributes as in the module docstring."""
    _validate(evo, T, through)
    if n not in evo.prefix_lengths:
        raise ValueError(f"prefix length {n} out of range: this prompt has lengths 2..{evo.n_tokens}")
    news, explain = _Newcomers(evo, T, through), _explainer(explanations)
    g = nx.DiGraph(**_graph_attrs(evo, "trajectory", T, through, include_bos))
    q = n - 1
    for layer in evo.layers:
        g.add_node((q, int(layer)))
        _add_node_edges(g, news, q, int(layer), include_bos, explain)
    _fill_nodes(g, evo, news, explain)
    return g


def _add_node_edges(g: nx.DiGraph, news: _Newcomers, q: int, layer: int, include_bos: bool, explain) -> list[int]:
    """Add the edges into node ``(q, layer)``, one per key token that brought newcomers
    there (BOS left out unless ``include_bos``); returns those key tokens."""
    keys = []
    for t, feats in sorted(_edge_groups(news.at_node(q, layer)).items()):
        if t == 0 and not include_bos:
            continue
        _add_edge(g, t, q, layer, feats, explain)
        keys.append(t)
    return keys


@_auto_explanations
def trajectory_graph(
    evo,
    *,
    T: int = 22,
    through: Through = "attention",
    include_bos: bool = False,
    explanations: Explanations = None,
) -> nx.DiGraph:
    """The trajectory graph of an evolution, traced backwards from its last token.

    Parameters
    ----------
    evo : trajectory.evolution.Evolution
    T : final-rank cut-off of newcomers (the original method used 13-22).
    through : ``"attention"`` or ``"mlp"``: the step at which newcomers must still be present.
    include_bos : draw edges from BOS (left out by default).
    explanations : ``{(layer, feature): text}``, a callable ``(layer, feature) -> text``,
        or ``"auto"``: the explanations ``trajectory graph`` shows (the bank's stored
        labels for locally trained SAEs, else Neuronpedia, cached on disk); attached to
        every feature dict (``None`` where missing). See also :func:`attach_explanations`
        to add them later.

    Returns
    -------
    networkx.DiGraph with the node, edge and graph attributes of the module docstring.

    Examples
    --------
    >>> from trajectory.evolution.result import Evolution
    >>> tokens = ["<bos>", "a", "b"]
    >>> empty = lambda n: [([], [])] * (n + 2)
    >>> lists = {(2, 0): empty(2), (3, 0): [([1], [1.0]), ([1], [1.0]), ([1, 7], [2.0, 1.0]),
    ...                                     ([1, 7], [2.0, 1.0]), ([7, 1], [3.0, 1.0])]}
    >>> g = trajectory_graph(Evolution.from_lists(tokens, lists, k=4), T=2)
    >>> sorted(g.edges)
    [((1, -1), (2, 0))]
    >>> g.edges[(1, -1), (2, 0)]["features"][0]["feature"]
    7
    """
    _validate(evo, T, through)
    news, explain = _Newcomers(evo, T, through), _explainer(explanations)
    g = nx.DiGraph(**_graph_attrs(evo, "trajectory", T, through, include_bos))
    last = evo.n_tokens - 1
    todo = [(last, int(layer)) for layer in evo.layers]
    g.add_nodes_from(todo)
    seen: set[tuple[int, int]] = set()
    while todo:
        q, layer = todo.pop()
        if (q, layer) in seen:
            continue
        seen.add((q, layer))
        for t in _add_node_edges(g, news, q, layer, include_bos, explain):
            source = (t, layer - 1)
            if layer - 1 >= 0 and t >= 1 and source not in seen:
                todo.append(source)
    _fill_nodes(g, evo, news, explain)
    return g


def feature_graph(
    source,
    *,
    T: int = 22,
    through: Through = "attention",
    include_bos: bool = False,
    explanations: Explanations = None,
) -> nx.DiGraph:
    """The feature-level view (nodes ``(token_index, layer, feature)``; see the module docstring).

    ``source`` is an :class:`~trajectory.evolution.Evolution` (the other arguments are
    then passed to :func:`trajectory_graph`) or a trajectory graph already built (the
    other arguments are ignored except ``explanations``, which is attached when given).
    """
    if isinstance(source, nx.Graph):
        tg = source
        if tg.graph.get("kind") != "trajectory":
            raise ValueError("feature_graph needs an Evolution or a graph made by trajectory_graph (kind='trajectory')")
    else:
        tg = trajectory_graph(source, T=T, through=through, include_bos=include_bos)
    explain = _explainer(explanations) if explanations is not None else None
    fg = nx.DiGraph(**{**tg.graph, "kind": "feature"})

    def base(node) -> dict[str, Any]:
        d = tg.nodes[node]
        return dict(token_index=d["token_index"], layer=d["layer"], token=d["token"], is_bos=d["is_bos"])

    def feature_nodes(node) -> list[tuple[int, int, int]]:
        d = tg.nodes[node]
        out = []
        for kind, key in (("attention", "newcomers"), ("mlp", "mlp_newcomers")):
            for f in d[key]:
                fid = (node[0], node[1], int(f["feature"]))
                expl = explain(node[1], f["feature"]) if explain else f.get("explanation")
                fg.add_node(
                    fid,
                    **base(node),
                    feature=int(f["feature"]),
                    kind=kind,
                    rank=f["rank"],
                    activation=f["activation"],
                    source_token=f["source_token"],
                    first_step=f["first_step"],
                    explanation=expl,
                )
                out.append(fid)
        return out

    members = {node: feature_nodes(node) for node in tg.nodes}
    for u, v, d in tg.edges(data=True):
        sources = members[u]
        if not sources:
            rid = (u[0], u[1], -1)
            fg.add_node(rid, **base(u), feature=-1, kind="residual", rank=None, activation=None,
                        source_token=None, first_step=None, explanation=None)
            sources = [rid]
        for f in d["features"]:
            target = (v[0], v[1], int(f["feature"]))
            for s in sources:
                fg.add_edge(
                    s, target, layer=d["layer"], source_token=d["source_token"], target_token=d["target_token"],
                    prefix_length=d["prefix_length"], rank=f["rank"], activation=f["activation"],
                    first_step=f["first_step"],
                )
    return fg


def graph_features(g: nx.Graph) -> list[tuple[int, int]]:
    """Every ``(layer, feature)`` named by a trajectory or feature graph, sorted: what to explain.

    The layer is the node's or edge's ``layer`` attribute, else the layer in the node id
    (``(token, layer)`` / ``(token, layer, feature)``).
    """
    found: set[tuple[int, int]] = set()
    for node, d in g.nodes(data=True):
        layer = int(d.get("layer", node[1]))
        if g.graph.get("kind") == "feature":
            if d.get("feature", -1) >= 0:
                found.add((layer, int(d["feature"])))
            continue
        for key in ("newcomers", "mlp_newcomers"):
            found.update((layer, int(f["feature"])) for f in d.get(key) or [])
    for _, v, d in g.edges(data=True):
        found.update((int(d.get("layer", v[1])), int(f["feature"])) for f in d.get("features") or [])
    return sorted(found)


def attach_explanations(g: nx.Graph, explanations: Explanations) -> nx.Graph:
    """Set ``explanation`` on every feature dict of a trajectory graph (node newcomers,
    edge features) or on every feature node of a feature graph, in place; returns ``g``.
    Features without an explanation get ``None``."""
    explain = _explainer(explanations)
    for node, d in g.nodes(data=True):
        if g.graph.get("kind") == "feature":
            if d.get("feature", -1) >= 0:
                d["explanation"] = explain(d["layer"], d["feature"])
            continue
        for key in ("newcomers", "mlp_newcomers"):
            for f in d.get(key) or []:
                f["explanation"] = explain(d["layer"], f["feature"])
    for _, _, d in g.edges(data=True):
        for f in d.get("features") or []:
            f["explanation"] = explain(d["layer"], f["feature"])
    return g

"""The contrastive graph of two prompts: which trajectory edges a token change made or removed.

Two prompts that share their first ``d`` tokens (``d`` = the first position where the
token ids differ) read the same prefix up to position ``d - 1``: causal attention makes
every top-k list of prefix lengths ``n ≤ d`` identical. :func:`diff_graph` checks that
(up to float noise; a difference there means other models, SAEs or settings) and leaves
those positions out. From position ``d`` on it compares, per (token, layer), the edges
of *every* prefix length ``n > d`` — not the backward-traced trajectory graphs, whose
edges depend on which nodes the tracing from each last token happens to reach (the
reason :func:`~trajectory.graph.analysis.compare_graphs` can report differences before
the changed token).

Diff graph schema
-----------------
``g.graph``: ``kind="diff"``, ``tokens_a``, ``tokens_b``, ``first_difference`` (``d``;
None for equal prompts), ``model_name``, ``preset``, ``k``, ``T``, ``through``,
``include_bos``, ``layers``, ``prefix_max_abs_diff`` (the largest activation difference
found at the shared positions: the float noise), and ``tokens`` (``tokens_a`` with
``"a/b"`` at the positions where the prompts differ; for the renderers).

**Nodes** ``(token_index, layer)`` (``layer == -1``: embeddings): attributes
``token_index``, ``layer``, ``token`` (as in ``g.graph["tokens"]``), ``token_a``,
``token_b`` (None where that prompt is shorter), ``n_newcomers_a``, ``n_newcomers_b``
(attention newcomers arriving there in each prompt; 0 for embeddings).

**Edges** ``(t, L-1) → (q, L)`` with ``q ≥ d`` — "layer L's attention from key ``t``
brought newcomers to query ``q``" in A, in B or in both:

=================  ==============================================================
side               ``"a"`` | ``"b"`` | ``"both"``
layer, source_token, target_token, prefix_length   as in trajectory graphs
best_rank_a/_b     ``int | None``: best final rank in A / B (None: no such edge)
rank_change        ``int | None``: ``best_rank_b - best_rank_a`` (both sides only;
                   negative = stronger in B)
num_trajectories_a/_b  ``int`` (0 where absent)
best_rank          ``int``: the better of the two (for the renderers' colour scale)
num_trajectories   ``int``: the larger of the two
features_a/_b      ``list[dict]``: the edge's features in A / B (trajectory-graph dicts)
features_only_a/_b, features_shared  ``list[int]``: feature indices by side
=================  ==============================================================
"""
from __future__ import annotations

import logging
from typing import Any

import networkx as nx
import numpy as np

from trajectory.graph.build import Explanations, graph_for_prefix
from trajectory.newcomers import Through

__all__ = ["diff_graph", "first_difference", "check_shared_prefix"]

log = logging.getLogger(__name__)

#: activations at shared positions may differ by this much (relative to the largest
#: activation of the row, plus an absolute floor): batched and single runs round differently
RTOL, ATOL = 1e-4, 1e-5


def first_difference(evo_a, evo_b) -> int | None:
    """First position where the two prompts' tokens differ (in id or string); the
    shorter length when one prompt is a prefix of the other; None when equal."""
    a = list(zip(evo_a.token_ids, evo_a.tokens)) if len(evo_a.token_ids) == evo_a.n_tokens else list(evo_a.tokens)
    b = list(zip(evo_b.token_ids, evo_b.tokens)) if len(evo_b.token_ids) == evo_b.n_tokens else list(evo_b.tokens)
    if type(a[0] if a else None) is not type(b[0] if b else None):
        a, b = list(evo_a.tokens), list(evo_b.tokens)
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _check_compatible(evo_a, evo_b) -> None:
    for name in ("model_name", "k", "layers", "postnorm"):
        x, y = getattr(evo_a, name), getattr(evo_b, name)
        if x != y:
            raise ValueError(f"the two evolutions differ in {name} ({x!r} vs {y!r}); a diff needs two prompts "
                             "evolved with the same model, SAEs and settings")
    sa, sb = evo_a.metadata.get("saes"), evo_b.metadata.get("saes")
    if sa is not None and sb is not None and sa != sb:
        raise ValueError("the two evolutions were made with different SAEs (metadata 'saes' differ); "
                         "a diff needs the same SAE bank")


def _rows_match(ia, va, ib, vb) -> float | None:
    """Largest activation difference between two top-k rows when they agree up to float
    noise; None when they do not. Features present in one row only must sit at the other
    row's cut-off (last kept value or the activity threshold)."""
    scale = max(float(np.max(va, initial=0.0)), float(np.max(vb, initial=0.0)), 1.0)
    tol = ATOL + RTOL * scale
    da, db = dict(zip(ia.tolist(), va.tolist())), dict(zip(ib.tolist(), vb.tolist()))
    worst = 0.0
    for f in da.keys() & db.keys():
        worst = max(worst, abs(da[f] - db[f]))
    for mine, other in ((da, vb), (db, va)):
        floor = float(other[-1]) if len(other) else 0.0
        for f in mine.keys() - (da.keys() & db.keys()):
            worst = max(worst, min(abs(mine[f] - floor), abs(mine[f])))
    return worst if worst <= tol else None


def check_shared_prefix(evo_a, evo_b, d: int) -> float:
    """Check that every top-k row of prefix lengths ``n ≤ d`` (positions before ``d``)
    agrees between the two evolutions up to float noise; returns the largest activation
    difference seen. Raises ``ValueError`` naming the first row that differs."""
    worst = 0.0
    for layer in evo_a.layers:
        for n in range(2, d + 1):
            for s in range(n + 2):
                (ia, va), (ib, vb) = evo_a.topk(n, layer, s), evo_b.topk(n, layer, s)
                w = _rows_match(ia, va, ib, vb)
                if w is None:
                    raise ValueError(
                        f"the two evolutions differ at layer {layer}, prefix length {n}, step {s} although both "
                        f"prompts read the same {d} first tokens there (causal attention makes them equal): they were "
                        "made with different models, SAEs or settings")
                worst = max(worst, w)
    return worst


def _edges_from(evo, d: int, T: int, through: str, include_bos: bool) -> tuple[dict, dict]:
    """Edges and attention-newcomer counts of every node ``(q, L)`` with ``q ≥ d``, untraced."""
    edges, counts = {}, {}
    for n in range(max(d + 1, 2), evo.n_tokens + 1):
        g = graph_for_prefix(evo, n, T=T, through=through, include_bos=include_bos)
        edges.update({(u, v): d_ for u, v, d_ in g.edges(data=True)})
        for node, nd in g.nodes(data=True):
            if node[0] == n - 1:
                counts[node] = len(nd.get("newcomers") or [])
    return edges, counts


def _edge_attrs(da: dict | None, db: dict | None) -> dict[str, Any]:
    base = da or db
    fa = [f for f in (da or {}).get("features", [])]
    fb = [f for f in (db or {}).get("features", [])]
    ids_a, ids_b = {int(f["feature"]) for f in fa}, {int(f["feature"]) for f in fb}
    ra, rb = (da or {}).get("best_rank"), (db or {}).get("best_rank")
    return dict(
        side="both" if da and db else ("a" if da else "b"),
        layer=base["layer"], source_token=base["source_token"], target_token=base["target_token"],
        prefix_length=base["prefix_length"],
        best_rank_a=ra, best_rank_b=rb, rank_change=rb - ra if da and db else None,
        num_trajectories_a=int((da or {}).get("num_trajectories", 0)),
        num_trajectories_b=int((db or {}).get("num_trajectories", 0)),
        best_rank=min(r for r in (ra, rb) if r is not None),
        num_trajectories=max(int((da or {}).get("num_trajectories", 0)), int((db or {}).get("num_trajectories", 0))),
        features_a=fa, features_b=fb,
        features_only_a=sorted(ids_a - ids_b), features_only_b=sorted(ids_b - ids_a),
        features_shared=sorted(ids_a & ids_b),
    )


def diff_graph(
    evo_a,
    evo_b,
    *,
    T: int = 22,
    through: Through = "attention",
    include_bos: bool = False,
    explanations: Explanations = None,
) -> nx.DiGraph:
    """The contrastive graph of two prompts' evolutions (schema: module docstring).

    Parameters
    ----------
    evo_a, evo_b : :class:`~trajectory.evolution.Evolution` objects (or paths to evolution
        files) of two prompts run with the same model, SAEs and settings.
    T, through, include_bos : as for :func:`~trajectory.graph.build.trajectory_graph`.
    explanations : as there; attached to the feature dicts.

    Raises ``ValueError`` when the evolutions come from different models / SAEs / k /
    layers, or disagree at positions before the first differing token.

    Examples
    --------
    >>> from trajectory.evolution.result import Evolution
    >>> empty = lambda n: [([], [])] * (n + 2)
    >>> brings = [([1], [1.0]), ([1], [1.0]), ([1, 7], [2.0, 1.0]), ([1, 7], [2.0, 1.0]), ([7, 1], [3.0, 1.0])]
    >>> a = Evolution.from_lists(["<bos>", "a", "b"], {(2, 0): empty(2), (3, 0): brings}, k=4)
    >>> b = Evolution.from_lists(["<bos>", "a", "c"], {(2, 0): empty(2), (3, 0): empty(3)}, k=4)
    >>> g = diff_graph(a, b, T=2)
    >>> g.graph["first_difference"], [(u, v, s) for u, v, s in g.edges(data="side")]
    (2, [((1, -1), (2, 0), 'a')])
    >>> diff_graph(a, a, T=2).number_of_edges()
    0
    """
    from trajectory.evolution.result import Evolution

    evo_a, evo_b = (Evolution.load(e) if not isinstance(e, Evolution) else e for e in (evo_a, evo_b))
    _check_compatible(evo_a, evo_b)
    d = first_difference(evo_a, evo_b)
    shared = min(evo_a.n_tokens, evo_b.n_tokens) if d is None else d
    noise = check_shared_prefix(evo_a, evo_b, shared)
    tokens_a, tokens_b = [str(t) for t in evo_a.tokens], [str(t) for t in evo_b.tokens]
    merged = [(ta if ta == tb else f"{ta}/{tb}") for ta, tb in zip(tokens_a, tokens_b)]
    longer = tokens_a if len(tokens_a) >= len(tokens_b) else tokens_b
    merged += longer[len(merged):]
    g = nx.DiGraph(kind="diff", tokens=merged, tokens_a=tokens_a, tokens_b=tokens_b, first_difference=d,
                   model_name=str(evo_a.model_name or ""), preset=evo_a.preset, k=int(evo_a.k), T=int(T),
                   through=str(through), include_bos=bool(include_bos), layers=[int(x) for x in evo_a.layers],
                   prefix_max_abs_diff=float(noise))
    if d is None:
        log.info("the two prompts are equal: empty diff (largest activation difference %.3g)", noise)
        return g
    ea, ca = _edges_from(evo_a, d, T, through, include_bos)
    eb, cb = _edges_from(evo_b, d, T, through, include_bos)
    for key in sorted(ea.keys() | eb.keys(), key=lambda e: (e[1][0], e[1][1], e[0][0])):
        g.add_edge(*key, **_edge_attrs(ea.get(key), eb.get(key)))
    for node in g.nodes:
        t, layer = node
        g.nodes[node].update(
            token_index=int(t), layer=int(layer), token=merged[t],
            token_a=tokens_a[t] if t < len(tokens_a) else None, token_b=tokens_b[t] if t < len(tokens_b) else None,
            n_newcomers_a=int(ca.get(node, 0)), n_newcomers_b=int(cb.get(node, 0)),
        )
    if explanations is not None:
        from trajectory.graph.build import attach_explanations

        for key in ("features_a", "features_b"):  # the feature lists by side, as trajectory-graph edges hold them
            view = nx.DiGraph()
            for u, v, dd in g.edges(data=True):
                view.add_edge(u, v, layer=dd["layer"], features=dd[key])
            attach_explanations(view, explanations)
    return g

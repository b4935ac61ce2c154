"""The aggregated feature-flow graph of many prompts: which feature flows recur.

One prompt's :func:`~trajectory.graph.build.feature_graph` says which SAE features newly
arrived where, and from which newly arrived features they came. :func:`aggregate` adds
up those graphs over a prompt set, forgetting token positions: a node is an SAE latent
``(layer, feature)``, an edge says "in some prompt, ``g`` had newly arrived at a residual
stream whose attention then brought ``f`` one layer up". Plain ``networkx.DiGraph``
with plain attributes, so :func:`trajectory.graph.export.export_graph` writes it to
GraphML, GEXF and node-link JSON and reads it back equal.

Aggregate graph schema
----------------------
``g.graph``: ``kind="aggregate"``, ``model_name``, ``preset``, ``k``, ``T``,
``through``, ``include_bos`` (the settings every input shares), ``layers`` (union,
sorted), ``bos_token`` (the first input's token 0), ``n_prompts`` (inputs aggregated)
and ``prompts`` (``list[str]``: a label per input, the prompt text when known;
``prompt_ids`` below index into it).

**Nodes.** Per prompt ``p`` (its feature graph ``F_p`` built with ``T``, ``through``,
``include_bos``; its tokens ``tok_p``):

- *feature* node ``(layer, feature)`` (two ints) for every node ``(t, L, f)`` of ``F_p``
  with ``f ≥ 0``, i.e. every newcomer of every node of the prompt's traced trajectory
  graph (those brought by BOS included, MLP newcomers when ``through="mlp"``);
- *token* node ``(layer, token_string)`` (an int and a str) for every residual node
  ``(t, L, -1)`` of ``F_p`` — a source stream with no newcomer of its own: ``layer == -1``
  is the embedding of ``tok_p[t]`` (kind ``"embedding"``), ``layer ≥ 0`` a stream of that
  token that passes features on without receiving any (kind ``"residual"``). Keying by
  the token string makes "the embedding of ' Mary'" one node across prompts.

Node attributes (each sum runs over prompts and their feature-graph nodes mapped here):

=============  ===================================================================
kind           ``"feature"`` | ``"embedding"`` | ``"residual"``
layer          ``int``
feature        ``int`` (``-1`` for token nodes)
token          ``str | None``: the token string of token nodes
prompts        ``int``: number of prompts in which it occurs
prompt_ids     ``list[int]``: those prompts, ascending (indices into ``g.graph["prompts"]``)
occurrences    ``int``: number of feature-graph nodes mapped here (a feature arriving at
               3 tokens of one prompt counts 3)
mean_rank      ``float | None``: mean final rank over the occurrences (None for token nodes)
best_rank      ``int | None``: smallest final rank
mean_activation ``float | None``: mean activation at the final step
key_tokens     ``dict[str, int]``: histogram of the key-token strings whose attention
               brought it (``tok_p[source_token]``; attention arrivals only)
query_tokens   ``dict[str, int]``: histogram of the token strings it arrived at
via_mlp        ``int``: occurrences that arrived at the ``mlp`` step (no key token)
explanation    ``str | None``: the first explanation found (feature graphs, else
               ``explanations``)
=============  ===================================================================

**Edges** ``(L-1, g) → (L, f)``: for every edge ``(t, L-1, g') → (q, L, f)`` of some
``F_p``, with ``g`` = ``g'`` when ``g' ≥ 0`` else ``tok_p[t]`` (the token node): ``f``
reached token ``q`` at layer ``L`` through the attention from key ``t``, whose stream
``g`` had itself newly arrived at (or, for token nodes, which had no newcomer). Edge
attributes: ``layer`` (``L``), ``prompts``, ``prompt_ids``, ``occurrences``
(feature-graph edges mapped here), ``best_rank`` / ``mean_rank`` (final rank of ``f``
over those), ``key_tokens`` (histogram of ``tok_p[t]``). Every edge climbs one layer,
so the graph is acyclic.

Histograms are dicts with string keys: JSON keeps them, GraphML / GEXF JSON-encode
them (as every dict attribute there).
"""
from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import networkx as nx

from trajectory.graph.build import Explanations, _explainer, feature_graph

__all__ = ["aggregate", "aggregate_folder", "read_index", "explain_aggregate", "top_flows", "consistent_features",
           "shared_flow_prompts"]

log = logging.getLogger(__name__)

DEFAULT_T = 22
#: settings every aggregated prompt must share
_SHARED = ("model_name", "k", "T", "through", "include_bos")


@dataclass
class _Acc:
    """Running sums of one node or edge (sums, not lists: memory stays flat over many prompts)."""

    prompt_ids: set[int] = field(default_factory=set)
    occurrences: int = 0
    n_ranks: int = 0
    rank_sum: int = 0
    rank_min: int | None = None
    n_activations: int = 0
    activation_sum: float = 0.0
    key_tokens: Counter = field(default_factory=Counter)
    query_tokens: Counter = field(default_factory=Counter)
    via_mlp: int = 0
    explanation: str | None = None

    def add(self, p: int, rank: Any = None, activation: Any = None) -> None:
        self.prompt_ids.add(p)
        self.occurrences += 1
        if rank is not None:
            self.n_ranks += 1
            self.rank_sum += int(rank)
            self.rank_min = int(rank) if self.rank_min is None else min(self.rank_min, int(rank))
        if activation is not None:
            self.n_activations += 1
            self.activation_sum += float(activation)

    def stats(self) -> dict[str, Any]:
        return dict(
            prompts=len(self.prompt_ids), prompt_ids=sorted(self.prompt_ids), occurrences=self.occurrences,
            mean_rank=self.rank_sum / self.n_ranks if self.n_ranks else None, best_rank=self.rank_min,
        )


def _feature_graph_of(item: Any, T: int, through: str, include_bos: bool) -> tuple[nx.DiGraph, str, Any]:
    """A feature graph, a label and the SAEs an evolution records (None for graphs) for one
    input (Evolution, path, feature or trajectory graph)."""
    from trajectory.evolution.result import Evolution

    if isinstance(item, (str, Path)):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"no evolution file at {path}; make one with `trajectory evolve`")
        item = Evolution.load(path)
    if isinstance(item, Evolution):
        label = str(item.metadata.get("prompt") or "".join(item.tokens[1:]))
        return feature_graph(item, T=T, through=through, include_bos=include_bos), label, item.metadata.get("saes")
    if isinstance(item, nx.Graph):
        kind = item.graph.get("kind")
        if kind == "trajectory":
            item = feature_graph(item)
        elif kind != "feature":
            raise ValueError(f"aggregate takes Evolutions, evolution file paths, or graphs made by feature_graph / "
                             f"trajectory_graph; got a graph of kind {kind!r}")
        return item, "".join(str(t) for t in (item.graph.get("tokens") or [])[1:]), None
    raise TypeError(f"aggregate takes Evolutions, evolution file paths, or feature graphs, not {type(item).__name__}")


def _settings(fg: nx.DiGraph) -> dict[str, Any]:
    return {key: fg.graph.get(key) for key in _SHARED}


def _check_same(first: dict[str, Any], other: dict[str, Any], i: int) -> None:
    for key in _SHARED:
        if first[key] != other[key]:
            raise ValueError(f"input {i} has {key}={other[key]!r} but input 0 has {key}={first[key]!r}; aggregate "
                             "only prompts evolved with one model and k and graphs of one T / through / include_bos")


def _add_prompt(p: int, fg: nx.DiGraph, nodes: dict, edges: dict) -> None:
    """Add prompt ``p``'s feature graph to the running node and edge sums."""
    tokens = [str(t) for t in fg.graph.get("tokens") or []]

    def key(n, d) -> tuple:
        f = int(d.get("feature", n[2]))
        return (int(d.get("layer", n[1])), f) if f >= 0 else (int(d.get("layer", n[1])), tokens[n[0]])

    for n, d in fg.nodes(data=True):
        acc = nodes[key(n, d)]
        acc.add(p, d.get("rank"), d.get("activation"))
        if int(d.get("feature", n[2])) < 0:
            continue
        acc.query_tokens[tokens[n[0]]] += 1
        if d.get("kind") == "mlp":
            acc.via_mlp += 1
        elif d.get("source_token") is not None:
            acc.key_tokens[tokens[int(d["source_token"])]] += 1
        if acc.explanation is None and d.get("explanation"):
            acc.explanation = str(d["explanation"])
    for u, v, d in fg.edges(data=True):
        acc = edges[(key(u, fg.nodes[u]), key(v, fg.nodes[v]))]
        acc.add(p, d.get("rank"))
        acc.key_tokens[tokens[int(d.get("source_token", u[0]))]] += 1


def aggregate(
    items: Iterable[Any],
    *,
    T: int | None = None,
    through: str | None = None,
    include_bos: bool | None = None,
    explanations: Explanations = None,
    labels: Sequence[str] | None = None,
    progress: bool = False,
) -> nx.DiGraph:
    """The aggregated feature-flow graph of many prompts (schema: module docstring).

    Parameters
    ----------
    items : Evolutions, paths of evolution files, or graphs made by
        :func:`~trajectory.graph.build.feature_graph` (or ``trajectory_graph``) — mixed
        freely. Files are read one at a time; only running sums are kept.
    T, through, include_bos : how feature graphs are built from evolutions (defaults 22,
        ``"attention"``, False); graphs given already built must have been built with
        the same values (``None``: whatever the first input says).
    explanations : ``{(layer, feature): text}`` or a callable; fills the features whose
        feature graphs carried none.
    labels : one label per input (default: the prompt text).
    progress : a progress bar over the inputs.

    Raises ``ValueError`` for no inputs or inputs of different models, k or graph settings.

    Examples
    --------
    >>> from trajectory.evolution.result import Evolution
    >>> empty = lambda n: [([], [])] * (n + 2)
    >>> lists = {(2, 0): empty(2), (3, 0): [([1], [1.0]), ([1], [1.0]), ([1, 7], [2.0, 1.0]),
    ...                                     ([1, 7], [2.0, 1.0]), ([7, 1], [3.0, 1.0])]}
    >>> a = Evolution.from_lists(["<bos>", "a", "b"], lists, k=4)
    >>> b = Evolution.from_lists(["<bos>", "a", "c"], lists, k=4)
    >>> g = aggregate([a, b], T=2)
    >>> sorted(g.edges(data="prompts"))
    [((-1, 'a'), (0, 7), 2)]
    >>> g.nodes[(0, 7)]["query_tokens"], g.nodes[(0, 7)]["key_tokens"]
    ({'b': 1, 'c': 1}, {'a': 2})
    """
    from tqdm.auto import tqdm

    items = list(items)
    if not items:
        raise ValueError("aggregate needs at least one evolution or feature graph")
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"labels has {len(labels)} entries for {len(items)} inputs")
    nodes: dict[tuple, _Acc] = defaultdict(_Acc)
    edges: dict[tuple, _Acc] = defaultdict(_Acc)
    first: dict[str, Any] | None = None
    first_saes = None
    names, layers, preset, bos = [], set(), None, None
    for p, item in enumerate(tqdm(items, desc="prompts", unit="prompt", disable=not progress)):
        base = first or {}  # unset options follow the first input
        fg, label, saes = _feature_graph_of(item, T if T is not None else base.get("T", DEFAULT_T),
                                      through or base.get("through", "attention"),
                                      include_bos if include_bos is not None else base.get("include_bos", False))
        settings = _settings(fg)
        wanted = dict(T=T, through=through, include_bos=include_bos)
        for name, value in wanted.items():
            if value is not None and settings[name] != value:
                raise ValueError(f"input {p} is a graph built with {name}={settings[name]!r}, not {value!r}; "
                                 "rebuild it or pass the evolution instead")
        if first is None:
            first, preset = settings, fg.graph.get("preset")
            bos = str((fg.graph.get("tokens") or [None])[0])
        _check_same(first, settings, p)
        if saes is not None and first_saes is not None and saes != first_saes:
            raise ValueError(f"input {p} was evolved with other SAEs than the earlier inputs (metadata 'saes' "
                             "differ); aggregate only prompts evolved with one SAE bank")
        first_saes = first_saes if first_saes is not None else saes
        layers.update(int(x) for x in fg.graph.get("layers") or [])
        names.append(str(labels[p]) if labels is not None else label)
        _add_prompt(p, fg, nodes, edges)
    g = nx.DiGraph(kind="aggregate", **first, preset=preset, layers=sorted(layers), bos_token=bos,
                   n_prompts=len(items), prompts=names)
    _fill(g, nodes, edges, _explainer(explanations))
    return g


def _histogram(c: Counter) -> dict[str, int]:
    """Most frequent first (ties: by string), plain ``{str: int}``."""
    return {k: int(v) for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))}


def _fill(g: nx.DiGraph, nodes: dict, edges: dict, explain) -> None:
    for n in sorted(nodes, key=lambda n: (n[0], isinstance(n[1], str), n[1])):
        acc, (layer, f) = nodes[n], n
        token_node = isinstance(f, str)
        kind = "feature" if not token_node else ("embedding" if layer < 0 else "residual")
        g.add_node(n, kind=kind, layer=int(layer), feature=-1 if token_node else int(f),
                   token=f if token_node else None, **acc.stats(),
                   mean_activation=acc.activation_sum / acc.n_activations if acc.n_activations else None,
                   key_tokens=_histogram(acc.key_tokens), query_tokens=_histogram(acc.query_tokens),
                   via_mlp=acc.via_mlp,
                   explanation=None if token_node else (acc.explanation or explain(layer, f)))
    for (u, v) in sorted(edges, key=lambda e: (e[1][0], str(e[0]), str(e[1]))):
        acc = edges[(u, v)]
        g.add_edge(u, v, layer=int(v[0]), **acc.stats(), key_tokens=_histogram(acc.key_tokens))


def read_index(folder: str | Path) -> list[tuple[str, Path]]:
    """``(prompt, file)`` of every evolved prompt of a prompt-set folder (its ``index.json``).

    Raises ``FileNotFoundError`` when the folder, its index or a listed file is missing,
    ``ValueError`` when the index is malformed or lists no evolved prompt.
    """
    from trajectory.evolution.batch import INDEX

    folder = Path(folder)
    hint = "make one with `trajectory evolve --prompt-file PROMPTS --out DIR`"
    if not folder.is_dir():
        raise FileNotFoundError(f"no prompt-set folder at {folder}; {hint}")
    index = folder / INDEX
    if not index.is_file():
        raise FileNotFoundError(f"{folder} has no {INDEX}, so it is not a prompt-set folder; {hint}")
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
        pairs = [(str(e["prompt"]), e.get("file")) for e in entries]
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"{index} is not a prompt index (a JSON list of {{prompt, file}}): {exc}") from None
    out, failed, seen = [], 0, set()
    for prompt, name in pairs:
        if name is None or name in seen:  # failed, or a repeated prompt (one file: counted once)
            failed += name is None
            continue
        seen.add(name)
        path = folder / str(name)
        if not path.is_file():
            raise FileNotFoundError(f"{index} lists {name} for {prompt!r}, but the file is missing; rerun "
                                    "`trajectory evolve` on the same prompt file to resume")
        out.append((prompt, path))
    if failed:
        log.info("%d prompt(s) of %s could not be evolved and are left out", failed, index)
    if not out:
        raise ValueError(f"{index} lists no evolved prompt ({failed} failed); nothing to aggregate")
    return out


def aggregate_folder(folder: str | Path, **kwargs: Any) -> nx.DiGraph:
    """:func:`aggregate` of every evolved prompt of a prompt-set folder (``index.json`` +
    ``prompt_<hash>.safetensors``, :mod:`trajectory.evolution.batch`), in index order,
    labelled by prompt text; prompts that failed are left out, a repeated prompt (one
    file) counts once. ``kwargs`` go to :func:`aggregate`."""
    pairs = read_index(folder)
    kwargs.setdefault("labels", [prompt for prompt, _ in pairs])
    return aggregate([path for _, path in pairs], **kwargs)


def explain_aggregate(g: nx.DiGraph, evolution: Any, **kwargs: Any) -> int:
    """Fill missing ``explanation`` s of an aggregate graph's feature nodes from the
    explanations ``trajectory graph`` shows (:func:`trajectory.explanations.lookup.explain_features`
    with ``evolution``, one of the prompts' evolutions or its path, naming the bank and
    preset; ``kwargs`` go there: ``offline``, ``bank_path``, ...). Returns how many
    feature nodes have an explanation afterwards."""
    from trajectory.evolution.result import Evolution
    from trajectory.explanations.lookup import explain_features

    evo = evolution if isinstance(evolution, Evolution) else Evolution.load(evolution)
    wanted = [(d["layer"], d["feature"]) for _, d in g.nodes(data=True)
              if d.get("kind") == "feature" and not d.get("explanation")]
    found = explain_features(evo, wanted, progress=False, **kwargs) if wanted else {}
    for _, d in g.nodes(data=True):
        if d.get("kind") == "feature" and not d.get("explanation"):
            d["explanation"] = found.get((d["layer"], d["feature"]))
    return sum(1 for _, d in g.nodes(data=True) if d.get("kind") == "feature" and d.get("explanation"))


# ---------------------------------------------------------------- analyses


def top_flows(g: nx.DiGraph, n: int = 20, *, by: str = "prompts", features_only: bool = False) -> list[dict[str, Any]]:
    """The ``n`` most frequent flows (edges) of an aggregate graph, by ``by`` (``"prompts"``
    or ``"occurrences"``; ties: the other one, then best rank, then the edge).
    ``features_only`` leaves out edges from token nodes.

    Returns dicts: ``source``, ``target``, ``layer``, ``prompts``, ``occurrences``,
    ``best_rank``, ``mean_rank``, ``key_tokens``, and both ends' ``explanation``.
    """
    if by not in ("prompts", "occurrences"):
        raise ValueError(f"by must be 'prompts' or 'occurrences', not {by!r}")
    other = "occurrences" if by == "prompts" else "prompts"
    rows = [(u, v, d) for u, v, d in g.edges(data=True)
            if not (features_only and g.nodes[u].get("kind") != "feature")]
    rows.sort(key=lambda e: (-e[2][by], -e[2][other], e[2].get("best_rank") or 1 << 30, str(e[0]), str(e[1])))
    return [dict(source=u, target=v, layer=d["layer"], prompts=d["prompts"], occurrences=d["occurrences"],
                 best_rank=d.get("best_rank"), mean_rank=d.get("mean_rank"), key_tokens=d.get("key_tokens", {}),
                 source_explanation=g.nodes[u].get("explanation"), target_explanation=g.nodes[v].get("explanation"))
            for u, v, d in rows[:max(n, 0)]]


def consistent_features(g: nx.DiGraph, *, min_prompts: int = 2, include_bos: bool | None = None
                        ) -> list[dict[str, Any]]:
    """Features always brought by the same key-token string, in at least ``min_prompts``
    prompts (MLP arrivals disqualify: they have no key token). Features always brought by
    BOS (``g.graph["bos_token"]``; attention sinks bring many) are left out unless
    ``include_bos`` (default: the graph's ``include_bos``).

    Returns dicts ``layer``, ``feature``, ``token``, ``prompts``, ``occurrences``,
    ``best_rank``, ``explanation``; most prompts first.
    """
    skip = None if (g.graph.get("include_bos") if include_bos is None else include_bos) else g.graph.get("bos_token")
    out = []
    for node, d in g.nodes(data=True):
        hist = d.get("key_tokens") or {}
        if d.get("kind") != "feature" or len(hist) != 1 or d.get("via_mlp") or d["prompts"] < min_prompts:
            continue
        if next(iter(hist)) == skip:
            continue
        out.append(dict(layer=d["layer"], feature=d["feature"], token=next(iter(hist)), prompts=d["prompts"],
                        occurrences=d["occurrences"], best_rank=d.get("best_rank"), explanation=d.get("explanation")))
    out.sort(key=lambda r: (-r["prompts"], -r["occurrences"], r["layer"], r["feature"]))
    return out


def shared_flow_prompts(g: nx.DiGraph, n: int = 10, *, features_only: bool = False) -> list[dict[str, Any]]:
    """The ``n`` pairs of prompts that share the most flows (edges of ``g`` both occur in).

    Computed as ``M Mᵀ`` of the sparse prompts × edges incidence matrix (no loop over
    pairs of prompts). Returns dicts ``prompts`` (the id pair ``(i, j)``, ``i < j``),
    ``labels``, ``shared`` (flows in common), ``jaccard`` (shared / flows of either);
    most shared first, pairs sharing nothing left out.
    """
    import numpy as np
    from scipy import sparse

    P = int(g.graph.get("n_prompts") or 1 + max((i for *_, ids in g.edges(data="prompt_ids") for i in ids), default=-1))
    rows, cols = [], []
    for e, (u, _, ids) in enumerate(g.edges(data="prompt_ids")):
        if features_only and g.nodes[u].get("kind") != "feature":
            continue
        rows += list(ids)
        cols += [e] * len(ids)
    M = sparse.csr_matrix((np.ones(len(rows), dtype=np.int64), (rows, cols)), shape=(P, g.number_of_edges()))
    shared = sparse.triu(M @ M.T, k=1).tocoo()
    per_prompt = np.asarray(M.sum(axis=1)).ravel()
    order = sorted(zip(shared.data.tolist(), shared.row.tolist(), shared.col.tolist()),
                   key=lambda x: (-x[0], x[1], x[2]))
    labels = list(g.graph.get("prompts") or [])
    out = []
    for s, i, j in order[:max(n, 0)]:
        union = per_prompt[i] + per_prompt[j] - s
        out.append(dict(prompts=(i, j), labels=(labels[i] if i < len(labels) else None,
                                                labels[j] if j < len(labels) else None),
                        shared=int(s), jaccard=float(s / union) if union else 1.0))
    return out

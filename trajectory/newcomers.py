"""Newcomers: SAE features that a key token's attention (or the MLP) brought to a query.

For a layer L and a prefix length n (query ``q = n - 1``) an
:class:`~trajectory.evolution.Evolution` holds the top-k features of every step
(``0`` = initial, ``j + 1`` = after key ``j``, ``n`` = last attention step,
``n + 1`` = mlp). A feature ``f`` is a **newcomer** at (n, L) when

1. ``f`` is absent from step 0's top-k list;
2. ``f`` is present at the *final step* — the last attention step ``n`` by default
   (``through="attention"``), or the ``mlp`` step ``n + 1`` (``through="mlp"``) —
   with final rank ``≤ T`` (1-based: rank 1 is the strongest);
3. its **first step** is the first step ``s ≥ 1`` whose top-k list holds ``f``.
   ``s`` names what brought it: step ``j + 1`` is key token ``j`` (``via="attention"``,
   ``source_token = j``); step ``n + 1`` is the MLP (``via="mlp"``,
   ``source_token = None``), possible only with ``through="mlp"``.

A feature that enters, leaves and re-enters keeps its **first** appearance (as the
original method did): the key that first pulled it into the top-k is credited, not
the one that brought it back. A feature that enters and leaves again before the
final step is not a newcomer. With ``through="mlp"`` a feature that arrived through
attention and is still there after the MLP keeps ``via="attention"``.

Absence means "not in the stored top-k": the evolution keeps only active features
(activation > 0), at most k per step, so a step with fewer than k active features
lists all of them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["Newcomer", "find_newcomers", "all_newcomers"]

Through = Literal["attention", "mlp"]


@dataclass(frozen=True)
class Newcomer:
    """One newcomer feature of (prefix length ``n``, ``layer``).

    Attributes:
        n: prefix length; the query token is ``n - 1``.
        layer: the layer L whose SAE the feature belongs to.
        feature: SAE latent index.
        first_step: first step (≥ 1) at which the feature is in the top-k.
        source_token: the key token ``first_step - 1`` whose attention brought it,
            ``None`` when the MLP brought it.
        via: ``"attention"`` or ``"mlp"``.
        final_rank: 1-based rank at the final step (≤ T).
        activation: activation at the final step.
    """

    n: int
    layer: int
    feature: int
    first_step: int
    source_token: int | None
    via: str
    final_rank: int
    activation: float

    @property
    def query_token(self) -> int:
        """Index of the query token (the last token of the prefix), ``n - 1``."""
        return self.n - 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(T: int, through: str) -> None:
    if through not in ("attention", "mlp"):
        raise ValueError(f"through must be 'attention' or 'mlp', not {through!r}")
    if int(T) != T or T < 1:
        raise ValueError(f"T must be a positive integer (a final rank cut-off, e.g. 22), not {T!r}")


def find_newcomers(evo, n: int, layer: int, *, T: int = 22, through: Through = "attention") -> list[Newcomer]:
    """The newcomers of (prefix length ``n``, ``layer``), strongest (smallest final rank) first.

    Parameters
    ----------
    evo : trajectory.evolution.Evolution
    n : prefix length, ``2..N``.
    layer : a layer the evolution computed.
    T : final-rank cut-off (inclusive).
    through : ``"attention"`` (final step = last attention step) or ``"mlp"``
        (final step = the mlp step; features first seen there get ``via="mlp"``).

    Returns
    -------
    list of :class:`Newcomer`, sorted by final rank.

    Examples
    --------
    >>> from trajectory.evolution.result import Evolution
    >>> steps = [([1], [1.0]),          # initial
    ...          ([1, 5], [2.0, 1.0]),  # after key 0: 5 enters
    ...          ([9, 1, 5], [3.0, 2.0, 1.0]),  # after key 1 (last attention step): 9 enters
    ...          ([9, 5], [3.0, 1.0])]  # mlp
    >>> evo = Evolution.from_lists(["<bos>", "a"], {(2, 0): steps}, k=3)
    >>> [(c.feature, c.source_token, c.final_rank) for c in find_newcomers(evo, 2, 0, T=3)]
    [(9, 1, 1), (5, 0, 3)]
    """
    _check(T, through)
    final = evo.step_index(n, "last_attention" if through == "attention" else "mlp")
    idx, val = evo.topk(n, layer, final)
    idx, val = idx[: int(T)], val[: int(T)]
    ranks = np.arange(1, idx.size + 1)
    keep = ~np.isin(idx, evo.topk(n, layer, 0)[0])  # absent from step 0's top-k
    cand, cand_rank, cand_act = idx[keep], ranks[keep], val[keep]
    out: list[Newcomer] = []
    if cand.size == 0:
        return out
    first = np.zeros(cand.size, dtype=np.int64)  # 0 = not seen yet
    for s in range(1, final + 1):
        first[(first == 0) & np.isin(cand, evo.topk(n, layer, s)[0])] = s
        if first.all():
            break
    mlp_step = n + 1
    for f, s, rank, act in zip(cand.tolist(), first.tolist(), cand_rank.tolist(), cand_act.tolist()):
        # s >= 1 always: the final step itself holds f
        via = "mlp" if s == mlp_step else "attention"
        out.append(
            Newcomer(
                n=int(n),
                layer=int(layer),
                feature=int(f),
                first_step=int(s),
                source_token=None if via == "mlp" else int(s) - 1,
                via=via,
                final_rank=int(rank),
                activation=float(act),
            )
        )
    out.sort(key=lambda c: (c.final_rank, c.feature))
    return out


def all_newcomers(evo, *, T: int = 22, through: Through = "attention") -> dict[tuple[int, int], list[Newcomer]]:
    """:func:`find_newcomers` for every (prefix length, layer) of ``evo``.

    Returns ``{(n, layer): [Newcomer, ...]}`` with a (possibly empty) list for every
    ``n = 2..N`` and every computed layer.
    """
    _check(T, through)
    return {
        (n, layer): find_newcomers(evo, n, layer, T=T, through=through)
        for layer in evo.layers
        for n in evo.prefix_lengths
    }

"""Top-k selection among ACTIVE SAE features (activation > 0), row by row.

Order within a row: activation descending, ties by feature index ascending
(deterministic); rows with fewer than ``k`` active features keep all of them. Results
are ragged: ``(indices int32 [total], values float32 [total], counts int64 [rows],
n_active int32 [rows])`` numpy arrays, rows concatenated in order (the layout of
:class:`~trajectory.evolution.result.LayerRows`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch


def select_active_topk(acts: "torch.Tensor", k: int, active: "torch.Tensor | None" = None):
    """Top-k features of each row among ACTIVE ones (activation > 0).

    Order: activation descending, ties by feature index ascending (deterministic).
    Rows with fewer than ``k`` active features keep all of them.

    Args:
        acts: ``[rows, d_sae]`` activations (or pre-activations when ``active`` is given).
        k: maximum features kept per row.
        active: optional ``[rows, d_sae]`` bool mask of active features; entries of
            ``acts`` outside it are ignored (saves materialising the activations).

    Returns:
        ``(indices int32 [total], values float32 [total], counts int64 [rows],
        n_active int32 [rows])`` as numpy arrays, rows concatenated in order.
    """
    import torch

    R, f = acts.shape
    if active is None:
        active = acts > 0
    rows, cols = active.nonzero(as_tuple=True)  # row-major, columns ascending
    n_active = torch.bincount(rows, minlength=R)
    if rows.numel() <= 4 * R * k:  # sparse rows: sort only the active entries
        idx, val = _rank_entries(rows, cols, acts[rows, cols].float(), n_active, k)
    else:
        acts = torch.where(active, acts.float(), 0.0)
        kk = min(k, f)
        val, idx = torch.topk(acts, kk, dim=-1, sorted=True)
        kth = val[:, -1:]
        # rows where equal values straddle the cut: redo them with a full stable sort
        straddle = ((acts >= kth).sum(-1) > kk) & (kth[:, 0] > 0)
        for r in torch.nonzero(straddle).flatten().tolist():
            o = torch.sort(acts[r], descending=True, stable=True).indices[:kk]
            idx[r], val[r] = o, acts[r, o]
        o = torch.sort(idx, dim=-1).indices  # ties by index: sort by index, then stably by value
        idx, val = idx.gather(-1, o), val.gather(-1, o)
        o = torch.sort(val, dim=-1, descending=True, stable=True).indices
        idx, val = idx.gather(-1, o), val.gather(-1, o)
        mask = val > 0
        idx, val = idx[mask], val[mask]
    return _selection_arrays(idx, val, n_active, k)


def _rank_entries(rows, cols, vals, n_active, k: int):
    """Rank ragged active entries: ``rows`` ascending, within a row ``vals`` descending,
    ties in the given (column-ascending) order; keep the first ``k`` of each row.

    Args: ``rows``, ``cols`` int ``[m]`` (grouped by row, columns ascending within a
    row), ``vals`` float32 ``[m]``, ``n_active [R]`` entries per row. Returns ``(cols,
    vals)`` of the kept entries in final order.
    """
    import torch

    if vals.numel() and bool(vals.min() > 0):
        # one sort on (row ascending, value descending): positive floats order like
        # their bit patterns, so the key is row << 31 | (2^31 - 1 - bits); stable,
        # so equal values keep the column-ascending order
        bits = vals.view(torch.int32).to(torch.int64)
        order = torch.sort((rows.to(torch.int64) << 31) | (0x7FFFFFFF - bits), stable=True).indices
    else:  # zero or negative activations marked active: two stable sorts
        order = torch.sort(vals, descending=True, stable=True).indices
        order = order[torch.sort(rows[order], stable=True).indices]
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = torch.cumsum(n_active, 0) - n_active
    keep = (torch.arange(rows.numel(), device=rows.device) - starts[rows]) < k
    return cols[keep], vals[keep]


def select_candidates_topk(vals: "torch.Tensor", idx: "torch.Tensor", k: int):
    """:func:`select_active_topk` for rows given as candidate lists, e.g. a TopK SAE's
    own top ``sae_k`` (no ``[rows, d_sae]`` matrix to scan).

    Args:
        vals: ``[rows, c]`` activations of the candidates (active where > 0).
        idx: ``[rows, c]`` their feature indices (distinct within a row, any order).
        k: maximum features kept per row.

    Returns: as :func:`select_active_topk`.
    """
    import torch

    R, c = vals.shape
    order = torch.sort(idx, dim=-1).indices  # columns ascending within each row (tie order)
    idx, vals = idx.gather(-1, order), vals.gather(-1, order).float()
    active = (vals > 0).flatten()
    rows = torch.arange(R, device=vals.device).repeat_interleave(c)[active]
    n_active = torch.bincount(rows, minlength=R)
    cols, val = _rank_entries(rows, idx.flatten()[active], vals.flatten()[active], n_active, k)
    return _selection_arrays(cols, val, n_active, k)


def _selection_arrays(idx, val, n_active, k: int):
    """The numpy return value of the selections: ``(indices int32, values float32,
    counts int64 [rows], n_active int32 [rows])``."""
    import torch

    return (
        idx.to(torch.int32).cpu().numpy(),
        val.to(torch.float32).cpu().numpy(),
        torch.clamp(n_active, max=k).cpu().numpy().astype(np.int64),
        n_active.to(torch.int32).cpu().numpy(),
    )

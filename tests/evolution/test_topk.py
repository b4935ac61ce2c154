"""Top-k among active features: ties by index, zeros and negatives never ranked, fewer
than k kept as they are; the dense, sparse and candidate-list paths agree."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference.evolution_loops import ref_topk
from trajectory.evolution.topk import select_active_topk, select_candidates_topk


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_select_active_topk_ties_zeros_and_fewer_than_k(k):
    acts = torch.tensor(
        [
            [0.0, 2.0, -1.0, 2.0, 0.5, 0.0, 2.0, 3.0],  # ties at 2.0, negatives and zeros never ranked
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # nothing active
            [0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # one active
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # all tied
        ]
    )
    idx, val, counts, n_active = select_active_topk(acts, k)
    np.testing.assert_array_equal(n_active, [5, 0, 1, 8])
    expected = [ref_topk(a, k) for a in acts.numpy()]
    np.testing.assert_array_equal(counts, [len(e[0]) for e in expected])
    np.testing.assert_array_equal(idx, np.concatenate([e[0] for e in expected]))
    np.testing.assert_array_equal(val, np.concatenate([e[1] for e in expected]))
    if k == 3:  # spelled out: 3.0 first, then the tied 2.0s by index
        assert idx[:3].tolist() == [7, 1, 3]


def test_select_active_topk_dense_and_sparse_paths_agree():
    g = torch.Generator().manual_seed(0)
    acts = torch.randint(-3, 4, (40, 300), generator=g).float() / 2  # many ties, many active
    for k in (2, 50, 400):  # k=2: dense path (active ≫ 4k); 400: sparse path
        idx, val, counts, _ = select_active_topk(acts, k)
        expected = [ref_topk(a, k) for a in acts.numpy()]
        np.testing.assert_array_equal(idx, np.concatenate([e[0] for e in expected]))
        np.testing.assert_array_equal(counts, [len(e[0]) for e in expected])


def test_select_active_topk_with_a_mask_that_marks_non_positive_values():
    # a given mask is authoritative (e.g. a JumpReLU threshold below zero): ranking
    # still goes by value descending, ties by index
    g = torch.Generator().manual_seed(1)
    acts = torch.randint(-2, 3, (6, 20), generator=g).float()
    active = torch.rand(6, 20, generator=g) < 0.5
    for k in (5, 400):  # the sparse path (active entries ≤ 4·rows·k)
        idx, val, counts, n_active = select_active_topk(acts, k, active)
        want = []
        for a, m in zip(acts.tolist(), active.tolist()):
            ranked = sorted((j for j in range(len(a)) if m[j]), key=lambda j: (-a[j], j))[:k]
            want.append(ranked)
        np.testing.assert_array_equal(n_active, active.sum(-1).numpy())
        np.testing.assert_array_equal(counts, [len(w) for w in want])
        np.testing.assert_array_equal(idx, [j for w in want for j in w])


def test_candidate_lists_rank_like_the_dense_matrix():
    """A TopK SAE's own top-c lists (any order, ties, zeros and negatives among them) give
    what select_active_topk gives on the dense activation matrix they scatter into."""
    g = torch.Generator().manual_seed(2)
    R, f, c = 30, 50, 12
    idx = torch.stack([torch.randperm(f, generator=g)[:c] for _ in range(R)])  # distinct, unordered
    vals = torch.randint(-2, 5, (R, c), generator=g).float() / 2  # many ties
    dense = torch.zeros(R, f).scatter_(1, idx, vals.relu())
    for k in (1, 3, 400):
        got = select_candidates_topk(vals.relu(), idx, k)
        want = select_active_topk(dense, k)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)

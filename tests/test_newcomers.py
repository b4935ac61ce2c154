"""Newcomer extraction on hand-made evolutions with known answers, and against a
brute-force reference (per feature, from ``Evolution.feature_ranks``) on random ones."""
from __future__ import annotations

import random

import pytest

from trajectory.evolution.result import Evolution
from trajectory.newcomers import Newcomer, all_newcomers, find_newcomers


def st(*features):
    """One step: features strongest first, activations len..1."""
    return list(features), [float(len(features) - i) for i in range(len(features))]


def empty_steps(n):
    return [st() for _ in range(n + 2)]


TOKENS = ["<bos>", "A", "B", "C"]

# (n=4, layer=1): steps 0 initial, 1..4 after keys 0..3, 5 mlp
MAIN = [
    st(10, 11),  # 0 initial
    st(10, 11, 20, 26),  # 1 key 0 (BOS): 20 and 26 enter
    st(10, 21, 11, 20),  # 2 key 1 'A': 21 enters, 26 leaves
    st(22, 10, 21, 11, 20, 23),  # 3 key 2 'B': 22 and 23 enter
    st(22, 21, 24, 10, 11, 20, 26),  # 4 key 3 'C' (last attention): 24 enters, 23 leaves, 26 back
    st(25, 22, 21, 24),  # 5 mlp: 25 first seen here
]


@pytest.fixture(scope="module")
def evo():
    lists = {(n, L): empty_steps(n) for n in (2, 3, 4) for L in (0, 1)}
    lists[(4, 1)] = MAIN
    return Evolution.from_lists(TOKENS, lists, k=8)


def summary(found):
    return [(c.feature, c.first_step, c.source_token, c.via, c.final_rank, c.activation) for c in found]


def test_known_answer_attention(evo):
    # final step 4: 22 r1, 21 r2, 24 r3, 10 r4 (there from the start), 11 r5 (too), 20 r6, 26 r7
    assert summary(find_newcomers(evo, 4, 1, T=3)) == [
        (22, 3, 2, "attention", 1, 7.0),
        (21, 2, 1, "attention", 2, 6.0),
        (24, 4, 3, "attention", 3, 5.0),  # the query token attending to itself
    ]


def test_rank_exactly_T_and_T_plus_1(evo):
    assert 20 not in [c.feature for c in find_newcomers(evo, 4, 1, T=5)]  # rank 6 = T + 1
    found = {c.feature: c for c in find_newcomers(evo, 4, 1, T=6)}  # rank 6 = T
    assert found[20] == Newcomer(n=4, layer=1, feature=20, first_step=1, source_token=0, via="attention",
                                 final_rank=6, activation=2.0)


def test_present_from_start_never_newcomer(evo):
    found = [c.feature for c in find_newcomers(evo, 4, 1, T=100)]
    assert 10 not in found and 11 not in found


def test_entering_then_leaving_is_not_newcomer(evo):
    assert 23 not in [c.feature for c in find_newcomers(evo, 4, 1, T=100)]


def test_reentering_keeps_first_appearance(evo):
    found = {c.feature: c for c in find_newcomers(evo, 4, 1, T=7)}
    assert (found[26].first_step, found[26].source_token, found[26].final_rank) == (1, 0, 7)


def test_through_mlp(evo):
    # mlp step: 25 r1 (first seen at the mlp step), 22 r2, 21 r3, 24 r4
    assert summary(find_newcomers(evo, 4, 1, T=4, through="mlp")) == [
        (25, 5, None, "mlp", 1, 4.0),
        (22, 3, 2, "attention", 2, 3.0),
        (21, 2, 1, "attention", 3, 2.0),
        (24, 4, 3, "attention", 4, 1.0),
    ]
    # 20 and 26 are gone after the MLP
    assert {c.feature for c in find_newcomers(evo, 4, 1, T=100, through="mlp")} == {25, 22, 21, 24}


def test_fewer_than_k_active_and_nothing_active(evo):
    assert evo.topk(4, 1, 0)[0].size == 2 < evo.k  # fewer than k active: absence = inactive
    assert find_newcomers(evo, 3, 0, T=22) == []
    assert all(v == [] for key, v in all_newcomers(evo, T=22).items() if key != (4, 1))


def test_all_newcomers_covers_every_prefix_and_layer(evo):
    result = all_newcomers(evo, T=3)
    assert set(result) == {(n, L) for n in (2, 3, 4) for L in (0, 1)}
    assert result[(4, 1)] == find_newcomers(evo, 4, 1, T=3)


def test_newcomer_helpers(evo):
    c = find_newcomers(evo, 4, 1, T=1)[0]
    assert c.query_token == 3
    assert c.to_dict()["feature"] == 22


@pytest.mark.parametrize("kwargs", [dict(T=0), dict(T=2.5), dict(through="resid")])
def test_bad_arguments(evo, kwargs):
    with pytest.raises(ValueError, match="T must|through must"):
        find_newcomers(evo, 4, 1, **kwargs)


def test_bad_prefix_or_layer(evo):
    with pytest.raises(ValueError, match="out of range"):
        find_newcomers(evo, 5, 1)
    with pytest.raises(ValueError, match="not computed"):
        find_newcomers(evo, 4, 7)


# --------------------------------------------------------------- reference
def random_evolution(seed: int, N: int = 6, layers=(0, 1, 2), pool: int = 14, k: int = 6) -> Evolution:
    """Random top-k lists: features drawn from a small pool so they enter, leave and return."""
    rng = random.Random(seed)
    lists = {}
    for L in layers:
        for n in range(2, N + 1):
            steps = []
            for _ in range(n + 2):
                m = rng.randint(0, k)
                feats = rng.sample(range(pool), m)
                steps.append((feats, sorted((rng.uniform(0.1, 9.0) for _ in feats), reverse=True)))
            lists[(n, L)] = steps
    return Evolution.from_lists([f"t{i}" for i in range(N)], lists, k=k)


def reference_newcomers(evo, n, layer, T, through):
    """Brute force per feature, from feature_ranks (not the package's code path)."""
    final = n if through == "attention" else n + 1
    out = []
    idx_final, val_final = evo.topk(n, layer, final)
    for f in range(max(idx_final.tolist() + [0]) + 1):
        ranks = evo.feature_ranks(n, layer, f)
        if ranks[0] is not None or ranks[final] is None or ranks[final] > T:
            continue
        first = next(s for s in range(1, final + 1) if ranks[s] is not None)
        via = "mlp" if first == n + 1 else "attention"
        act = float(val_final[ranks[final] - 1])
        out.append((f, first, None if via == "mlp" else first - 1, via, ranks[final], act))
    return sorted(out, key=lambda r: (r[4], r[0]))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("through", ["attention", "mlp"])
def test_matches_brute_force_reference(seed, through):
    evo = random_evolution(seed)
    for T in (1, 3, 6):
        for (n, L), found in all_newcomers(evo, T=T, through=through).items():
            assert summary(found) == reference_newcomers(evo, n, L, T, through), (seed, n, L, T)

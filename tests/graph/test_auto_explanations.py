"""``trajectory_graph(evo, explanations="auto")`` gives the explanations the CLI shows: the
labels stored in the bank the evolution was made with."""
from __future__ import annotations

import pytest

from trajectory.evolution.engine import evolve
from trajectory.graph.build import graph_features, trajectory_graph
from trajectory.saes.bank import SAEBank


def test_auto_reads_the_bank_recorded_in_the_evolution(tiny_model, tiny_bank, tmp_path):
    for layer in tiny_bank.layers:
        tiny_bank.entry(layer).explanations = {f: f"layer {layer} feature {f}" for f in range(0, 64, 2)}
    try:
        folder = tiny_bank.save(tmp_path / "bank")
    finally:
        for layer in tiny_bank.layers:
            tiny_bank.entry(layer).explanations = {}
    evo = evolve(tiny_model, SAEBank.open(folder), "mark gave the flashlight to smith", k=8, progress=False)
    plain = trajectory_graph(evo, T=4)
    g = trajectory_graph(evo, T=4, explanations="auto")
    assert graph_features(g) == graph_features(plain) and g.number_of_edges() > 0
    seen = 0
    for _, _, d in g.edges(data=True):
        for f in d["features"]:
            want = f"layer {d['layer']} feature {f['feature']}" if f["feature"] % 2 == 0 else None
            assert f["explanation"] == want
            seen += want is not None
    assert seen > 0
    assert all(f["explanation"] is None for _, _, d in plain.edges(data=True) for f in d["features"])


def test_unknown_explanations_word(tiny_model, tiny_bank):
    evo = evolve(tiny_model, tiny_bank, "mark gave", k=4, progress=False)
    with pytest.raises(ValueError, match="explanations='always'.*'auto'"):
        trajectory_graph(evo, explanations="always")

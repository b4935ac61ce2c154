"""``edge_effects`` against brute force: one full forward pass per edge with a hook on
``blocks.L.attn.hook_pattern`` zeroing ``[:, q, t]``, and one per ablated feature."""
from __future__ import annotations

import networkx as nx
import pytest
import torch

from trajectory.evolution.engine import evolve
from trajectory.graph.build import trajectory_graph
from trajectory.interventions import edge_effects

PROMPT = "smith left . mark gave flashlight to the dark room"


@pytest.fixture(scope="module", params=["attention", "mlp"])
def graph(request, tiny_model, tiny_bank):
    evo = evolve(tiny_model, tiny_bank, PROMPT, k=64, progress=False)
    g = trajectory_graph(evo, T=22, through=request.param)
    assert g.number_of_edges() >= 6
    return evo, edge_effects(tiny_model, tiny_bank, evo, g, batch_size=7)  # chunks that split layers


def _kl(p_log, q_log):
    p = p_log.double().exp()
    return float((p * (p_log.double() - q_log.double())).sum())


def test_knockout_equals_one_forward_per_edge(graph, tiny_model, tiny_bank):
    evo, g = graph
    ids = torch.tensor(evo.token_ids)[None]
    with torch.no_grad():
        clean = tiny_model(ids)[0]
    last, top = ids.shape[1] - 1, int(clean[-1].argmax())
    clean_lp = torch.log_softmax(clean, -1)
    through = g.graph["through"]
    lost_any = 0
    for _, _, e in g.edges(data=True):
        L, q, t = e["layer"], e["target_token"], e["source_token"]

        def zero(pattern, hook):
            pattern[:, :, q, t] = 0.0
            return pattern

        step = f"blocks.{L}.hook_resid_{'mid' if through == 'attention' else 'post'}"
        store = {}

        def keep(x, hook):
            store["x"] = x[0, q].clone()

        with torch.no_grad():
            logits = tiny_model.run_with_hooks(ids, fwd_hooks=[(f"blocks.{L}.attn.hook_pattern", zero), (step, keep)])
        lp = torch.log_softmax(logits[0], -1)
        assert e["knockout_kl"] == pytest.approx(_kl(clean_lp[last], lp[last]), abs=2e-5)
        assert e["knockout_kl_query"] == pytest.approx(_kl(clean_lp[q], lp[q]), abs=2e-5)
        assert e["knockout_logit_delta"] == pytest.approx(float(logits[0, last, top] - clean[last, top]), abs=2e-4)
        acts = tiny_bank[L].encode(store["x"]).detach()
        rank = {int(f): r + 1 for r, f in enumerate(torch.argsort(acts, descending=True)) if acts[f] > 0}
        lost = [f["feature"] for f in e["features"] if rank.get(f["feature"], 10**9) > g.graph["T"]]
        assert e["newcomers_lost"] == pytest.approx(len(lost) / len(e["features"]))
        lost_any += bool(lost)
    assert lost_any > 0  # the comparison saw both outcomes
    assert any(e["newcomers_lost"] < 1 for *_, e in g.edges(data=True))


def _brute_ablation_kls(model, bank, evo, g):
    """One full forward per (edge, feature): the feature's latent removed at (q, L)."""
    ids = torch.tensor(evo.token_ids)[None]
    with torch.no_grad():
        clean_lp = torch.log_softmax(model(ids)[0, -1], -1)
    out = []
    for _, _, e in g.edges(data=True):
        L, q = e["layer"], e["target_token"]
        for f in e["features"]:
            sae = bank[L]

            def ablate(x, hook):
                a = sae.encode(x[0, q])[f["feature"]]
                x = x.clone()
                x[0, q] = x[0, q] - a * sae.W_dec[f["feature"]]
                return x

            with torch.no_grad():
                lp = torch.log_softmax(model.run_with_hooks(ids, fwd_hooks=[(bank.hook_name(L), ablate)])[0, -1], -1)
            out.append((f["ablation_kl"], _kl(clean_lp, lp)))
    return out


def test_ablation_equals_one_forward_per_feature(graph, tiny_model, tiny_bank):
    evo, g = graph
    pairs = _brute_ablation_kls(tiny_model, tiny_bank, evo, g)
    assert len(pairs) >= 6 and len({e["target_token"] for *_, e in g.edges(data=True)}) >= 2  # batches mix query positions
    for fast, brute in pairs:
        assert fast == pytest.approx(brute, abs=2e-5)
    assert max(b for _, b in pairs) > 1e-4  # some ablation changed the prediction


@pytest.mark.parametrize("hook", ["blocks.{layer}.hook_resid_pre", "blocks.{layer}.hook_resid_mid"])
def test_ablation_at_other_residual_hooks(hook, tiny_model):
    from trajectory.testing import tiny_bank as make_bank

    bank = make_bank(tiny_model, hook_template=hook, seed=3)
    evo = evolve(tiny_model, bank, PROMPT, k=64, progress=False, allow_other_model=True)
    g = edge_effects(tiny_model, bank, evo, trajectory_graph(evo, T=22), batch_size=5)
    for fast, brute in _brute_ablation_kls(tiny_model, bank, evo, g):
        assert fast == pytest.approx(brute, abs=2e-5)


def test_attributes_survive_export(graph, tmp_path):
    from trajectory.graph.export import export_graph, read_graph

    _, g = graph
    for suffix in (".graphml", ".json"):
        back = read_graph(export_graph(g, tmp_path / f"g{suffix}"))
        assert nx.utils.edges_equal(back.edges(data=True), g.edges(data=True))
        assert back.graph["causal"] == g.graph["causal"]


def test_refuses_a_graph_of_another_prompt(tiny_model, tiny_bank, graph):
    evo, g = graph
    other = evolve(tiny_model, tiny_bank, "mark gave flashlight to", k=8, progress=False)
    with pytest.raises(ValueError, match="another prompt"):
        edge_effects(tiny_model, tiny_bank, other, g)

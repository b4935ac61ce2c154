"""``steer``: cached generation equals a full re-run at every step, the scores equal a
direct computation from plain forward passes, the result reads back equal."""
from __future__ import annotations

import pytest
import torch

from trajectory.interventions import Intervention, SteeringResult, steer, steered

from .conftest import PROMPT, hooks_left

N_NEW = 6
IVS = [Intervention(1, 7, "add", 6.0), Intervention(2, 3, "clamp", 4.0, positions="generated")]


@pytest.fixture(scope="module")
def result(tiny_model, tiny_bank):
    return steer(tiny_model, tiny_bank, PROMPT, IVS, max_new_tokens=N_NEW, stop_at_eos=False)


def _greedy_without_cache(model, bank, ids, interventions=None):
    """Reference: re-run the whole sequence at every step, take the argmax of the last position."""
    seq = ids.clone()
    for _ in range(N_NEW):
        with torch.no_grad():
            if interventions:
                with steered(model, bank, interventions, prompt_length=len(ids)):
                    logits = model(seq[None])
            else:
                logits = model(seq[None])
        seq = torch.cat([seq, logits[0, -1].argmax()[None]])
    return seq[len(ids):].tolist()


def test_greedy_equals_full_rerun_reference(result, tiny_model, tiny_bank, prompt_ids):
    assert result.base_ids == _greedy_without_cache(tiny_model, tiny_bank, prompt_ids)
    assert result.steered_ids == _greedy_without_cache(tiny_model, tiny_bank, prompt_ids, IVS)
    assert result.base_ids != result.steered_ids  # the interventions do something here
    assert hooks_left(tiny_model) == 0


def test_generated_only_hook_leaves_the_prompt_alone(tiny_model, tiny_bank, prompt_ids):
    P = len(prompt_ids)
    ivs = [Intervention(1, 7, "add", 30.0, positions="generated")]
    res = steer(tiny_model, tiny_bank, PROMPT, ivs, max_new_tokens=4, stop_at_eos=False)
    assert res.kl[:P] == [0.0] * P and max(res.kl[P:]) > 1e-3
    with torch.no_grad(), steered(tiny_model, tiny_bank, ivs, prompt_length=P):
        prompt_logits = tiny_model(prompt_ids[None])
    torch.testing.assert_close(prompt_logits, tiny_model(prompt_ids[None]), rtol=0, atol=0)
    assert res.steered_ids[0] == res.base_ids[0]  # decided at the last prompt position


def test_kl_and_logprobs_equal_a_direct_computation(result, tiny_model, tiny_bank, prompt_ids):
    P = len(prompt_ids)
    for text, kl_name in (("base", "kl"), ("steered", "kl_on_steered")):
        seq = torch.cat([prompt_ids, torch.tensor(getattr(result, f"{text}_ids"))])
        with torch.no_grad():
            p = torch.softmax(tiny_model(seq[None])[0].double(), -1)
            with steered(tiny_model, tiny_bank, IVS, prompt_length=P):
                s = torch.softmax(tiny_model(seq[None])[0].double(), -1)
        kl = [float(sum(p[i, v] * torch.log(p[i, v] / s[i, v]) for v in range(p.shape[1]))) for i in range(len(seq))]
        assert getattr(result, kl_name) == pytest.approx(kl, abs=1e-5)
        toks = seq[P:].tolist()
        lp = getattr(result, f"{text}_logprobs")
        assert lp["base"] == pytest.approx([float(torch.log(p[P - 1 + i, t])) for i, t in enumerate(toks)], abs=1e-5)
        assert lp["steered"] == pytest.approx([float(torch.log(s[P - 1 + i, t])) for i, t in enumerate(toks)], abs=1e-5)
    # promoted: the largest log-prob rises at the last prompt position, strongest first
    delta = [d["delta"] for d in result.promoted]
    assert delta == sorted(delta, reverse=True) and delta[0] > 0 > result.suppressed[0]["delta"]
    assert result.top_position == P - 1


def test_sampling_is_seeded(tiny_model, tiny_bank):
    runs = [steer(tiny_model, tiny_bank, PROMPT, IVS, max_new_tokens=5, temperature=1.5, seed=s, stop_at_eos=False)
            for s in (3, 3, 4)]
    assert runs[0].base_ids == runs[1].base_ids and runs[0].steered_ids == runs[1].steered_ids
    assert (runs[0].base_ids, runs[0].steered_ids) != (runs[2].base_ids, runs[2].steered_ids)


def test_save_load_round_trip(result, tmp_path):
    path = result.save(tmp_path / "steer.json")
    back = SteeringResult.load(path)
    assert back == result
    assert back.intervention_objects == IVS


def test_load_refuses_other_files(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not a steering result"):
        SteeringResult.load(tmp_path / "x.json")


@pytest.mark.parametrize("kwargs,match", [
    (dict(interventions=[Intervention(1, 3, "add", 1.0, positions=[40])]), "position 40 is beyond the sequence"),
    (dict(interventions=[]), "no interventions given"),
    (dict(max_new_tokens=0), "max_new_tokens must be at least 1"),
    (dict(max_new_tokens=500), "exceed the model's context"),
])
def test_bad_input(tiny_model, tiny_bank, kwargs, match):
    args = dict(interventions=IVS, max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=match):
        steer(tiny_model, tiny_bank, PROMPT, args.pop("interventions"), **args)
    assert hooks_left(tiny_model) == 0

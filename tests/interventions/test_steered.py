"""``steered``: each mode changes the hooked activation by exactly what the docstring
says (checked against the SAE's own encode on the clean activation), positions select
the right tokens, hooks never outlive the context, bad input is refused up front."""
from __future__ import annotations

import pytest
import torch

from trajectory.interventions import Intervention, steered
from trajectory.interventions.intervention import check_interventions

from .conftest import hooks_left

L = 1  # bank hook blocks.1.hook_resid_post == blocks.2.hook_resid_pre (read back independently)


def _resid(model, bank, tokens, *interventions, **kw):
    """The residual stream entering block L + 1 (= the steered hook's output) and the logits."""
    name = f"blocks.{L + 1}.hook_resid_pre"
    with torch.no_grad():
        if not interventions:
            logits, cache = model.run_with_cache(tokens, names_filter=[name])
            return cache[name][0], logits
        with steered(model, bank, list(interventions), **kw):
            logits, cache = model.run_with_cache(tokens, names_filter=[name])
    return cache[name][0], logits


@pytest.fixture
def model(tiny_model):
    return tiny_model


def _active(tiny_bank, clean):
    with torch.no_grad():
        return tiny_bank[L].encode(clean)  # [pos, d_sae], sae-lens's own encode


def test_add_zero_and_clamp_to_own_value_change_nothing(model, tiny_bank, prompt_ids):
    clean, base = _resid(model, tiny_bank, prompt_ids[None])
    acts = _active(tiny_bank, clean)
    _, got = _resid(model, tiny_bank, prompt_ids[None], Intervention(L, 3, "add", 0.0))
    assert (got - base).abs().max() <= 1e-5
    # every feature active anywhere, clamped at the one position where it has that value
    ivs = [Intervention(L, int(f), "clamp", float(acts[p, f]), positions=[p])
           for p in range(acts.shape[0]) for f in torch.nonzero(acts[p] > 0).flatten().tolist()]
    assert len(ivs) > 20
    _, got = _resid(model, tiny_bank, prompt_ids[None], *ivs)
    assert (got - base).abs().max() <= 1e-5


@pytest.mark.parametrize("mode,value", [("clamp", 5.0), ("add", 3.0), ("scale", 2.5), ("ablate", None)])
def test_each_mode_moves_the_activation_by_its_formula(model, tiny_bank, prompt_ids, mode, value):
    where = [2, 4]
    clean, _ = _resid(model, tiny_bank, prompt_ids[None])
    acts = _active(tiny_bank, clean)
    f = int(torch.nonzero((acts[2] > 0) & (acts[4] > 0)).flatten()[0])  # active at both: every mode moves x
    a = acts[:, f]
    w = tiny_bank[L].W_dec[f].detach()
    got, _ = _resid(model, tiny_bank, prompt_ids[None], Intervention(L, f, mode, value, positions=where))
    for p in range(clean.shape[0]):
        if p not in where:
            torch.testing.assert_close(got[p], clean[p], rtol=0, atol=0)
            continue
        want = {"clamp": (5.0 - a[p]) * w, "add": 3.0 * w / w.norm(), "scale": 1.5 * a[p] * w,
                "ablate": -a[p] * w}[mode]
        assert want.norm() > 0.1
        torch.testing.assert_close(got[p] - clean[p], want, rtol=1e-5, atol=1e-5)


def test_positions_prompt_generated_slice(model, tiny_bank, prompt_ids):
    clean, _ = _resid(model, tiny_bank, prompt_ids[None])
    N, P = clean.shape[0], 5

    def changed(positions, **kw):
        got, _ = _resid(model, tiny_bank, prompt_ids[None], Intervention(L, 7, "add", 4.0, positions=positions), **kw)
        return [p for p in range(N) if not torch.equal(got[p], clean[p])]

    assert changed("all") == list(range(N))
    assert changed("prompt", prompt_length=P) == list(range(P))
    assert changed("generated", prompt_length=P) == list(range(P, N))
    assert changed("generated") == []  # without a prompt length everything is prompt
    assert changed(slice(1, 7, 2)) == [1, 3, 5]
    assert changed(slice(6, None)) == list(range(6, N))


def test_several_layers_at_once(model, tiny_bank, prompt_ids):
    base = model(prompt_ids[None])
    with steered(model, tiny_bank, [Intervention(0, 1, "add", 5.0), Intervention(2, 3, "add", 5.0)]) as state:
        both = model(prompt_ids[None])
    assert sorted(state.hook_names) == [0, 2]
    with steered(model, tiny_bank, [Intervention(2, 3, "add", 5.0)]):
        only2 = model(prompt_ids[None])
    assert not torch.allclose(both, only2) and not torch.allclose(only2, base)


def test_hooks_removed_on_exit_and_on_exception(model, tiny_bank, prompt_ids):
    assert hooks_left(model) == 0
    with steered(model, tiny_bank, [Intervention(1, 3, "add", 1.0)]):
        assert hooks_left(model) == 1
    assert hooks_left(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with steered(model, tiny_bank, [Intervention(1, 3, "add", 1.0), Intervention(2, 3, "add", 1.0)]):
            assert hooks_left(model) == 2
            raise RuntimeError("boom")
    assert hooks_left(model) == 0
    base = model(prompt_ids[None])
    torch.testing.assert_close(model(prompt_ids[None]), base)


@pytest.mark.parametrize("make,match", [
    (lambda: [Intervention(1, 3, "nudge", 1.0)], "unknown intervention mode 'nudge'"),
    (lambda: [Intervention(9, 3, "add", 1.0)], r"layer 9 is not in the SAE bank \(it has \[0, 1, 2\]\)"),
    (lambda: [Intervention(1, 64, "add", 1.0)], "feature 64 is out of range.*64 features"),
    (lambda: [], "no interventions given"),
    (lambda: [Intervention(1, 3, "add", 1.0, positions=[])], "empty list"),
    (lambda: [Intervention(1, 3, "add", 1.0, positions=[-1])], "negative indices"),
    (lambda: [Intervention(1, 3, "ablate", 2.0)], "takes no value"),
    (lambda: [Intervention(1, 3, "add", 1.0, positions="later")], "unknown positions 'later'"),
])
def test_bad_input_is_refused_before_any_hook(model, tiny_bank, make, match):
    with pytest.raises(ValueError, match=match):
        with steered(model, tiny_bank, make()):
            pytest.fail("the body must not run")
    assert hooks_left(model) == 0


def test_position_beyond_the_sequence(model, tiny_bank, prompt_ids):
    N = len(prompt_ids)
    with pytest.raises(ValueError, match=f"position {N} is beyond the sequence of {N} tokens"):
        with steered(model, tiny_bank, [Intervention(1, 3, "add", 1.0, positions=[1, N])]):
            model(prompt_ids[None])
    assert hooks_left(model) == 0
    with pytest.raises(ValueError, match="position 40 is beyond the sequence of 12 tokens"):
        check_interventions([Intervention(1, 3, "add", 1.0, positions=slice(40, None))], tiny_bank, 12)


@pytest.mark.parametrize("spec,want", [
    ("6:123:clamp:0", Intervention(6, 123, "clamp", 0.0)),
    ("9:77:add:8:generated", Intervention(9, 77, "add", 8.0, "generated")),
    ("1:2:ablate", Intervention(1, 2, "ablate")),
    ("1:2:scale:0.5:3,5", Intervention(1, 2, "scale", 0.5, [3, 5])),
    ("1:2:add:1:4-", Intervention(1, 2, "add", 1.0, slice(4, None))),
])
def test_parse_and_json_round_trip(spec, want):
    got = Intervention.parse(spec)
    assert got == want
    assert Intervention.from_dict(got.to_dict()) == got


@pytest.mark.parametrize("spec,match", [("6:123", "LAYER:FEATURE:MODE"), ("a:1:add:1", "must be integers"),
                                        ("6:1:add", "needs a VALUE"), ("6:1:add:1:x", "positions 'x'")])
def test_parse_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        Intervention.parse(spec)

"""Batched evolution: prompts of different lengths share ONE right-padded forward pass
and give what one prompt at a time gives (exact feature lists, values to float noise)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trajectory.evolution.attention import batch_forward_activations
from trajectory.evolution.batch import evolve_batch, evolve_many, length_groups
from trajectory.evolution.engine import evolve

# 4, 9, 3 and 14 tokens with BOS: the longest is not first, the shortest is in the middle
PROMPTS = ["the dark room", "the final correct answer : max , mark", "smith left",
           "mark gave flashlight to max and smith left . the empty dark room"]


def _own_hooks(model, prompt, layer):
    """The model's own hook values of one prompt run alone (no padding, no batch)."""
    L = layer
    names = [f"blocks.{L}.hook_resid_pre", f"blocks.{L}.hook_resid_post", f"blocks.{L}.attn.hook_pattern",
             f"blocks.{L}.attn.hook_v", f"blocks.{L}.ln1_post.hook_scale"]
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(prompt), names_filter=lambda n: n in names)
    scale = cache[names[4]][0, :, 0] if names[4] in cache else None
    return dict(resid_pre=cache[names[0]][0], resid_post=cache[names[1]][0], pattern=cache[names[2]][0],
                v=cache[names[3]][0], scale=scale)


def assert_same_evolution(got, want, atol=1e-5):
    """Exact tokens, layers and top-k lists; activations within ``atol`` (relative 1e-5)."""
    assert got.tokens == want.tokens and got.token_ids == want.token_ids and got.layers == want.layers
    assert (got.k, got.postnorm, got.model_name) == (want.k, want.postnorm, want.model_name)
    assert got.metadata["prompt"] == want.metadata["prompt"]
    for L in want.layers:
        a, b = got.rows[L], want.rows[L]
        np.testing.assert_array_equal(a.offsets, b.offsets)
        np.testing.assert_array_equal(a.n_active, b.n_active)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_allclose(a.values, b.values, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("gpt2", [False, True], ids=["gemma-style", "gpt2-style"])
def test_padded_batch_gives_each_prompts_own_hook_values(tiny_model, gpt2):
    """Rotary (Gemma-style, post-norm scale) and learned positions (GPT-2 style): every
    layer's slice of the batch equals the model's own hooks of the prompt run alone."""
    from trajectory.testing import tiny_gpt2_model

    model = tiny_gpt2_model() if gpt2 else tiny_model
    ids = [model.to_tokens(p)[0] for p in PROMPTS]
    seen = []
    for L, acts in batch_forward_activations(model, ids, [0, 2] if not gpt2 else [1]):
        seen.append(L)
        for prompt, n, a in zip(PROMPTS, [len(t) for t in ids], acts):
            own = _own_hooks(model, prompt, L)
            assert a.n_pos == n and a.pattern.shape[-2:] == (n, n)
            for name, want in own.items():
                got = getattr(a, name)
                if want is None:
                    assert got is None
                    continue
                torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
            assert torch.allclose(a.pattern.sum(-1), torch.ones(()))  # rows over real keys only
    assert seen == ([0, 2] if not gpt2 else [1])  # one layer at a time, the requested ones


@pytest.mark.parametrize(
    "options",
    [dict(method="feature_space"), dict(method="direct", batch_size=16), dict(postnorm="frozen_scale")],
    ids=["feature_space", "direct", "frozen_scale"],
)
def test_evolve_batch_equals_evolve_per_prompt(tiny_model, tiny_bank, options):
    got = evolve_batch(tiny_model, tiny_bank, PROMPTS, k=9, **options)
    assert len(got) == len(PROMPTS)
    for prompt, evo in zip(PROMPTS, got):
        assert_same_evolution(evo, evolve(tiny_model, tiny_bank, prompt, k=9, progress=False, **options))


@pytest.mark.parametrize("architecture", ["topk", "standard"])
def test_evolve_batch_other_sae_and_model_kinds(tiny_model, architecture):
    from trajectory.testing import tiny_bank, tiny_gpt2_model

    for model in (tiny_model, tiny_gpt2_model()):
        bank = tiny_bank(model, architecture=architecture, d_sae=48, k=8)
        got = evolve_batch(model, bank, PROMPTS[1:], k=7, layers=[1])
        for prompt, evo in zip(PROMPTS[1:], got):
            assert_same_evolution(evo, evolve(model, bank, prompt, k=7, layers=[1], progress=False))


def test_evolve_many_batched_equals_one_at_a_time(tiny_model, tiny_bank, tmp_path, monkeypatch):
    """Five prompts, three per forward pass: two passes, grouped by length, every file equal
    to ``evolve`` of its prompt; the index as in one-at-a-time runs."""
    import json

    import trajectory.evolution.batch as batch
    from trajectory.evolution.result import Evolution

    prompts = PROMPTS + ["mark gave"]
    groups = []
    real = batch.evolve_batch
    monkeypatch.setattr(batch, "evolve_batch", lambda m, b, ps, **kw: (groups.append(list(ps)), real(m, b, ps, **kw))[1])
    paths = evolve_many(tiny_model, tiny_bank, prompts, tmp_path, k=6, batch_size=3, progress=False)
    lengths = {p: len(tiny_model.to_tokens(p)[0]) for p in prompts}
    assert len(groups) == 2 and sorted(sum(groups, [])) == sorted(prompts)
    assert max(lengths[p] for p in groups[0]) <= min(lengths[p] for p in groups[1])  # similar lengths together
    for prompt, path in zip(prompts, paths):
        assert_same_evolution(Evolution.load(path), evolve(tiny_model, tiny_bank, prompt, k=6, progress=False))
    index = json.loads((tmp_path / "index.json").read_text())
    assert [(e["prompt"], e["file"]) for e in index] == [(p, path.name) for p, path in zip(prompts, paths)]


def test_length_groups_and_bad_batch_size(tiny_model, tiny_bank, tmp_path):
    lengths = {"a": 5, "b": 2, "c": 9, "d": 2, "e": 5}
    assert length_groups(lengths, 2) == [["b", "d"], ["a", "e"], ["c"]]
    assert length_groups(lengths, 10) == [["b", "d", "a", "e", "c"]]
    with pytest.raises(ValueError, match="batch_size .prompts per forward pass. must be at least 1"):
        evolve_many(tiny_model, tiny_bank, ["the dark room"], tmp_path / "out", k=5, batch_size=0, progress=False)
    assert not (tmp_path / "out").exists()

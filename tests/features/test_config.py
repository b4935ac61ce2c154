"""RealConfig / SyntheticConfig: bad values fail early; config= equals the keyword form."""
from __future__ import annotations

import dataclasses

import pytest

from trajectory.features import RealConfig, SyntheticConfig, real, synthetic
from trajectory.testing import CORPUS_SENTENCES, random_sae

HOOK = "blocks.1.hook_resid_post"


def test_defaults_are_the_documented_ones():
    assert RealConfig() == RealConfig(max_examples=20, batch_size=16, context_length=128, max_tokens=None,
                                      window=(12, 4), n_logits=10, n_bins=40, final_norm="weight", include_bos=False)
    assert SyntheticConfig() == SyntheticConfig(seq_len=8, n_steps=150, learning_rate=0.1, restarts=3, seed=0,
                                                temperature=(2.0, 0.05), eval_every=10, vocab=None, n_logits=10,
                                                final_norm="weight")


@pytest.mark.parametrize("field, value, message", [
    ("max_examples", 0, "max_examples must be at least 1"),
    ("batch_size", -3, "batch_size must be at least 1"),
    ("batch_size", 2.5, "batch_size must be an integer"),
    ("context_length", 1, "context_length must be at least 2"),
    ("max_tokens", 0, "max_tokens must be at least 1"),
    ("n_bins", 0, "n_bins must be at least 1"),
    ("n_logits", -1, "n_logits must be at least 0"),
    ("window", (3,), "window must be two integers"),
    ("window", (-1, 2), "window must be two integers >= 0"),
    ("final_norm", "bogus", "final_norm must be 'weight' or 'ignore'"),
    ("include_bos", "yes", "include_bos must be True or False"),
])
def test_real_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=f"RealConfig.{message}"):
        RealConfig(**{field: value})


@pytest.mark.parametrize("field, value, message", [
    ("seq_len", 0, "seq_len must be at least 1"),
    ("n_steps", 0, "n_steps must be at least 1"),
    ("restarts", 0, "restarts must be at least 1"),
    ("eval_every", 0, "eval_every must be at least 1"),
    ("seed", 1.5, "seed must be an integer"),
    ("learning_rate", 0.0, "learning_rate must be a number > 0"),
    ("learning_rate", "fast", "learning_rate must be a number > 0"),
    ("temperature", (1.0, 0.0), "temperature must be two numbers > 0"),
    ("temperature", 2.0, "temperature must be two numbers > 0"),
    ("vocab", [], "vocab must be non-empty"),
    ("vocab", [3, -1], "vocab must be non-empty, non-negative"),
    ("final_norm", "none", "final_norm must be 'weight' or 'ignore'"),
])
def test_synthetic_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=f"SyntheticConfig.{message}"):
        SyntheticConfig(**{field: value})


def test_values_are_normalised():
    assert RealConfig(window=[3, 2]).window == (3, 2)
    s = SyntheticConfig(temperature=[1, 0.5], vocab=range(3, 6))
    assert s.temperature == (1.0, 0.5) and s.vocab == (3, 4, 5)


def test_bad_values_fail_before_the_model_runs(tiny_model):
    sae = random_sae(32, 16, seed=2, hook_name=HOOK)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        real(tiny_model, sae, "0", CORPUS_SENTENCES, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="n_steps must be at least 1"):
        synthetic(tiny_model, sae, "0", n_steps=0, progress=False)
    with pytest.raises(TypeError, match="unexpected keyword argument.*max_exampels"):
        real(tiny_model, sae, "0", CORPUS_SENTENCES, max_exampels=3, progress=False)
    with pytest.raises(TypeError, match="config must be a SyntheticConfig"):
        synthetic(tiny_model, sae, "0", config=RealConfig(), progress=False)


def test_real_config_gives_the_keyword_report(tiny_model):
    sae = random_sae(32, 16, seed=2, hook_name=HOOK)
    kw = dict(max_examples=5, batch_size=3, context_length=9, window=(4, 1), n_bins=11, n_logits=3, include_bos=True)
    by_keywords = real(tiny_model, sae, "0-3", CORPUS_SENTENCES, progress=False, **kw)
    by_config = real(tiny_model, sae, "0-3", CORPUS_SENTENCES, config=RealConfig(**kw), progress=False)
    assert by_config == by_keywords
    # keywords override the config's fields
    mixed = real(tiny_model, sae, "0-3", CORPUS_SENTENCES, config=RealConfig(**{**kw, "max_examples": 2}),
                 max_examples=5, progress=False)
    assert mixed == by_keywords
    assert by_config.settings["window"] == [4, 1] and by_config.settings["context_length"] == 9


def _without_time(report):
    return {f: dataclasses.replace(s, time_s=None) for f, s in report.items()}


def test_synthetic_config_gives_the_keyword_report(tiny_model):
    sae = random_sae(32, 16, seed=2, hook_name=HOOK)
    kw = dict(seq_len=3, n_steps=6, restarts=2, eval_every=3, seed=4, learning_rate=0.2, vocab=range(4, 40))
    by_keywords = synthetic(tiny_model, sae, "0-1", progress=False, **kw)
    by_config = synthetic(tiny_model, sae, "0-1", config=SyntheticConfig(**kw), progress=False)
    assert _without_time(by_config) == _without_time(by_keywords)
    assert by_config.settings == by_keywords.settings and by_config.settings["vocab_size"] == 36

"""TrainConfig: today's defaults, validation with messages that name the field and the fix."""
from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

import trajectory.training.config as config_module
from trajectory.training.config import TARGETS, TrainConfig


def test_docstring_examples_run():
    result = doctest.testmod(config_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_defaults_and_to_dict():
    c = TrainConfig()
    assert (c.d_sae, c.k, c.architecture, c.context_length) == (2048, 64, "topk", 128)
    assert (c.n_train_tokens, c.n_heldout_tokens, c.epochs, c.max_epochs) == (100_000, 8_000, 1.0, 3.0)
    assert (c.lr, c.batch_size, c.loss_chunks, c.seed, c.store_dtype) == (4e-3, 1024, 8, 0, "float32")
    assert c.corpus is None and c.targets == TARGETS
    d = TrainConfig(corpus=Path("docs"), epochs=2, targets={"explained_variance_min": 0.9}).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["corpus"] == "docs" and d["epochs"] == 2.0
    assert d["targets"] == {**TARGETS, "explained_variance_min": 0.9}  # unset targets keep the defaults


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"k": 2048}, r"k must be less than d_sae \(2048\), got 2048: lower k or raise d_sae"),
        ({"d_sae": 16, "k": 32}, r"k must be less than d_sae \(16\)"),
        ({"architecture": "gated"}, r"architecture must be one of \['topk', 'batchtopk'\], got 'gated'"),
        ({"n_train_tokens": 0}, r"n_train_tokens must be a positive int, got 0"),
        ({"n_heldout_tokens": -5}, r"n_heldout_tokens must be a positive int, got -5"),
        ({"d_sae": 10.5}, r"d_sae must be a positive int, got 10.5"),
        ({"k": 0}, r"k must be a positive int"),
        ({"context_length": 1}, r"context_length must be at least 2"),
        ({"epochs": 0}, r"epochs must be a positive number, got 0"),
        ({"lr": -1e-3}, r"lr must be a positive number"),
        ({"epochs": 2.0, "max_epochs": 1.0}, r"max_epochs must be at least epochs \(2\), got 1; set it to epochs"),
        ({"store_dtype": "bfloat16"}, r"store_dtype must be one of \['float32', 'float16'\]"),
        ({"init": "zeros"}, r"init must be one of \['data', 'random'\]"),
        ({"seed": 1.5}, r"seed must be an int"),
        ({"targets": {"ev": 0.9}}, r"targets has unknown keys \['ev'\]; known:"),
    ],
)
def test_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_frozen():
    with pytest.raises(AttributeError):
        TrainConfig().k = 8

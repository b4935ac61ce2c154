"""Shared fixtures. Most tests use the tiny Gemma-2-style model from
``trajectory.testing``; tests marked ``integration`` use the real offline Gemma 3
270M model (installed by the test command, loaded once per session)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model():
    from trajectory.testing import tiny_model as make

    return make()


@pytest.fixture(scope="session")
def tiny_bank(tiny_model):
    from trajectory.testing import tiny_bank as make

    return make(tiny_model)


@pytest.fixture(scope="session")
def offline_model():
    """The real offline Gemma 3 270M (fp32, CPU), loaded once per test session."""
    from trajectory.model.load import load_model

    return load_model("offline")


@pytest.fixture(scope="session")
def artifacts_dir():
    """Folder for files a person may want to look at after the tests (screenshots)."""
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path

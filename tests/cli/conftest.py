"""CLI runs on the tiny fixtures: the preset's model loader returns the tiny model (built
from a config, a real HookedTransformer); banks are real folders passed with --bank."""
from __future__ import annotations

import pytest


@pytest.fixture
def tiny_preset(monkeypatch, tiny_model):
    """Every ``load_model`` call of the pipeline gives the tiny model."""
    import trajectory.model.load as load

    calls = []

    def fake_load(name, device=None, dtype=None, tl_name=None):
        calls.append((name, device))
        return tiny_model

    monkeypatch.setattr(load, "load_model", fake_load)
    return calls


@pytest.fixture(scope="session")
def tiny_bank_dir(tmp_path_factory, tiny_bank):
    """The tiny bank saved as a bank folder."""
    folder = tmp_path_factory.mktemp("bank") / "tiny"
    tiny_bank.save(folder)
    return folder

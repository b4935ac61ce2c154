"""Helpers shared by the intervention tests (tiny model and bank from tests/conftest.py)."""
from __future__ import annotations

import pytest

PROMPT = "mark gave flashlight to the dark room and"


@pytest.fixture(scope="session")
def prompt_ids(tiny_model):
    return tiny_model.to_tokens(PROMPT)[0]


def hooks_left(model) -> int:
    """Forward hooks attached to any hook point of ``model``."""
    return sum(len(h.fwd_hooks) for h in model.hook_dict.values())

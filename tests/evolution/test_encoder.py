"""Feature-space mixing: blocks of keys, query chunks and buffer reuse give the result of
encoding the d_model step vectors directly."""
from __future__ import annotations

import numpy as np
import pytest

from trajectory.evolution.engine import evolve

PROMPT = "the final correct answer : max , mark and smith are in the empty dark room"
K = 12


@pytest.mark.parametrize("piece_elements", [0, 2**30])
def test_feature_space_blocks_and_chunks_agree_with_direct(tiny_model, tiny_bank, monkeypatch, piece_elements):
    """Many key blocks (partial last ones) and query chunks: still the direct result.
    ``_PIECE_ELEMENTS`` 0 keeps blocks at 3 keys; 2**30 grows them as narrow SAEs do."""
    import trajectory.evolution.encoder as encoder

    monkeypatch.setattr(encoder, "_KEY_BLOCK", 3)
    monkeypatch.setattr(encoder, "_PIECE_ELEMENTS", piece_elements)
    prompt = PROMPT + " . smith left . mark gave flashlight to max"
    for postnorm in ("per_partial_sum", "frozen_scale"):
        fast = evolve(tiny_model, tiny_bank, prompt, k=K, postnorm=postnorm, method="feature_space", batch_size=50, progress=False)
        slow = evolve(tiny_model, tiny_bank, prompt, k=K, postnorm=postnorm, method="direct", progress=False)
        for L in fast.layers:
            np.testing.assert_array_equal(fast.rows[L].indices, slow.rows[L].indices)
            np.testing.assert_array_equal(fast.rows[L].n_active, slow.rows[L].n_active)
            np.testing.assert_allclose(fast.rows[L].values, slow.rows[L].values, atol=1e-4)

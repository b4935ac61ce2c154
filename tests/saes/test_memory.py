"""Memory estimates of SAE banks, against the tensors sae-lens really allocates."""
from __future__ import annotations

import pytest

from trajectory.saes.memory import estimate_bank_bytes, format_bytes, sae_nbytes, tensors_bytes
from trajectory.testing import random_sae


def test_estimate_matches_real_tensors():
    sae = random_sae(32, 64, architecture="jumprelu")
    real = sum(t.numel() * 4 for t in sae.state_dict().values())
    assert estimate_bank_bytes(1, 32, 64) == real
    assert estimate_bank_bytes(26, 2304, 65536) / 1e9 == pytest.approx(31.4, abs=0.05)
    assert sae_nbytes(sae) == real
    shapes = {k: list(v.shape) for k, v in sae.state_dict().items()}
    assert tensors_bytes(shapes, "float32") == real and tensors_bytes(shapes, "torch.bfloat16") == real // 2


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 999, 1000, 31_400_000_000, 2e15)] == [
        "0 B", "999 B", "1.0 kB", "31.4 GB", "2000.0 TB"
    ]

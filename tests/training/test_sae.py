"""``progress=False`` silences sae-lens's own training bar (it always opens one)."""
import numpy as np

from trajectory.training.sae import train_sae


def test_no_progress_bar_when_asked(capsys):
    acts = np.random.default_rng(0).normal(size=(512, 8)).astype(np.float32)
    train_sae(acts, d_sae=16, k=2, batch_size=64, progress=False)
    assert "Training SAE" not in capsys.readouterr().err
    train_sae(acts, d_sae=16, k=2, batch_size=64, progress=True)
    assert "Training SAE" in capsys.readouterr().err

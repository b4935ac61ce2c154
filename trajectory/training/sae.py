"""One SAE trained with sae-lens's ``SAETrainer``: :func:`train_sae`.

Activations come as a torch tensor or a numpy array — in RAM or a memory-mapped store
file (:meth:`~trajectory.training.store.ActivationStore.load`). Every pass over them
(mean, scale, batches, data init) reads fixed-size row blocks or gathered batches, so a
memory-mapped input is never copied whole and gives the same SAE, bit for bit, as the
same data in RAM.
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from trajectory.training.config import INITS, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE

__all__ = ["row_stats", "rows", "to_inference_sae", "train_sae"]

#: Rows per block of the passes over all activations (fixed, so results do not depend
#: on whether the activations sit in RAM or on disk).
BLOCK_ROWS = 65536


def rows(acts: Any, idx: Any = None, start: int = 0, stop: int | None = None) -> "torch.Tensor":
    """Float32 torch rows of ``acts`` (``[N, D]`` tensor or array): ``acts[idx]`` when
    ``idx`` is given (gathered in that order), else ``acts[start:stop]``."""
    import torch

    if isinstance(acts, torch.Tensor):
        part = acts[idx] if idx is not None else acts[start:stop]
        return part.float()
    part = acts[np.asarray(idx)] if idx is not None else acts[start:stop]
    return torch.from_numpy(np.asarray(part, dtype=np.float32))


def row_stats(acts: Any) -> tuple["torch.Tensor", float]:
    """``(mean [D], mean norm of the centred rows)`` of ``acts`` ``[N, D]``, in blocks
    (float64 sums)."""
    import torch

    n = acts.shape[0]
    total = torch.zeros(acts.shape[1], dtype=torch.float64)
    for start in range(0, n, BLOCK_ROWS):
        total += rows(acts, start=start, stop=start + BLOCK_ROWS).double().sum(0)
    mean = (total / n).float()
    norms = 0.0
    for start in range(0, n, BLOCK_ROWS):
        norms += float((rows(acts, start=start, stop=start + BLOCK_ROWS) - mean).norm(dim=-1).double().sum())
    return mean, norms / n


def _batches(acts: Any, batch_size: int, seed: int, scale: float) -> Iterator["torch.Tensor"]:
    """Endless shuffled ``[batch_size, D]`` batches of ``acts * scale`` (reshuffled each epoch)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = acts.shape[0]
    while True:
        perm = torch.randperm(n, generator=g)
        for start in range(0, n - batch_size + 1, batch_size):
            yield rows(acts, perm[start : start + batch_size].numpy()) * scale
        if n < batch_size:  # tiny data: sample with replacement
            yield rows(acts, torch.randint(n, (batch_size,), generator=g).numpy()) * scale


def to_inference_sae(training_sae: Any) -> "SAE":
    """Convert a sae-lens ``TrainingSAE`` into its inference SAE (``TopKSAE``, ``JumpReLUSAE``...).

    Uses sae-lens's own ``process_state_dict_for_saving_inference`` (folds decoder norms,
    turns BatchTopK's threshold into JumpReLU's), as its ``save_inference_model`` does.
    """
    from sae_lens import SAE

    state = {k: v.detach().clone() for k, v in training_sae.state_dict().items()}
    training_sae.process_state_dict_for_saving_inference(state)
    cfg = training_sae.cfg.get_inference_sae_cfg_dict()
    if "rescale_acts_by_decoder_norm" in cfg and getattr(training_sae.cfg, "rescale_acts_by_decoder_norm", False):
        cfg["rescale_acts_by_decoder_norm"] = False  # decoder norms were just folded in (all 1)
    sae = SAE.from_dict(cfg)
    sae.load_state_dict(state)
    sae.eval()
    return sae


def _stepwise_bar_trainer_class():
    """sae-lens's ``SAETrainer`` moves its progress bar every 100 steps; one epoch of the
    default bank is 97 steps (100k tokens, batch 1024), so its bar sat at 0% to the end.
    Move it every step."""
    from sae_lens import SAETrainer

    class StepwiseBarTrainer(SAETrainer):
        progress = True

        def _update_pbar(self, step_output, pbar, update_interval: int = 100):  # noqa: ARG002
            super()._update_pbar(step_output, pbar, update_interval=1)

        def fit(self):
            if self.progress:
                return super().fit()
            # sae-lens's fit always opens a bar: hand it a disabled one
            import sae_lens.training.sae_trainer as trainer_module

            bar = trainer_module.tqdm
            trainer_module.tqdm = functools.partial(bar, disable=True)
            try:
                return super().fit()
            finally:
                trainer_module.tqdm = bar

    return StepwiseBarTrainer


def train_sae(
    acts: Any,
    *,
    d_sae: int = TrainConfig.d_sae,
    k: int = TrainConfig.k,
    architecture: str = TrainConfig.architecture,
    n_samples: int | None = None,
    batch_size: int = TrainConfig.batch_size,
    lr: float = TrainConfig.lr,
    seed: int = TrainConfig.seed,
    dead_feature_window: int = TrainConfig.dead_feature_window,
    init: str = TrainConfig.init,
    progress: bool = True,
) -> "SAE":
    """Train one SAE with sae-lens's ``SAETrainer``.

    Args:
        acts: ``[N, d_in]`` raw activations (e.g. ``resid_post``, BOS excluded): a torch
            tensor, a numpy array, or a memmap (read batch by batch, never copied whole).
        d_sae: number of features.
        k: active features per token (TopK), or on average (BatchTopK).
        architecture: ``"topk"`` or ``"batchtopk"``.
        n_samples: training samples seen (default: one epoch over ``acts``).
        batch_size: samples per step.
        lr: Adam learning rate (warm-up over the first 5% of steps, linear decay over the last 20%).
        seed: weight init and batch order.
        dead_feature_window: steps without firing after which a feature counts as dead
            for the TopK auxiliary loss that revives it.
        init: ``"data"`` (decoder rows start at directions of random training samples,
            encoder = decoder transposed) or ``"random"`` (sae-lens's own init).
        progress: sae-lens's training progress bar.

    Returns:
        A sae-lens inference SAE (``TopKSAE`` or ``JumpReLUSAE``) that reads RAW
        activations: the input scaling used in training is folded into its weights.
    """
    import torch

    classes = _training_classes()
    if architecture not in classes:
        raise ValueError(f"architecture must be one of {sorted(classes)}, got {architecture!r}")
    n, d_in = acts.shape
    if n == 0:
        raise ValueError("no activations to train on")
    if not 0 < k < d_sae:
        raise ValueError(f"k must be in 1..d_sae-1 (d_sae={d_sae}), got {k}: lower k or raise d_sae")
    if init not in INITS:
        raise ValueError(f"init must be 'data' or 'random', got {init!r}")
    batch_size = min(batch_size, n)
    n_samples = max(n if n_samples is None else n_samples, batch_size)
    steps = n_samples // batch_size

    # Scale so that the CENTERED activations have mean norm sqrt(d_in) (sae-lens's
    # "expected_average_only_in" convention, but about the mean: Gemma's residual has a
    # huge constant part that b_dec absorbs). Done here, not by the trainer, so that b_dec
    # can start at the data mean; folded into the weights after training.
    mean, mean_norm = row_stats(acts)
    scale = math.sqrt(d_in) / max(mean_norm, 1e-8)

    torch.manual_seed(seed)
    sae_cls, cfg_cls = classes[architecture]
    sae = sae_cls(cfg_cls(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu", apply_b_dec_to_input=True))
    _init_weights(sae, acts, scale, mean * scale, seed=seed, data_init=init == "data")
    trainer = _stepwise_bar_trainer_class()(
        cfg=_trainer_config(steps, batch_size, lr, dead_feature_window), sae=sae,
        data_provider=_batches(acts, batch_size, seed, scale),
    )
    trainer.progress = progress
    trained = trainer.fit()
    trained.fold_activation_norm_scaling_factor(scale)  # -> reads raw activations
    return to_inference_sae(trained)


def _training_classes() -> dict[str, tuple[type, type]]:
    """architecture -> (sae-lens training SAE class, its config class)."""
    from sae_lens.saes.batchtopk_sae import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    return {
        "topk": (TopKTrainingSAE, TopKTrainingSAEConfig),
        "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig),
    }


def _init_weights(sae: Any, acts: Any, scale: float, center: "torch.Tensor", *, seed: int, data_init: bool) -> None:
    """``b_dec`` at the scaled data mean ``center`` (``[d_in]``); with ``data_init``, decoder
    rows at (centred) directions of random rows of ``acts * scale``, encoder = decoder
    transposed, so every feature fires on some data from the start (fewer dead features)."""
    import torch

    with torch.no_grad():
        sae.b_dec.copy_(center)
        if data_init:
            g = torch.Generator().manual_seed(seed)
            picked = rows(acts, torch.randint(acts.shape[0], (sae.cfg.d_sae,), generator=g).numpy()) * scale
            picked = picked - center
            picked = picked + 1e-3 * torch.randn(picked.shape, generator=g)
            picked = picked / picked.norm(dim=-1, keepdim=True) * 0.1
            sae.W_dec.copy_(picked)
            sae.W_enc.copy_(picked.T)


def _trainer_config(steps: int, batch_size: int, lr: float, dead_feature_window: int) -> Any:
    """sae-lens ``SAETrainerConfig``: ``steps`` steps, 5% warm-up, linear decay over the last 20%."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    return SAETrainerConfig(
        total_training_samples=steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr,  # the constant schedule's decay starts from lr and goes linearly to 0
        lr_warm_up_steps=max(steps // 20, 1),
        lr_decay_steps=max(steps // 5, 1),
        device="cpu",
        dead_feature_window=dead_feature_window,
        feature_sampling_window=max(steps, 1),
        logger=LoggingConfig(log_to_wandb=False),
    )

"""Train a bank of residual-stream SAEs locally (the ``offline`` preset has no published ones).

Steps of :func:`train_bank`, one function each:

1. :func:`_load_chunks`: corpus -> BOS-prefixed chunks of ``context_length`` tokens
   (:mod:`trajectory.training.corpus`), split into train and held-out chunks
   (deterministic, by ``seed``);
2. :func:`_collect`: one forward pass per batch collects ``blocks.{L}.hook_resid_post`` of
   every requested layer into memory-mapped disk stores, BOS positions left out
   (:mod:`trajectory.training.store`);
3. :func:`_train_layer`, per layer: a TopK (or BatchTopK) SAE is trained by
   :func:`train_sae` with sae-lens's ``SAETrainer`` on the train activations, scaled so
   that their mean-centred norm is ``sqrt(d_model)`` (Gemma's residual norms are ~6000,
   mostly a constant part); ``b_dec`` starts at the data mean and the decoder at
   directions of training samples (fewer dead features). The scale is folded back into
   the weights afterwards (sae-lens's ``fold_activation_norm_scaling_factor``), so the
   saved SAE reads RAW ``resid_post``. It is converted to sae-lens's inference class
   (``TopKSAE``; ``JumpReLUSAE`` for BatchTopK). A layer whose held-out explained variance
   misses the target is trained again with one pass more (:func:`_fit_to_target`).
   Its held-out metrics come from :func:`~trajectory.training.metrics.evaluate_sae`, its
   explanations from :func:`~trajectory.explanations.local.local_explanations`;
4. :func:`~trajectory.training.metrics.spliced_losses` on held-out text, then
   :func:`_assemble` builds the :class:`~trajectory.saes.bank.SAEBank` and its
   ``metadata["training"]``.

The SAE of layer L reads ``blocks.{L}.hook_resid_post``, like Gemma Scope.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from trajectory.explanations.local import local_explanations
from trajectory.hooks import RESID_POST_TEMPLATE, resid_post
from trajectory.training.config import INITS, TrainConfig
from trajectory.training.metrics import evaluate_sae, meets_targets, spliced_losses
from trajectory.training.store import ActivationStore, collect_activations

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from trajectory.saes.bank import SAEBank

__all__ = ["to_inference_sae", "train_bank", "train_sae"]

log = logging.getLogger(__name__)


def _batches(acts: "torch.Tensor", batch_size: int, seed: int) -> Iterator["torch.Tensor"]:
    """Endless shuffled ``[batch_size, D]`` batches of ``acts`` (reshuffled each epoch)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = acts.shape[0]
    while True:
        perm = torch.randperm(n, generator=g)
        for start in range(0, n - batch_size + 1, batch_size):
            yield acts[perm[start : start + batch_size]]
        if n < batch_size:  # tiny data: sample with replacement
            yield acts[torch.randint(n, (batch_size,), generator=g)]


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
        def _update_pbar(self, step_output, pbar, update_interval: int = 100):  # noqa: ARG002
            super()._update_pbar(step_output, pbar, update_interval=1)

    return StepwiseBarTrainer


def train_sae(
    acts: "torch.Tensor",
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
) -> "SAE":
    """Train one SAE with sae-lens's ``SAETrainer`` on in-memory activations.

    Args:
        acts: ``[N, d_in]`` float32 raw activations (e.g. ``resid_post``, BOS excluded).
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

    Returns:
        A sae-lens inference SAE (``TopKSAE`` or ``JumpReLUSAE``) that reads RAW
        activations: the input scaling used in training is folded into its weights.
    """
    import torch

    classes = _training_classes()
    if architecture not in classes:
        raise ValueError(f"architecture must be one of {sorted(classes)}, got {architecture!r}")
    acts = acts.float()
    n, d_in = acts.shape
    if n == 0:
        raise ValueError("no activations to train on")
    if not 0 < k <= d_sae:
        raise ValueError(f"k must be in 1..d_sae ({d_sae}), got {k}")
    if init not in INITS:
        raise ValueError(f"init must be 'data' or 'random', got {init!r}")
    batch_size = min(batch_size, n)
    n_samples = max(n if n_samples is None else n_samples, batch_size)
    steps = n_samples // batch_size

    # Scale so that the CENTERED activations have mean norm sqrt(d_in) (sae-lens's
    # "expected_average_only_in" convention, but about the mean: Gemma's residual has a
    # huge constant part that b_dec absorbs). Done here, not by the trainer, so that b_dec
    # can start at the data mean; folded into the weights after training.
    mean = acts.mean(dim=0)
    scale = math.sqrt(d_in) / float((acts - mean).norm(dim=-1).mean().clamp_min(1e-8))
    scaled = acts * scale

    torch.manual_seed(seed)
    sae_cls, cfg_cls = classes[architecture]
    sae = sae_cls(cfg_cls(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu", apply_b_dec_to_input=True))
    _init_weights(sae, scaled, mean * scale, seed=seed, data_init=init == "data")
    trainer = _stepwise_bar_trainer_class()(
        cfg=_trainer_config(steps, batch_size, lr, dead_feature_window), sae=sae,
        data_provider=_batches(scaled, batch_size, seed),
    )
    trained = trainer.fit()
    trained.fold_activation_norm_scaling_factor(scale)  # -> reads raw activations
    return to_inference_sae(trained)


def _training_classes() -> dict[str, tuple[type, type]]:
    """architecture -> (sae-lens training SAE class, its config class)."""
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    return {
        "topk": (TopKTrainingSAE, TopKTrainingSAEConfig),
        "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig),
    }


def _init_weights(sae: Any, scaled: "torch.Tensor", center: "torch.Tensor", *, seed: int, data_init: bool) -> None:
    """``b_dec`` at the data mean ``center`` (``[d_in]``); with ``data_init``, decoder rows
    at (centred) directions of random rows of ``scaled`` (``[N, d_in]``), encoder = decoder
    transposed, so every feature fires on some data from the start (fewer dead features)."""
    import torch

    with torch.no_grad():
        sae.b_dec.copy_(center)
        if data_init:
            g = torch.Generator().manual_seed(seed)
            rows = (scaled[torch.randint(scaled.shape[0], (sae.cfg.d_sae,), generator=g)] - center)
            rows = rows + 1e-3 * torch.randn(rows.shape, generator=g)
            rows = rows / rows.norm(dim=-1, keepdim=True) * 0.1
            sae.W_dec.copy_(rows)
            sae.W_enc.copy_(rows.T)


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


def train_bank(
    model: "HookedTransformer",
    config: TrainConfig | None = None,
    *,
    layers: Sequence[int] | None = None,
    device: str | None = None,
    progress: bool = True,
) -> "SAEBank":
    """Train one SAE per layer on ``resid_post`` and return them as an :class:`SAEBank`.

    Args:
        model: a TransformerLens ``HookedTransformer`` (``model.cfg`` gives the sizes).
        config: every training setting (default: ``TrainConfig()``).
        layers: block indices (default: all).
        device: where the model runs (default: where it is). SAEs train on CPU.
        progress: tqdm bars.

    Returns:
        An ``SAEBank``; each ``BankEntry`` has ``hook_name`` ``blocks.{L}.hook_resid_post``,
        ``source`` ``"trained:<corpus name>"``, ``metrics`` = {l0, explained_variance,
        dead_fraction, n_train_tokens, n_heldout_tokens, n_train_samples, epochs (of the
        SAE kept), passes (trainings run), train_seconds, explain_seconds, loss_clean,
        loss_spliced, delta_loss, meets_targets} on held-out text, and ``explanations``.
        ``metadata["training"]`` records the settings, the chunk split, timings and targets.
    """
    config = TrainConfig() if config is None else config
    layers = _check_layers(model, layers)
    if device is not None:
        model = model.to(device)
    t_all = time.perf_counter()
    data = _load_chunks(model, config)
    timings: dict[str, float] = {}
    with _store_root(config.store_dir) as root:
        t0 = time.perf_counter()
        train_store, held_store = _collect(model, data, root, layers, config, progress)
        timings["collect_seconds"] = time.perf_counter() - t0
        train_tokens = train_store.tokens
        trained = {layer: _train_layer(model, layer, train_store, held_store, train_tokens, config)
                   for layer in layers}
        t0 = time.perf_counter()
        loss_idx = data.held_idx[: config.loss_chunks]
        clean, spliced = spliced_losses(model, data.chunks[loss_idx], {layer: t.sae for layer, t in trained.items()},
                                        hook_template=RESID_POST_TEMPLATE, progress=progress)
        timings["loss_seconds"] = time.perf_counter() - t0
    for layer, t in trained.items():
        t.metrics.update(loss_clean=clean, loss_spliced=spliced[layer], delta_loss=spliced[layer] - clean)
        t.metrics["meets_targets"] = meets_targets(t.metrics, config.targets)
    timings["total_seconds"] = time.perf_counter() - t_all
    return _assemble(model, config, data, trained, n_loss_tokens=len(loss_idx) * (config.context_length - 1),
                     timings=timings)


@dataclass
class _Chunks:
    """The corpus cut into chunks and split into train and held-out chunks."""

    corpus_name: str
    chunks: "torch.Tensor"  # [n_chunks, context_length] token ids, BOS first
    train_idx: list[int]
    held_idx: list[int]


@dataclass
class _TrainedLayer:
    sae: "SAE"
    metrics: dict[str, Any]
    explanations: dict[int, str]


def _check_layers(model: "HookedTransformer", layers: Sequence[int] | None) -> list[int]:
    """Sorted distinct layers (default: all), each a block of ``model``."""
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if layers is None else sorted({int(layer) for layer in layers})
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or layers} out of range: the model has layers 0..{n_layers - 1}")
    return layers


def _load_chunks(model: "HookedTransformer", config: TrainConfig) -> _Chunks:
    """Tokenise the corpus (up to 4x the tokens needed) and draw the train and held-out
    chunks spread over all of it."""
    from trajectory.training.corpus import load_corpus, split_chunks, tokenize_chunks

    corpus_name, docs = load_corpus(config.corpus)
    piece = config.context_length - 1
    max_tokens = 4 * (config.n_train_tokens + config.n_heldout_tokens)
    chunks = tokenize_chunks(model, docs, config.context_length, max_tokens=max_tokens)
    n_held = max(1, math.ceil(config.n_heldout_tokens / piece))
    n_train = max(1, math.ceil(config.n_train_tokens / piece))
    train_idx, held_idx = split_chunks(len(chunks), n_held, config.seed, n_train=n_train)
    return _Chunks(corpus_name, chunks, train_idx, held_idx)


@contextlib.contextmanager
def _store_root(store_dir: str | None) -> Iterator[Path]:
    """``store_dir``, or a temporary folder removed on exit."""
    if store_dir is not None:
        yield Path(store_dir)
        return
    root = Path(tempfile.mkdtemp(prefix="trajectory-acts-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _collect(model, data: _Chunks, root: Path, layers: list[int], config: TrainConfig,
             progress: bool) -> tuple[ActivationStore, ActivationStore]:
    """resid_post of all ``layers`` on the train chunks, then on the held-out chunks."""

    def collect(idx: list[int], folder: str, label: str) -> ActivationStore:
        return collect_activations(model, data.chunks[idx], root / folder, layers=layers, dtype=config.store_dtype,
                                   progress=progress, desc=f"collecting resid_post ({label})")

    return collect(data.train_idx, "train", "train"), collect(data.held_idx, "heldout", "held-out")


def _train_layer(model, layer: int, train_store: ActivationStore, held_store: ActivationStore,
                 train_tokens: np.ndarray, config: TrainConfig) -> _TrainedLayer:
    """Train layer ``layer``'s SAE (more passes while under the target), set its metadata,
    explain its features; metrics without the spliced losses (they come for all layers at once)."""
    import torch

    hook = resid_post(layer)
    t0 = time.perf_counter()
    acts = torch.from_numpy(np.array(train_store.activations(hook), dtype=np.float32))  # [N_train, d_model]
    held = torch.from_numpy(np.array(held_store.activations(hook), dtype=np.float32))  # [N_held, d_model]
    sae, m, used, passes = _fit_to_target(acts, held, config, seed=config.seed + layer)
    train_seconds = time.perf_counter() - t0
    meta = sae.cfg.metadata
    meta.hook_name = hook
    meta.model_name = model.cfg.model_name
    meta.context_size = config.context_length
    meta.prepend_bos = True
    t1 = time.perf_counter()
    explanations = local_explanations(model, sae, acts, train_tokens)
    m.update(
        n_train_tokens=int(len(acts)),
        n_heldout_tokens=int(len(held)),
        n_train_samples=int(used * len(acts)),
        epochs=used,
        passes=passes,
        train_seconds=round(train_seconds, 2),
        explain_seconds=round(time.perf_counter() - t1, 2),
    )
    log.info("layer %d: EV %.3f  L0 %.1f  dead %.1f%%  epochs %g (%d pass%s)  train %.1fs", layer,
             m["explained_variance"], m["l0"], 100 * m["dead_fraction"], used, passes, "es" * (passes > 1),
             train_seconds)
    return _TrainedLayer(sae, m, explanations)


def _fit_to_target(acts: "torch.Tensor", held: "torch.Tensor", config: TrainConfig,
                   *, seed: int) -> tuple["SAE", dict[str, Any], float, int]:
    """Train on ``acts`` (``[N, d_in]``) for ``config.epochs`` passes, evaluate on ``held``;
    late layers are harder, so while the held-out explained variance misses the target,
    train again from scratch with one pass more (up to ``config.max_epochs``).

    Returns:
        ``(sae, metrics, epochs, passes)``: the SAE with the best held-out explained
        variance, its metrics and epochs, and how many SAEs were trained.
    """
    best: tuple[Any, dict[str, Any], float] | None = None
    ep, passes = config.epochs, 0
    while True:
        cand = train_sae(
            acts, d_sae=config.d_sae, k=config.k, architecture=config.architecture, n_samples=int(ep * len(acts)),
            batch_size=config.batch_size, lr=config.lr, seed=seed,
            dead_feature_window=config.dead_feature_window, init=config.init,
        )
        passes += 1
        cm = evaluate_sae(cand, held)
        if best is None or cm["explained_variance"] > best[1]["explained_variance"]:
            best = (cand, cm, ep)
        if best[1]["explained_variance"] >= config.targets["explained_variance_min"] or ep + 1 > config.max_epochs:
            return (*best, passes)
        ep += 1


#: Settings recorded in ``metadata["training"]``, in this order (after ``corpus``).
_MANIFEST_SETTINGS = ("architecture", "d_sae", "k", "context_length", "epochs", "max_epochs", "lr", "batch_size",
                      "seed", "store_dtype")


def _assemble(model, config: TrainConfig, data: _Chunks, trained: dict[int, _TrainedLayer], *,
              n_loss_tokens: int, timings: dict[str, float]) -> "SAEBank":
    """The :class:`SAEBank` of the trained layers, with ``metadata["training"]``."""
    from trajectory.saes.bank import BankEntry, SAEBank

    entries = {
        layer: BankEntry(layer=layer, sae=t.sae, hook_name=resid_post(layer), source=f"trained:{data.corpus_name}",
                         metrics=t.metrics, explanations=t.explanations)
        for layer, t in trained.items()
    }
    settings = config.to_dict()
    bank_meta = {
        "corpus": data.corpus_name,
        **{key: settings[key] for key in _MANIFEST_SETTINGS},
        "n_train_chunks": len(data.train_idx),
        "n_heldout_chunks": len(data.held_idx),
        "n_corpus_chunks": int(len(data.chunks)),
        "heldout_chunks": [int(i) for i in data.held_idx],
        "train_chunks": [int(i) for i in data.train_idx],
        "n_loss_tokens": int(n_loss_tokens),
        **{key: round(seconds, 2) for key, seconds in timings.items()},
        "targets": dict(config.targets),
        "layers_meeting_targets": [layer for layer, t in trained.items() if t.metrics["meets_targets"]],
    }
    return SAEBank(entries, model_name=model.cfg.model_name, metadata={"training": bank_meta})

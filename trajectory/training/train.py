"""Train a bank of SAEs locally, one per layer, at any hook (:data:`~trajectory.training.config.HOOK_TEMPLATES`).

The ``offline`` preset has no published SAEs; ``trajectory preload`` builds its residual
bank with :func:`train_bank` (the same function as :func:`train_saes`), ``trajectory
train`` any other bank. Steps of :func:`train_saes`, one function each:

1. :func:`_load_chunks`: corpus -> BOS-prefixed chunks of ``context_length`` tokens
   (:mod:`trajectory.training.corpus`), split into train and held-out chunks
   (deterministic, by ``seed``);
2. :func:`_collect`: one forward pass per batch collects ``config.hook`` (default
   ``blocks.{L}.hook_resid_post``) of every requested layer into memory-mapped disk
   stores, BOS positions left out, ``attn.hook_z`` flattened to ``n_heads * d_head``
   (:mod:`trajectory.training.store`);
3. :func:`_train_layer`, per layer: a TopK (or BatchTopK) SAE is trained by
   :func:`~trajectory.training.sae.train_sae` with sae-lens's ``SAETrainer`` on the train activations, scaled so
   that their mean-centred norm is ``sqrt(d_model)`` (Gemma's residual norms are ~6000,
   mostly a constant part); ``b_dec`` starts at the data mean and the decoder at
   directions of training samples (fewer dead features). The scale is folded back into
   the weights afterwards (sae-lens's ``fold_activation_norm_scaling_factor``), so the
   saved SAE reads RAW activations. Activations larger than ``config.ram_budget_bytes``
   are read batch by batch from the memory-mapped store instead of copied into RAM. It is converted to sae-lens's inference class
   (``TopKSAE``; ``JumpReLUSAE`` for BatchTopK). A layer whose held-out explained variance
   misses the target is trained again with one pass more (:func:`_fit_to_target`); the
   next layer starts at the passes this one needed (later layers are harder: no
   training is spent on a pass count that just failed one layer down).
   Its held-out metrics come from :func:`~trajectory.training.metrics.evaluate_sae`, its
   explanations from :func:`~trajectory.explanations.local.local_explanations`;
4. :func:`~trajectory.training.metrics.hook_losses` on held-out text (clean, spliced,
   zero-ablated), then :func:`_assemble` builds the :class:`~trajectory.saes.bank.SAEBank`
   and its ``metadata["training"]``.

By default the SAE of layer L reads ``blocks.{L}.hook_resid_post``, like Gemma Scope.
All checks (hook in the model, layers, ``k < d_sae``) run before anything is written.
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
from trajectory.hooks import hook_from_template
from trajectory.training.config import TrainConfig
from trajectory.training.metrics import evaluate_sae, hook_losses, meets_targets
from trajectory.training.sae import to_inference_sae, train_sae
from trajectory.training.store import ActivationStore, collect_activations, hook_width

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from trajectory.saes.bank import SAEBank

__all__ = ["to_inference_sae", "train_bank", "train_sae", "train_saes"]

log = logging.getLogger(__name__)


def train_saes(
    model: "HookedTransformer",
    config: TrainConfig | None = None,
    *,
    layers: Sequence[int] | None = None,
    device: str | None = None,
    progress: bool = True,
) -> "SAEBank":
    """Train one SAE per layer at ``config.hook`` and return them as an :class:`SAEBank`.

    Args:
        model: a TransformerLens ``HookedTransformer`` (``model.cfg`` gives the sizes).
        config: every training setting (default: ``TrainConfig()``: ``resid_post``).
        layers: block indices (default: all).
        device: where the model runs (default: where it is). SAEs train on CPU.
        progress: tqdm bars.

    Returns:
        An ``SAEBank``; each ``BankEntry`` has ``hook_name`` ``config.hook`` of its layer,
        ``source`` ``"trained:<corpus name>"``, ``metrics`` = {l0, explained_variance,
        dead_fraction, n_train_tokens, n_heldout_tokens, n_train_samples, epochs (of the
        SAE kept), passes (trainings run), activations_in_ram, train_seconds,
        explain_seconds, loss_clean, loss_spliced, loss_zero_ablation, delta_loss,
        loss_recovered, meets_targets} on held-out text, and ``explanations``.
        ``metadata["training"]`` records the settings, the chunk split, timings and targets.

    Raises:
        ValueError: a hook not in the model (the message lists the valid ones), a layer
            out of range, ``k`` not under the SAE width — before anything is written.
    """
    config = TrainConfig() if config is None else config
    layers = _check_layers(model, layers)
    if device is not None:
        model = model.to(device)
    d_sae = config.sae_width(hook_width(model, [hook_from_template(config.hook, x) for x in layers]))
    t_all = time.perf_counter()
    data = _load_chunks(model, config)
    timings: dict[str, float] = {}
    with _store_root(config.store_dir) as root:
        t0 = time.perf_counter()
        train_store, held_store = _collect(model, data, root, layers, config, progress)
        timings["collect_seconds"] = time.perf_counter() - t0
        train_tokens = train_store.tokens
        trained: dict[int, _TrainedLayer] = {}
        epochs = config.epochs
        for layer in layers:  # a layer starts at the epochs the layer before needed: later layers are harder
            trained[layer] = _train_layer(model, layer, train_store, held_store, train_tokens, config, d_sae, epochs,
                                          progress)
            epochs = max(epochs, trained[layer].metrics["epochs"])
        t0 = time.perf_counter()
        loss_idx = data.held_idx[: config.loss_chunks]
        losses = hook_losses(model, data.chunks[loss_idx], {layer: t.sae for layer, t in trained.items()},
                             hook_template=config.hook, progress=progress)
        timings["loss_seconds"] = time.perf_counter() - t0
    for layer, t in trained.items():
        spliced, zero = losses.spliced[layer], losses.zero_ablated[layer]
        t.metrics.update(loss_clean=losses.clean, loss_spliced=spliced, loss_zero_ablation=zero,
                         delta_loss=spliced - losses.clean,
                         loss_recovered=(zero - spliced) / (zero - losses.clean) if zero != losses.clean else None)
        t.metrics["meets_targets"] = meets_targets(t.metrics, config.targets)
    timings["total_seconds"] = time.perf_counter() - t_all
    return _assemble(model, config, data, trained, n_loss_tokens=len(loss_idx) * (config.context_length - 1),
                     timings=timings, d_sae=d_sae)


#: ``trajectory preload --preset offline`` trains through this name (the same function).
train_bank = train_saes


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
    """``config.hook`` of all ``layers`` on the train chunks, then on the held-out chunks."""
    short = config.hook.rsplit(".", 1)[-1].removeprefix("hook_")

    def collect(idx: list[int], folder: str, label: str) -> ActivationStore:
        return collect_activations(model, data.chunks[idx], root / folder, layers=layers, dtype=config.store_dtype,
                                   hook_template=config.hook, progress=progress,
                                   desc=f"collecting {short} ({label})")

    return collect(data.train_idx, "train", "train"), collect(data.held_idx, "heldout", "held-out")


def _train_layer(model, layer: int, train_store: ActivationStore, held_store: ActivationStore,
                 train_tokens: np.ndarray, config: TrainConfig, d_sae: int, epochs: float,
                 progress: bool = True) -> _TrainedLayer:
    """Train layer ``layer``'s SAE (more passes while under the target), set its metadata,
    explain its features; metrics without the spliced losses (they come for all layers at once)."""
    import torch

    hook = hook_from_template(config.hook, layer)
    t0 = time.perf_counter()
    acts = train_store.load(hook, config.ram_budget_bytes)  # [N_train, D]: in RAM, or memory-mapped
    held = held_store.load(hook, config.ram_budget_bytes)  # [N_held, D]
    sae, m, used, passes = _fit_to_target(acts, held, config, seed=config.seed + layer, d_sae=d_sae, epochs=epochs,
                                          progress=progress)
    train_seconds = time.perf_counter() - t0
    meta = sae.cfg.metadata
    meta.hook_name = hook
    meta.model_name = model.cfg.model_name
    meta.context_size = config.context_length
    meta.prepend_bos = True
    t1 = time.perf_counter()
    explanations = local_explanations(model, sae, torch.from_numpy(acts), train_tokens,
                                      segments=train_store.index[:, 0])  # contexts stay inside a chunk
    m.update(
        n_train_tokens=int(len(acts)),
        n_heldout_tokens=int(len(held)),
        n_train_samples=int(used * len(acts)),
        epochs=used,
        passes=passes,
        activations_in_ram=not isinstance(acts, np.memmap),
        train_seconds=round(train_seconds, 2),
        explain_seconds=round(time.perf_counter() - t1, 2),
    )
    log.info("%s: EV %.3f  L0 %.1f  dead %.1f%%  epochs %g (%d pass%s)  train %.1fs", layer,
             m["explained_variance"], m["l0"], 100 * m["dead_fraction"], used, passes, "es" * (passes > 1),
             train_seconds)
    return _TrainedLayer(sae, m, explanations)


def _fit_to_target(acts: Any, held: Any, config: TrainConfig, *, seed: int, d_sae: int | None = None,
                   epochs: float | None = None, progress: bool = True) -> tuple["SAE", dict[str, Any], float, int]:
    """Train an SAE of width ``d_sae`` (default ``config.d_sae``) on ``acts`` (``[N, d_in]``) for ``epochs``
    passes (default ``config.epochs``), evaluate on ``held``;
    late layers are harder, so while the held-out explained variance misses the target,
    train again from scratch with one pass more (up to ``config.max_epochs``).

    Returns:
        ``(sae, metrics, epochs, passes)``: the SAE with the best held-out explained
        variance, its metrics and epochs, and how many SAEs were trained.
    """
    best: tuple[Any, dict[str, Any], float] | None = None
    ep, passes = config.epochs if epochs is None else epochs, 0
    while True:
        cand = train_sae(
            acts, d_sae=d_sae or config.d_sae, k=config.k, architecture=config.architecture, n_samples=int(ep * len(acts)),
            batch_size=config.batch_size, lr=config.lr, seed=seed,
            dead_feature_window=config.dead_feature_window, init=config.init, progress=progress,
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
                      "seed", "store_dtype", "hook", "expansion_factor")


def _assemble(model, config: TrainConfig, data: _Chunks, trained: dict[int, _TrainedLayer], *,
              n_loss_tokens: int, timings: dict[str, float], d_sae: int) -> "SAEBank":
    """The :class:`SAEBank` of the trained layers, with ``metadata["training"]``."""
    from trajectory.saes.bank import BankEntry, SAEBank

    entries = {
        layer: BankEntry(layer=layer, sae=t.sae, hook_name=hook_from_template(config.hook, layer),
                         source=f"trained:{data.corpus_name}", metrics=t.metrics, explanations=t.explanations)
        for layer, t in trained.items()
    }
    settings = {**config.to_dict(), "d_sae": d_sae}
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

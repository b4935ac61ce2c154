"""SAEs trained on any activation store folder (``trajectory train --activations``).

The store may come from :func:`~trajectory.training.store.collect_activations` (model
hooks) or from any other producer of the same format (LoRA ``lora_A`` outputs). There is
no model here, so the held-out metrics are reconstruction ones (L0, explained variance,
dead fraction); spliced losses belong to whoever can run the model (for LoRA stores:
:func:`trajectory.training.lora_collect.lora_spliced_losses`).

Output folder (written under a temporary name, renamed into place when complete)::

    <hook>/cfg.json, <hook>/sae_weights.safetensors    one sae-lens folder per hook
                                                       (``SAE.load_from_disk``), dots of
                                                       the hook name kept, other
                                                       characters replaced by ``_``
    metrics.json                                       {"store", "settings", "saes": {hook:
                                                       {"folder", "d_in", "d_sae", metrics}}}

Held-out rows: the store's last chunks (rows are in chunk order), at least
``config.n_heldout_tokens`` rows and at most a fifth of the store; the rest trains.
Both are contiguous slices, so a memory-mapped store is never copied whole.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from trajectory.training.config import TrainConfig
from trajectory.training.store import ActivationStore

if TYPE_CHECKING:  # pragma: no cover
    from sae_lens import SAE

__all__ = ["StoreTrainResult", "heldout_start", "train_on_store"]

log = logging.getLogger(__name__)


@dataclass
class StoreTrainResult:
    """What :func:`train_on_store` made: per hook the SAE and its metrics, and the
    output folder (``None`` when nothing was written)."""

    saes: dict[str, "SAE"]
    metrics: dict[str, dict[str, Any]]
    out: Path | None
    store: ActivationStore


def heldout_start(store: ActivationStore, n_heldout: int) -> int:
    """First held-out row: the trailing chunks holding at least ``n_heldout`` rows (at most
    ``N // 5``, at least one row), cut at a chunk boundary when the store has an index."""
    n = store.n_tokens
    if n < 2:
        raise ValueError(f"activation store {store.folder} has {n} row(s); at least 2 are needed to train and evaluate")
    start = n - min(max(int(n_heldout), 1), max(n // 5, 1))
    index_file = store.folder / "index.npy"
    if index_file.is_file():
        chunk = np.load(index_file, mmap_mode="r")[:, 0]
        s = start
        while s > 0 and chunk[s - 1] == chunk[s]:
            s -= 1
        if s > 0 and n - s <= n // 2:  # whole chunks held out, unless that takes over half
            start = s
    return start


def train_on_store(
    store: ActivationStore | str | os.PathLike,
    config: TrainConfig | None = None,
    out: str | os.PathLike | None = None,
    *,
    hooks: Sequence[str] | None = None,
    d_in: int | None = None,
    progress: bool = True,
) -> StoreTrainResult:
    """Train one SAE per hook of an activation store.

    Args:
        store: an :class:`ActivationStore` or its folder.
        config: settings (``d_sae`` or ``expansion_factor``, ``k``, ``architecture``,
            ``epochs``, ``lr``, ``batch_size``, ``seed``, ``ram_budget_bytes``,
            ``n_heldout_tokens``; ``hook`` and the corpus settings do not apply).
        out: output folder (see the module docstring); ``None``: write nothing.
        hooks: hooks of the store to train on (default: all).
        d_in: when given, the width the SAEs must read: a store of another width is
            refused (e.g. activations of another hook or adapter).
        progress: sae-lens's training progress bar.

    Returns:
        :class:`StoreTrainResult`; metrics per hook: ``l0``, ``explained_variance``,
        ``dead_fraction`` on the held-out rows, ``n_train_tokens``,
        ``n_heldout_tokens``, ``epochs``, ``passes``, ``activations_in_ram``,
        ``train_seconds``, ``tokens_per_second`` (training samples seen per second).

    Raises:
        ValueError / FileNotFoundError: not a store, a manifest that does not match its
            files, a wrong width, unknown hooks, ``k`` not under the SAE width — before
            anything is written.
    """
    from trajectory.training.train import _fit_to_target

    config = TrainConfig() if config is None else config
    store = store if isinstance(store, ActivationStore) else ActivationStore.open(store)
    if d_in is not None:
        store.check_width(d_in)
    hooks = list(store.hooks) if hooks is None else [str(h) for h in hooks]
    unknown = [h for h in hooks if h not in store.hooks]
    if unknown:
        raise ValueError(f"hook(s) {unknown} are not in the activation store {store.folder}; it has {store.hooks}")
    d_sae = config.sae_width(store.width)
    if out is not None:
        from trajectory.io import check_output_dir

        out = check_output_dir(out, ["metrics.json"], what="SAE output folder")
    cut = heldout_start(store, config.n_heldout_tokens)
    saes, metrics = {}, {}
    for i, hook in enumerate(hooks):
        acts = store.load(hook, config.ram_budget_bytes)  # [N, D], in RAM or memory-mapped
        t0 = time.perf_counter()
        sae, m, used, passes = _fit_to_target(acts[:cut], acts[cut:], config, seed=config.seed + i, d_sae=d_sae,
                                              progress=progress)
        seconds = time.perf_counter() - t0
        seen = sum(int((config.epochs + p) * cut) for p in range(passes))  # samples of every pass
        sae.cfg.metadata.hook_name = hook
        m.update(n_train_tokens=cut, n_heldout_tokens=store.n_tokens - cut, epochs=used, passes=passes,
                 activations_in_ram=not isinstance(acts, np.memmap), train_seconds=round(seconds, 2),
                 tokens_per_second=round(seen / max(seconds, 1e-9), 1))
        log.info("%s: EV %.3f  L0 %.1f  dead %.1f%%  %.0f tokens/s", hook, m["explained_variance"], m["l0"],
                 100 * m["dead_fraction"], m["tokens_per_second"])
        saes[hook], metrics[hook] = sae, m
    if out is not None:
        _save(out, store, config, saes, metrics, d_sae)
    return StoreTrainResult(saes, metrics, out, store)


def sae_folder_name(hook: str) -> str:
    """File-system-safe folder name of ``hook`` (``blocks.6.hook_mlp_out`` stays as it is)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", hook).strip(".") or "sae"


def _save(out: Path, store: ActivationStore, config: TrainConfig, saes: dict, metrics: dict, d_sae: int) -> None:
    """Every SAE as a sae-lens folder and ``metrics.json``, swapped into ``out`` when complete."""
    from trajectory.io import jsonable, provenance
    from trajectory.saes.bank_format import atomic_folder

    names = {hook: sae_folder_name(hook) for hook in saes}
    if len(set(names.values())) != len(names):
        raise ValueError(f"hooks {sorted(saes)} give clashing folder names {sorted(names.values())}")
    doc = {
        "store": {"folder": str(Path(store.folder).resolve()), "hooks": store.hooks, "n_tokens": store.n_tokens,
                  "d_model": store.d_model, "dtype": store.dtype},
        "settings": {**config.to_dict(), "d_sae": d_sae},
        "saes": {hook: {"folder": names[hook], "d_in": store.width, "d_sae": d_sae, **metrics[hook]}
                 for hook in saes},
        "provenance": provenance(),
    }
    with atomic_folder(Path(out)) as tmp:
        for hook, sae in saes.items():
            sae.save_model(str(tmp / names[hook]))
        (tmp / "metrics.json").write_text(json.dumps(jsonable(doc), indent=1))

"""A disk store of model activations: one memory-mapped array per hook, BOS left out.

:func:`collect_activations` runs the model once over a batch of chunks and writes the
activations of every requested hook (``blocks.{L}.hook_resid_post`` by default) for
every non-BOS position. The forward pass stops after the last block needed.

Folder layout (all little-endian, C order)::

    meta.json            {"format_version": 1, "hooks": [...], "n_tokens": N, "d_model": D, "dtype": "float32", ...}
    tokens.npy           int32   [N]      token id at each stored position
    index.npy            int32   [N, 2]   (chunk, position) of each stored row
    act_<i>.bin          dtype   [N, D]   raw memmap of hook ``hooks[i]``

``float32`` is the default (Gemma 3 270M's residual stream reaches ~62000, at the edge
of float16's range). ``float16`` halves the disk and page-cache footprint; values beyond
its range (±65504) then raise an error that names the fix (``dtype="float32"``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from trajectory.hooks import RESID_POST_TEMPLATE, hook_from_template
from trajectory.io import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformer_lens import HookedTransformer

#: Version of the folder layout, written to ``meta.json`` as ``format_version``.
FORMAT_VERSION = 1
_FP16_MAX = 65504.0


@dataclass
class ActivationStore:
    """Activations of some hooks on the non-BOS positions of a set of chunks.

    Attributes:
        folder: where the files live.
        hooks: hook names, in file order.
        n_tokens: stored positions ``N``.
        d_model: width ``D`` of each activation.
        dtype: ``"float16"`` or ``"float32"``.
    """

    folder: Path
    hooks: list[str]
    n_tokens: int
    d_model: int
    dtype: str

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "ActivationStore":
        """Open a store written by :func:`collect_activations`."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{folder} is not an activation store (no meta.json); collect it first") from None
        return cls(folder, list(meta["hooks"]), int(meta["n_tokens"]), int(meta["d_model"]), str(meta["dtype"]))

    def activations(self, hook: str) -> np.memmap:
        """Read-only memmap ``[N, D]`` of one hook's activations."""
        if hook not in self.hooks:
            raise KeyError(f"hook {hook!r} is not in this store (it has {self.hooks})")
        i = self.hooks.index(hook)
        return np.memmap(self.folder / f"act_{i}.bin", dtype=self.dtype, mode="r", shape=(self.n_tokens, self.d_model))

    @property
    def tokens(self) -> np.ndarray:
        """Token id of each stored row, ``[N]`` int32."""
        return np.load(self.folder / "tokens.npy")

    @property
    def index(self) -> np.ndarray:
        """``(chunk, position)`` of each stored row, ``[N, 2]`` int32."""
        return np.load(self.folder / "index.npy")


def collect_activations(
    model: "HookedTransformer",
    chunks: "torch.Tensor",
    folder: str | os.PathLike,
    *,
    layers: Sequence[int],
    hook_template: str = RESID_POST_TEMPLATE,
    batch_size: int = 8,
    dtype: str = "float32",
    progress: bool = True,
    desc: str = "collecting activations",
) -> ActivationStore:
    """Run ``model`` over ``chunks`` once and store the hooks' activations on disk.

    Every requested layer's hook is read in the same forward pass; the pass stops after
    the last block needed (``stop_at_layer``). Positions holding the BOS token are not
    stored (its residual is huge and never an SAE input here).

    Args:
        model: a TransformerLens ``HookedTransformer``.
        chunks: ``[n_chunks, ctx]`` token ids (e.g. from :func:`trajectory.training.corpus.tokenize_chunks`).
        folder: created (or overwritten) to hold the store.
        layers: block indices whose hook is collected.
        hook_template: hook name with ``{layer}``.
        batch_size: chunks per forward pass.
        dtype: ``"float16"`` or ``"float32"`` on disk.
        progress: show a tqdm bar.

    Returns:
        The :class:`ActivationStore` (rows in chunk order, then position order).
    """
    import torch

    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    layers = [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{model.cfg.n_layers - 1}")
    hooks = [hook_from_template(hook_template, layer) for layer in layers]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chunks = chunks.to(torch.long)
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else None
    keep = chunks != bos if bos is not None else torch.ones_like(chunks, dtype=torch.bool)  # [n_chunks, ctx]
    n_tokens, d_model = int(keep.sum()), int(model.cfg.d_model)
    maps = [
        np.memmap(folder / f"act_{i}.bin", dtype=dtype, mode="w+", shape=(max(n_tokens, 1), d_model))
        for i in range(len(hooks))
    ]
    _fill(model, chunks, keep, hooks, maps, stop_at_layer=max(layers) + 1, batch_size=batch_size,
          progress=progress, desc=desc)
    for mm in maps:
        mm.flush()
    with atomic_write(folder / "tokens.npy", "wb") as fh:
        np.save(fh, chunks[keep].to(torch.int32).numpy())
    with atomic_write(folder / "index.npy", "wb") as fh:
        np.save(fh, keep.nonzero().to(torch.int32).numpy())
    # meta.json comes last: a folder with it holds a complete store
    meta = {"format_version": FORMAT_VERSION, "hooks": hooks, "layers": layers, "n_tokens": n_tokens,
            "d_model": d_model, "dtype": dtype, "n_chunks": int(len(chunks)), "context_length": int(chunks.shape[1])}
    with atomic_write(folder / "meta.json") as fh:
        json.dump(meta, fh, indent=1)
    return ActivationStore(folder, hooks, n_tokens, d_model, dtype)


def _fill(model, chunks, keep, hooks, maps, *, stop_at_layer, batch_size, progress, desc) -> None:
    """Forward passes over ``chunks`` (``[n_chunks, ctx]``) in batches; the ``keep``
    positions of each hook's activations go, in order, into its memmap (``[N, D]``)."""
    import torch
    from tqdm.auto import tqdm

    names = set(hooks)
    device = next(model.parameters()).device
    row = 0
    bar = tqdm(total=len(chunks), desc=desc, unit="chunk", disable=not progress)
    with torch.no_grad():
        for start in range(0, len(chunks), batch_size):
            batch = chunks[start : start + batch_size]
            mask = keep[start : start + batch_size]
            _, cache = model.run_with_cache(
                batch.to(device), names_filter=lambda n: n in names, stop_at_layer=stop_at_layer, return_type=None
            )
            m = int(mask.sum())
            for hook, mm in zip(hooks, maps):
                acts = cache[hook][mask.to(cache[hook].device)].float().cpu()  # [m, D]
                _check_range(hook, acts, mm.dtype)
                mm[row : row + m] = acts.numpy().astype(mm.dtype, copy=False)
            row += m
            del cache
            bar.update(len(batch))
    bar.close()


def _check_range(hook: str, acts: "torch.Tensor", dtype: np.dtype) -> None:
    """Refuse float16 storage of values beyond its range (they would become inf)."""
    if dtype == np.float16 and acts.abs().max() > _FP16_MAX:
        raise OverflowError(
            f"{hook} has values beyond float16's range ({float(acts.abs().max()):.0f}); "
            "collect with dtype='float32'"
        )

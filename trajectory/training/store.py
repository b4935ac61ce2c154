"""A disk store of activations: one memory-mapped ``[N, D]`` array per hook, BOS left out.

:func:`collect_activations` runs a model once over a batch of chunks and writes the
activations of every requested hook (``blocks.{L}.hook_resid_post`` by default) for
every non-BOS position; the forward pass stops after the last block needed. Any other
producer (e.g. LoRA ``lora_A`` outputs) writes the same format with :func:`create_store`
and :meth:`StoreWriter.write`; :func:`~trajectory.training.from_store.train_on_store`
trains SAEs on any store.

Folder layout (all little-endian, C order)::

    meta.json     {"format_version": 1, "hooks": [...], "n_tokens": N, "d_model": D,
                   "dtype": "float32" | "float16", ...optional fields}
    tokens.npy    int32   [N]      token id at each stored row
    index.npy     int32   [N, 2]   (chunk, position) of each stored row
    act_<i>.bin   dtype   [N, D]   raw memmap of hook ``hooks[i]`` (no header)

``d_model`` is the row width ``D`` of every hook's file (the residual width for
residual-stream hooks, ``n_heads * d_head`` for ``attn.hook_z``, the number of columns
for other producers); the name is kept for stores written before other hooks existed.
Optional fields: ``layers``, ``n_chunks``, ``context_length`` (written by
:func:`collect_activations`), ``columns`` (one name per column, ``len == D``), and any
other JSON a producer adds (kept in :attr:`ActivationStore.meta`). ``meta.json`` is
written last: a folder that has it holds a complete store.

``float32`` is the default (Gemma 3 270M's residual stream reaches ~62000, at the edge
of float16's range). ``float16`` halves the disk and page-cache footprint; values beyond
its range (±65504) then raise an error that names the fix (``dtype="float32"``).

Reading is memory-mapped: :meth:`ActivationStore.activations` maps a file without
reading it; :meth:`ActivationStore.load` copies it into RAM only when it fits a budget.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from trajectory.hooks import RESID_POST_TEMPLATE, hook_from_template
from trajectory.io import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformer_lens import HookedTransformer

__all__ = ["ActivationStore", "StoreWriter", "collect_activations", "create_store"]

#: Version of the folder layout, written to ``meta.json`` as ``format_version``.
FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
_FP16_MAX = 65504.0


@dataclass
class ActivationStore:
    """Activations of some hooks on the non-BOS positions of a set of chunks.

    Attributes:
        folder: where the files live.
        hooks: hook (or column group) names, in file order.
        n_tokens: stored rows ``N``.
        d_model: width ``D`` of each row (see the module docstring).
        dtype: ``"float16"`` or ``"float32"``.
        meta: the whole ``meta.json`` (optional fields included).
    """

    folder: Path
    hooks: list[str]
    n_tokens: int
    d_model: int
    dtype: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "ActivationStore":
        """Open a store; ``ValueError`` when its manifest and files disagree."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{folder} is not an activation store (no meta.json); collect it first") from None
        missing = [key for key in ("hooks", "n_tokens", "d_model", "dtype") if key not in meta]
        if missing:
            raise ValueError(f"{folder}/meta.json lacks {missing}; it is not an activation store manifest")
        store = cls(folder, list(meta["hooks"]), int(meta["n_tokens"]), int(meta["d_model"]), str(meta["dtype"]), meta)
        store.check()
        return store

    @property
    def width(self) -> int:
        """Row width ``D`` (same as :attr:`d_model`)."""
        return self.d_model

    @property
    def columns(self) -> list[str] | None:
        """One name per column when the producer wrote them (``meta["columns"]``)."""
        return self.meta.get("columns")

    def check(self) -> None:
        """``ValueError`` naming the file when the manifest does not describe the files."""
        where = f"activation store {self.folder}"
        if self.dtype not in DTYPES:
            raise ValueError(f"{where}: dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.columns is not None and len(self.columns) != self.d_model:
            raise ValueError(f"{where}: meta.json names {len(self.columns)} columns but rows are "
                             f"{self.d_model} wide (d_model); rewrite the store")
        want = max(self.n_tokens, 1) * self.d_model * np.dtype(self.dtype).itemsize
        for i, hook in enumerate(self.hooks):
            path = self.folder / f"act_{i}.bin"
            if not path.is_file():
                raise ValueError(f"{where}: {path.name} ({hook}) is missing; rewrite the store")
            size = path.stat().st_size
            if size != want:
                raise ValueError(
                    f"{where}: {path.name} ({hook}) has {size} bytes but meta.json says {self.n_tokens} rows x "
                    f"{self.d_model} x {self.dtype} = {want}; the manifest does not match the data, rewrite the store")

    def check_width(self, d_in: int, what: str = "the SAE") -> None:
        """``ValueError`` unless rows are ``d_in`` wide (the input width of ``what``)."""
        if self.d_model != int(d_in):
            raise ValueError(f"activation store {self.folder} has rows of width {self.d_model} but {what} reads "
                             f"d_in={int(d_in)}; use a store of that hook or an SAE of width {self.d_model}")

    def activations(self, hook: str) -> np.memmap:
        """Read-only memmap ``[N, D]`` of one hook's activations (nothing read yet)."""
        return np.memmap(self._file(hook), dtype=self.dtype, mode="r", shape=(self.n_tokens, self.d_model))

    def load(self, hook: str, ram_budget_bytes: int | None = None) -> np.ndarray:
        """One hook's activations ``[N, D]``: a copy in RAM when they fit ``ram_budget_bytes``
        (``None``: always), else a copy-on-write memmap whose pages the OS reads on use
        and may drop again (writable, so ``torch.from_numpy`` shares it without a copy)."""
        mapped = np.memmap(self._file(hook), dtype=self.dtype, mode="c", shape=(self.n_tokens, self.d_model))
        if ram_budget_bytes is None or mapped.nbytes <= ram_budget_bytes:
            return np.array(mapped)
        return mapped

    def _file(self, hook: str) -> Path:
        if hook not in self.hooks:
            raise KeyError(f"hook {hook!r} is not in this store (it has {self.hooks})")
        return self.folder / f"act_{self.hooks.index(hook)}.bin"

    @property
    def tokens(self) -> np.ndarray:
        """Token id of each stored row, ``[N]`` int32."""
        return np.load(self.folder / "tokens.npy")

    @property
    def index(self) -> np.ndarray:
        """``(chunk, position)`` of each stored row, ``[N, 2]`` int32."""
        return np.load(self.folder / "index.npy")


class StoreWriter:
    """Fills a store row block by row block; :meth:`close` writes ``meta.json`` last.

    Made by :func:`create_store`; every hook gets the same rows in the same order.
    """

    def __init__(self, folder: Path, hooks: list[str], n_tokens: int, width: int, dtype: str,
                 extra: Mapping[str, Any]):
        self.folder, self.hooks, self.n_tokens, self.width, self.dtype = folder, hooks, n_tokens, width, dtype
        self.extra = dict(extra)
        self.row = 0
        self._maps = [np.memmap(folder / f"act_{i}.bin", dtype=dtype, mode="w+", shape=(max(n_tokens, 1), width))
                      for i in range(len(hooks))]
        self._tokens = np.zeros(n_tokens, dtype=np.int32)
        self._index = np.zeros((n_tokens, 2), dtype=np.int32)

    def write(self, acts: Mapping[str, Any], tokens: Any, index: Any) -> None:
        """Append ``m`` rows: ``acts[hook]`` ``[m, D]`` (numpy or torch) for every hook,
        ``tokens`` ``[m]`` token ids, ``index`` ``[m, 2]`` (chunk, position)."""
        tokens, index = np.asarray(tokens), np.asarray(index).reshape(-1, 2)
        m = len(tokens)
        if self.row + m > self.n_tokens:
            raise ValueError(f"store {self.folder} was created for {self.n_tokens} rows; writing {self.row + m}")
        if set(acts) != set(self.hooks):
            raise ValueError(f"write() needs every hook of the store {self.hooks}, got {sorted(acts)}")
        for hook, mm in zip(self.hooks, self._maps):
            a = acts[hook]
            a = a.detach().float().cpu().numpy() if hasattr(a, "detach") else np.asarray(a, dtype=np.float32)
            if a.shape != (m, self.width):
                raise ValueError(f"{hook}: rows of shape {a.shape}, expected {(m, self.width)} (store width {self.width})")
            if mm.dtype == np.float16 and m and np.abs(a).max() > _FP16_MAX:
                raise OverflowError(f"{hook} has values beyond float16's range ({float(np.abs(a).max()):.0f}); "
                                    "collect with dtype='float32'")
            mm[self.row : self.row + m] = a.astype(mm.dtype, copy=False)
        self._tokens[self.row : self.row + m] = tokens
        self._index[self.row : self.row + m] = index
        self.row += m

    def close(self) -> ActivationStore:
        """Flush, check that every row was written, write ``tokens.npy``, ``index.npy``, ``meta.json``."""
        if self.row != self.n_tokens:
            raise ValueError(f"store {self.folder}: {self.row} of {self.n_tokens} rows written")
        for mm in self._maps:
            mm.flush()
        with atomic_write(self.folder / "tokens.npy", "wb") as fh:
            np.save(fh, self._tokens)
        with atomic_write(self.folder / "index.npy", "wb") as fh:
            np.save(fh, self._index)
        meta = {"format_version": FORMAT_VERSION, "hooks": self.hooks, "n_tokens": self.n_tokens,
                "d_model": self.width, "dtype": self.dtype, **self.extra}
        with atomic_write(self.folder / "meta.json") as fh:
            json.dump(meta, fh, indent=1)
        return ActivationStore(self.folder, list(self.hooks), self.n_tokens, self.width, self.dtype, meta)


def create_store(folder: str | os.PathLike, hooks: Sequence[str], n_tokens: int, width: int, *,
                 dtype: str = "float32", extra: Mapping[str, Any] | None = None) -> StoreWriter:
    """Start a store of ``n_tokens`` rows of ``width`` columns per hook at ``folder``.

    Any ``meta.json`` already there is removed first, so the folder opens as a store
    again only once :meth:`StoreWriter.close` has run. ``extra``: optional JSON fields
    of ``meta.json`` (e.g. ``columns``: one name per column).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    hooks = [str(h) for h in hooks]
    if not hooks or len(set(hooks)) != len(hooks):
        raise ValueError(f"a store needs distinct hook names, got {hooks}")
    if int(width) <= 0 or int(n_tokens) < 0:
        raise ValueError(f"a store needs width > 0 and n_tokens >= 0, got width={width}, n_tokens={n_tokens}")
    columns = (extra or {}).get("columns")
    if columns is not None and len(columns) != int(width):
        raise ValueError(f"{len(columns)} column names for rows of width {width}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)
    return StoreWriter(folder, hooks, int(n_tokens), int(width), dtype, extra or {})


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
    stored (its residual is huge and never an SAE input here). Activations with more
    than one trailing dimension (``attn.hook_z``: ``[pos, n_heads, d_head]``) are stored
    flattened (``n_heads * d_head``, head-major).

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

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    layers = [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{model.cfg.n_layers - 1}")
    hooks = [hook_from_template(hook_template, layer) for layer in layers]
    width = hook_width(model, hooks)
    chunks = chunks.to(torch.long)
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else None
    keep = chunks != bos if bos is not None else torch.ones_like(chunks, dtype=torch.bool)  # [n_chunks, ctx]
    extra = {"layers": layers, "n_chunks": int(len(chunks)), "context_length": int(chunks.shape[1])}
    writer = create_store(folder, hooks, int(keep.sum()), width, dtype=dtype, extra=extra)
    _fill(model, chunks, keep, writer, stop_at_layer=max(layers) + 1, batch_size=batch_size,
          progress=progress, desc=desc)
    return writer.close()


def hook_width(model: "HookedTransformer", hooks: Sequence[str]) -> int:
    """Width of one position's activation at ``hooks`` (all the same; ``attn.hook_z``:
    ``n_heads * d_head``); ``ValueError`` listing the valid choices when a hook is not
    in the model."""
    from trajectory.saes.formats import hook_width as one_width
    from trajectory.training.config import HOOK_TEMPLATES

    missing = [h for h in hooks if h not in model.hook_dict]
    if missing:
        valid = [t for t in HOOK_TEMPLATES if t.format(layer=0) in model.hook_dict]
        raise ValueError(f"hook(s) {missing} are not in the model {model.cfg.model_name}; valid choices: {valid}")
    widths = {h: one_width(model, h) for h in hooks}
    if len(set(widths.values())) != 1:
        raise ValueError(f"one store needs hooks of one width, got {widths}")
    return next(iter(widths.values()))


def _fill(model, chunks, keep, writer: StoreWriter, *, stop_at_layer, batch_size, progress, desc) -> None:
    """Forward passes over ``chunks`` (``[n_chunks, ctx]``) in batches; the ``keep``
    positions of each hook's activations go, in order, into the store."""
    import torch
    from tqdm.auto import tqdm

    names = set(writer.hooks)
    device = next(model.parameters()).device
    bar = tqdm(total=len(chunks), desc=desc, unit="chunk", disable=not progress)
    with torch.no_grad():
        for start in range(0, len(chunks), batch_size):
            batch = chunks[start : start + batch_size]
            mask = keep[start : start + batch_size]
            _, cache = model.run_with_cache(
                batch.to(device), names_filter=lambda n: n in names, stop_at_layer=stop_at_layer, return_type=None
            )
            rows = {hook: cache[hook][mask.to(cache[hook].device)].reshape(int(mask.sum()), -1)  # [m, D]
                    for hook in writer.hooks}
            index = mask.nonzero()
            index[:, 0] += start
            writer.write(rows, batch[mask], index)
            del cache
            bar.update(len(batch))
    bar.close()

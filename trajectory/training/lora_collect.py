"""LoRA adapters' activations: collect them into an activation store, splice an SAE into them.

A LoRA-adapted projection computes ``W x + scaling · B (A x)``; ``A x`` (the output of
its ``lora_A`` module, ``rank`` numbers per token) is the adapter's activation. For an
adapter on several projections of several layers, :func:`collect` writes, per token,
all of them side by side into an :class:`~trajectory.training.store.ActivationStore`
(written through :func:`~trajectory.training.store.create_store`) with one hook, :data:`LORA_HOOK`, so ``trajectory train --activations`` can train an
SAE on it. Columns are ordered by layer, then by the module's place in the block
(``q k v o gate up down`` for Gemma), then by rank index; ``meta.json`` names every
column, e.g. ``"layers.3.self_attn.q_proj[0]"``::

    meta.json   {"format_version": 1, "hooks": ["lora_A"], "n_tokens": N, "d_model": C,
                 "dtype": "float32", "n_chunks", "context_length",
                 "kind": "lora", "columns": [C names], "modules": [{"name", "rank", "start"}, ...],
                 "adapter", "base_model", "corpus", "seconds", "tokens_per_second"}
    tokens.npy  int32 [N];  index.npy  int32 [N, 2];  act_0.bin  dtype [N, C]

BOS positions are left out, as in every store. Any ``peft`` LoRA adapter folder made
on the same base model works; one made for another model is refused before loading,
with the module and shapes that differ.

:func:`lora_spliced_losses` reads an SAE trained on such a store back into the model:
cross-entropy with every ``lora_A`` output replaced by the SAE's reconstruction, beside
the adapter-on and adapter-off losses.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from trajectory.io import check_output_dir
from trajectory.training.lora import BaseModel, corpus_chunks, load_base_model
from trajectory.training.store import ActivationStore, StoreWriter, create_store

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

#: The hook name of a LoRA store's one activation array.
LORA_HOOK = "lora_A"
_PEFT_PREFIX = "base_model.model."


@dataclass
class LoraSite:
    """One adapted module: ``name`` (relative to the decoder, e.g. ``layers.3.self_attn.q_proj``),
    its ``lora_A`` linear layer, its ``rank`` and the first column it fills (``start``)."""

    name: str
    lora_A: Any
    rank: int
    start: int

    @property
    def columns(self) -> list[str]:
        return [f"{self.name}[{i}]" for i in range(self.rank)]


@dataclass
class CollectConfig:
    """Options of :func:`collect`.

    Attributes:
        adapter: a ``peft`` LoRA adapter folder (``adapter_config.json`` + weights).
        out: store folder (default: ``<adapter>/activations``).
        base_model: preset, local Hugging Face folder or hub name of the adapter's base.
        corpus: corpus spec (``None``: the default corpus).
        context_length: tokens per chunk, BOS included.
        batch_size: chunks per forward pass.
        max_tokens: corpus tokens to use (``None``: all).
        dtype: ``"float32"`` or ``"float16"`` on disk.
        device: ``"cpu"``/``"cuda"``; default CUDA when available.
        progress: show a tqdm bar.
    """

    adapter: str | os.PathLike
    out: str | os.PathLike | None = None
    base_model: str = "offline"
    corpus: str | None = None
    context_length: int = 64
    batch_size: int = 8
    max_tokens: int | None = None
    dtype: str = "float32"
    device: str | None = None
    progress: bool = True


def _adapter_weights(folder: Path) -> dict[str, "torch.Tensor"]:
    import torch

    if (folder / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(folder / "adapter_model.safetensors")
    if (folder / "adapter_model.bin").is_file():
        return torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder} has adapter_config.json but no adapter_model.safetensors "
                            "(or .bin); save the adapter with peft's save_pretrained")


def check_adapter(folder: str | os.PathLike, base: BaseModel) -> dict:
    """Refuse, before loading, an adapter folder that is not a LoRA adapter for ``base``.

    Every ``lora_A`` / ``lora_B`` weight must belong to a linear module of ``base`` with
    matching shapes (``lora_A [r, in_features]``, ``lora_B [out_features, r]``).

    Returns:
        The adapter's ``adapter_config.json``.

    Raises:
        FileNotFoundError: no adapter there. ValueError: not LoRA, or made for another model
            (names both models and the first module that differs).
    """
    folder = Path(folder)
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder} is not a peft adapter folder (no adapter_config.json); pass the folder "
                                "written by `trajectory lora finetune` or peft's save_pretrained") from None
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise ValueError(f"{folder} holds a {cfg.get('peft_type')!r} adapter; only LoRA adapters have lora_A activations")
    theirs = cfg.get("base_model_name_or_path") or "an unnamed model"
    here = base.model_name if base.model_name == base.source else f"{base.model_name} ({base.source})"
    which = f"the adapter in {folder} was made for {theirs!r}, but the base model here is {here!r}"
    problems = []
    for key, weight in sorted(_adapter_weights(folder).items()):
        m = re.match(r"(.*)\.lora_(A|B)(?:\.[^.]+)?\.weight$", key)
        if not m:
            continue
        name = m.group(1).removeprefix(_PEFT_PREFIX)
        try:
            module = base.model.get_submodule(name)
        except AttributeError:
            problems.append(f"module {name} does not exist in the base model")
            continue
        if not hasattr(module, "in_features"):
            problems.append(f"module {name} is a {type(module).__name__}, not a linear layer (collect reads linear LoRA only)")
            continue
        want = (weight.shape[0], module.in_features) if m.group(2) == "A" else (module.out_features, weight.shape[1])
        if tuple(weight.shape) != want:
            problems.append(f"{name}.lora_{m.group(2)} has shape {list(weight.shape)}, the base model's "
                            f"{name} needs {list(want)} (in_features {module.in_features}, out_features {module.out_features})")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(f"{which}: {'; '.join(dict.fromkeys(problems[:3]))}{more}. Pass the adapter's own base model (--preset / base_model), "
                         "or an adapter trained on this one")
    return cfg


def load_adapter(folder: str | os.PathLike, base: BaseModel):
    """``peft.PeftModel`` of ``base`` with the adapter in ``folder`` (eval mode, checked first)."""
    from peft import PeftModel

    check_adapter(folder, base)
    try:
        model = PeftModel.from_pretrained(base.model, str(folder), is_trainable=False)
    except Exception as err:  # noqa: BLE001 - shapes were checked; anything else gets context
        raise ValueError(f"peft could not put the adapter in {folder} on {base.model_name!r}: "
                         f"{type(err).__name__}: {' '.join(str(err).split())[:300]}") from err
    return model.eval()


def _layer_of(name: str) -> int:
    m = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else -1


def lora_sites(model) -> list[LoraSite]:
    """The adapted modules of a ``peft`` LoRA model, ordered by layer then place in the block.

    Names are relative to the decoder (``layers.3.mlp.down_proj``); ``start`` is the
    first column of the module in a collected row.
    """
    import torch

    adapter = model.active_adapter
    found = []
    for full, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, torch.nn.ModuleDict) and adapter in lora_a:
            name = full.removeprefix(_PEFT_PREFIX).removeprefix("model.")
            found.append((name, lora_a[adapter]))
    if not found:
        raise ValueError("the model has no LoRA modules (no lora_A); load a LoRA adapter first")
    order = sorted(range(len(found)), key=lambda i: (_layer_of(found[i][0]), i))
    sites, start = [], 0
    for i in order:
        name, lin = found[i]
        rank = int(lin.out_features)
        sites.append(LoraSite(name, lin, rank, start))
        start += rank
    return sites


@contextlib.contextmanager
def _hooked(sites: list[LoraSite], fn: Callable[[int, "torch.Tensor"], "torch.Tensor | None"]) -> Iterator[None]:
    """Forward hooks on every site's ``lora_A``: ``fn(site index, output [batch, pos, r])``;
    a returned tensor replaces the output."""
    handles = [s.lora_A.register_forward_hook(lambda _m, _i, out, i=i: fn(i, out)) for i, s in enumerate(sites)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def lora_activations(model, sites: list[LoraSite], input_ids: "torch.Tensor", *, full: bool = False) -> "torch.Tensor":
    """All ``lora_A`` outputs of one forward pass, side by side: ``[batch, pos, C]``
    (``C = Σ rank``, columns as in :func:`lora_sites`). ``full=False`` runs the decoder
    body only (no logits)."""
    import torch

    outs: dict[int, torch.Tensor] = {}

    def keep(i, out):
        outs[i] = out.detach()

    runner = model
    if not full:
        base = model.get_base_model()
        runner = base.get_decoder() if hasattr(base, "get_decoder") else base
    with torch.no_grad(), _hooked(sites, keep):
        runner(input_ids=input_ids)
    missing = [s.name for i, s in enumerate(sites) if i not in outs]
    if missing:
        raise ValueError(f"lora_A of {missing[:3]} did not run as a module (a LoRA variant such as DoRA "
                         "computes it otherwise); collect reads plain LoRA adapters only")
    return torch.cat([outs[i] for i in range(len(sites))], dim=-1)


def collect(config: CollectConfig) -> Path:
    """Run the adapted model over a corpus and store every token's ``lora_A`` outputs.

    Returns:
        The store folder (open it with :class:`~trajectory.training.store.ActivationStore`;
        its one hook is :data:`LORA_HOOK`, width ``Σ rank``).
    """

    if config.dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {config.dtype!r}")
    adapter = Path(config.adapter)
    out = check_output_dir(config.out or adapter / "activations", names=("meta.json",), what="store folder")
    started = time.time()
    base = load_base_model(config.base_model, config.device)
    model = load_adapter(adapter, base)
    sites = lora_sites(model)
    columns = [c for s in sites for c in s.columns]
    corpus_name, chunks = corpus_chunks(base.tokenizer, config.corpus, config.context_length, config.max_tokens)
    keep = chunks != base.tokenizer.bos_token_id  # [n_chunks, ctx]
    writer = create_store(out, [LORA_HOOK], int(keep.sum()), len(columns), dtype=config.dtype, extra={
        "n_chunks": int(len(chunks)), "context_length": int(chunks.shape[1]), "kind": "lora", "columns": columns,
        "modules": [{"name": s.name, "rank": s.rank, "start": s.start} for s in sites],
        "adapter": str(adapter), "base_model": base.model_name, "corpus": corpus_name})
    collect_started = time.time()
    _fill(model, sites, chunks, keep, writer, config)
    seconds = time.time() - collect_started
    writer.extra.update(seconds=round(seconds, 2), tokens_per_second=round(int(keep.numel()) / max(seconds, 1e-9), 1))
    store = writer.close()  # meta.json last
    log.info("collected %d tokens x %d LoRA columns in %.1f s (%.0f tokens/s, model load %.1f s) into %s",
             store.n_tokens, store.d_model, seconds, writer.extra["tokens_per_second"], collect_started - started, out)
    return out


def _fill(model, sites, chunks, keep, writer: StoreWriter, config: CollectConfig) -> None:
    """Batches of ``chunks`` ``[n, ctx]`` through the model; rows of kept positions ``[m, C]`` to ``writer``."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    bar = tqdm(total=len(chunks), desc="collecting LoRA activations", unit="chunk", disable=not config.progress)
    for start in range(0, len(chunks), config.batch_size):
        batch = chunks[start:start + config.batch_size]
        mask = keep[start:start + config.batch_size]
        acts = lora_activations(model, sites, batch.to(device))[mask.to(device)]  # [m, C]
        index = mask.nonzero()
        index[:, 0] += start
        writer.write({LORA_HOOK: acts}, batch[mask], index)
        bar.update(len(batch))
    bar.close()


def lora_spliced_losses(model, sae: Callable[["torch.Tensor"], "torch.Tensor"], chunks: "torch.Tensor",
                        *, batch_size: int = 8, bos_token_id: int | None = None) -> dict[str, float]:
    """Cross-entropy with the adapter's ``lora_A`` outputs replaced by an SAE's reconstruction.

    Per batch, a clean adapter-on pass gives every token's row of all ``lora_A`` outputs
    ``[batch, pos, C]`` (columns as :func:`collect` stores them); ``sae`` maps the rows
    ``[n, C]`` to reconstructions ``[n, C]`` (a sae-lens SAE's ``forward`` does); a second
    pass puts each module's slice of the reconstruction in place of its ``lora_A`` output.
    BOS positions keep their own outputs (no SAE saw them in training).

    Args:
        model: a ``peft`` LoRA model (e.g. from :func:`load_adapter`).
        sae: reconstruction function, ``[n, C] → [n, C]``.
        chunks: ``[n_chunks, ctx]`` token ids.
        bos_token_id: positions holding it are not spliced (``None``: splice all).

    Returns:
        ``{"adapter_on", "spliced", "adapter_off"}``: mean next-token cross-entropy
        (nats/token). ``spliced`` near ``adapter_on`` means the SAE keeps what the
        adapter does; near ``adapter_off``, that it loses it.
    """
    import torch

    from trajectory.training.lm_loss import causal_lm_loss
    from trajectory.training.lora import mean_loss

    sites = lora_sites(model)
    width = sum(s.rank for s in sites)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start:start + batch_size].to(device)
        acts = lora_activations(model, sites, batch)  # [b, pos, C]
        with torch.no_grad():
            recon = sae(acts.reshape(-1, width)).reshape(acts.shape).to(acts.dtype)
        if recon.shape != acts.shape:
            raise ValueError(f"the SAE maps {width} LoRA columns to {recon.shape[-1]}; train it on this adapter's store")
        if bos_token_id is not None:
            recon = torch.where((batch == bos_token_id)[..., None], acts, recon)

        def splice(i, _out, recon=recon):
            return recon[..., sites[i].start:sites[i].start + sites[i].rank]

        with torch.no_grad(), _hooked(sites, splice):
            n = batch.shape[0] * (batch.shape[1] - 1)
            total += float(causal_lm_loss(model, batch)) * n
            count += n
    on = mean_loss(model, chunks, batch_size)
    with model.disable_adapter():
        off = mean_loss(model, chunks, batch_size)
    return {"adapter_on": on, "spliced": total / max(count, 1), "adapter_off": off}


def open_lora_store(folder: str | os.PathLike) -> tuple[ActivationStore, dict]:
    """``(store, meta)`` of a store written by :func:`collect` (``meta["columns"]`` names the columns)."""
    store = ActivationStore.open(folder)
    meta = json.loads((Path(folder) / "meta.json").read_text())
    if meta.get("kind") != "lora":
        raise ValueError(f"{folder} is an activation store but not of LoRA activations (no kind='lora')")
    return store, meta

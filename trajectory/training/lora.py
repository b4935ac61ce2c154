"""LoRA fine-tuning of the base model with ``peft``, for SAEs on the adapters' activations.

:func:`finetune` trains a LoRA adapter on a text corpus and writes an adapter folder
that ``peft`` itself reads (``PeftModel.from_pretrained``). Its scalar activations —
the outputs of every ``lora_A`` module, ``rank`` numbers per adapted projection — are
what :func:`trajectory.training.lora_collect.collect` stores for SAE training: with a
rank-1 adapter on all seven projections of every layer, each token has one number per
(layer, projection), a small window onto what the fine-tune learned.

The base model is used in its Hugging Face ``transformers`` form (not TransformerLens):
``peft`` wraps ``nn.Linear`` modules by name. :func:`load_base_model` resolves a preset
(``offline`` reads the cached plain copy of the embedded Gemma 3 270M), a local folder
written by ``save_pretrained`` (model + tokenizer), or a hub name.

Adapter folder (``finetune``'s output)::

    adapter_config.json, adapter_model.safetensors   peft's own files (save_pretrained)
    loss_curve.json    {"step": [...], "loss": [...], "seconds": [wall s at each step's end],
                       "heldout_loss_before": x, "heldout_loss_after": y}
    loss_curve.png     training loss per step (and its running mean)
    manifest.json      written last: {"kind": "lora-finetune", "base_model", "rank", "alpha",
                       "targets", "steps", "seed", "corpus", "final_loss", "seconds", ...}

Projection short names (``--targets``): ``q k v o gate up down`` mean ``q_proj k_proj
v_proj o_proj gate_proj up_proj down_proj`` (Gemma, Llama, Mistral naming); any other
name is passed to ``peft`` as it is.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from trajectory.io import atomic_path, atomic_write, check_output_dir, provenance

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

#: Short projection names accepted in ``targets`` and the module names they stand for.
TARGET_SHORT_NAMES = {
    "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
    "gate": "gate_proj", "up": "up_proj", "down": "down_proj",
}
#: The seven projections of a Gemma / Llama block.
ALL_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
#: Accepted spellings of ``LoraConfig.precision``.
PRECISIONS = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16", "auto": "auto"}
#: Name of the file that marks a finished adapter folder.
MANIFEST = "manifest.json"


def parse_targets(targets: str | Sequence[str]) -> list[str]:
    """``"q,k,v"`` or ``["q", "gate_proj"]`` → module names (``["q_proj", "k_proj", "v_proj"]``).

    ``"all"`` means the seven projections (:data:`ALL_TARGETS`). Order is kept,
    duplicates dropped.
    """
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    items = [str(t).strip() for t in items if str(t).strip()]
    if items == ["all"]:
        items = list(ALL_TARGETS)
    if not items:
        raise ValueError("no LoRA targets given; pass e.g. q,k,v,o,gate,up,down (or all)")
    names = [TARGET_SHORT_NAMES.get(t, t) for t in items]
    return list(dict.fromkeys(names))


@dataclass
class LoraConfig:
    """Options of :func:`finetune`.

    Attributes:
        out: adapter folder to write (created; a previous adapter there is replaced).
        base_model: preset name (``"offline"``), local Hugging Face folder, or hub name.
        corpus: corpus spec for :func:`trajectory.training.corpus.load_corpus` (``None``: default).
        rank: LoRA rank ``r``.
        alpha: LoRA ``alpha`` (``None``: equal to ``rank``, i.e. scaling 1).
        targets: projections to adapt, short (``q``..``down``) or full module names.
        steps: optimiser steps.
        batch_size: chunks per step.
        context_length: tokens per chunk, BOS included.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        seed: seeds LoRA's initialisation, the batch order and the held-out split.
        max_tokens: corpus tokens to cut into chunks (``None``: all).
        n_heldout_chunks: chunks kept out of training; loss on them is reported before and after.
        device: ``"cpu"``/``"cuda"``; default CUDA when available.
        precision: ``"float32"``, ``"bfloat16"`` (the blocks run under bfloat16 autocast;
            the LoRA weights, the optimiser and the loss stay float32), or ``"auto"``:
            bfloat16 where the hardware computes it natively (a CPU with AVX512-BF16 or
            AMX, a CUDA GPU that supports it), else float32. Held-out losses are always
            computed in float32.
        progress: show a tqdm bar.
    """

    out: str | os.PathLike
    base_model: str = "offline"
    corpus: str | None = None
    rank: int = 1
    alpha: float | None = None
    targets: Sequence[str] = ALL_TARGETS
    steps: int = 300
    batch_size: int = 2
    context_length: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    max_tokens: int | None = None
    n_heldout_chunks: int = 8
    device: str | None = None
    precision: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        self.targets = parse_targets(self.targets)
        self.precision = PRECISIONS.get(str(self.precision).lower(), self.precision)
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"precision must be auto, float32 or bfloat16, got {self.precision!r}")
        for name in ("rank", "steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {self.context_length}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass
class BaseModel:
    """A Hugging Face causal LM with its tokenizer.

    Attributes:
        model: the ``transformers`` model (fp32, eval mode).
        tokenizer: its tokenizer (must have a BOS token).
        name: what the user named (preset, folder or hub name).
        source: where the weights were read (folder or hub name).
        model_name: the architecture's public name, written into adapters
            (``google/gemma-3-270m`` for ``offline``), so ``peft`` users know the base.
    """

    model: Any
    tokenizer: Any
    name: str
    source: str
    model_name: str


def load_base_model(spec: str = "offline", device: str | None = None) -> BaseModel:
    """Load a base model in its ``transformers`` form (fp32, eval mode).

    Args:
        spec: a preset (``"offline"``: the cached copy of the embedded Gemma 3 270M,
            built on first use), a local folder written by ``save_pretrained`` (model +
            tokenizer), or a Hugging Face hub name (needs the hub or its cache).
        device: ``"cpu"``/``"cuda"``; default CUDA when available.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trajectory.model.load import check_device, default_device
    from trajectory.presets import PRESETS

    device = check_device(device) if device else default_device()
    spec = str(spec)
    model_name = None
    if spec in PRESETS:
        preset = PRESETS[spec]
        model_name = preset.model_name
        if preset.model_source == "offline-gguf":
            from trajectory.model.offline_gguf import OFFLINE_TL_NAME, offline_model_dir

            source, model_name = str(offline_model_dir()), OFFLINE_TL_NAME
        else:
            source = preset.model_name
    elif Path(spec).expanduser().is_dir():
        source = str(Path(spec).expanduser())
        if not (Path(source) / "config.json").is_file():
            raise FileNotFoundError(f"{source} is not a Hugging Face model folder (no config.json); "
                                    "pass a preset, a folder written by `save_pretrained`, or a hub name")
    else:
        source = spec
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as err:  # noqa: BLE001 - re-raised with what to do
        raise RuntimeError(
            f"could not load the base model {spec!r} from {source} as a transformers causal LM "
            f"({type(err).__name__}: {' '.join(str(err).split())[:300]}); pass a preset (e.g. offline), "
            "a folder with config.json, weights and tokenizer files, or a hub name reachable here"
        ) from err
    if tokenizer.bos_token_id is None:
        raise ValueError(f"the tokenizer of {spec!r} has no BOS token; chunks here start with BOS")
    model_name = model_name or str(getattr(model.config, "_name_or_path", "") or source)
    return BaseModel(model.to(device).eval(), tokenizer, spec, source, model_name)


def corpus_chunks(tokenizer, corpus: str | None, context_length: int,
                  max_tokens: int | None = None) -> tuple[str, "torch.Tensor"]:
    """``(corpus name, [n_chunks, context_length] token ids)``, each chunk starting with BOS,
    cut as :func:`trajectory.training.corpus.tokenize_chunks` cuts them."""
    from trajectory.training.corpus import load_corpus, tokenize_chunks

    name, docs = load_corpus(corpus)
    # tokenize_chunks only reads `.tokenizer` from the model it is given
    return name, tokenize_chunks(types.SimpleNamespace(tokenizer=tokenizer), docs, context_length, max_tokens)


def mean_loss(model, chunks: "torch.Tensor", batch_size: int) -> float:
    """Token-weighted mean of :func:`~trajectory.training.lm_loss.causal_lm_loss` over
    ``chunks`` ``[n, pos]``, no gradients."""
    import torch

    from trajectory.training.lm_loss import causal_lm_loss

    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(chunks), batch_size):
            batch = chunks[start:start + batch_size].to(device)
            n = batch.shape[0] * (batch.shape[1] - 1)
            total += float(causal_lm_loss(model, batch)) * n
            count += n
    return total / max(count, 1)


def finetune(config: LoraConfig) -> Path:
    """Train a LoRA adapter on the base model and write its folder (see the module docstring).

    Deterministic for a given seed on a given machine: the seed fixes LoRA's
    initialisation (``lora_A`` random, ``lora_B`` zero — ``peft``'s default, so the
    adapted model starts equal to the base model), the held-out split and the batch order.

    Returns:
        The adapter folder.
    """
    import peft
    import torch

    from trajectory.training.corpus import split_chunks

    out = check_output_dir(config.out, names=(MANIFEST, "adapter_config.json"), what="adapter folder")
    started = time.time()
    base = load_base_model(config.base_model, config.device)
    _check_targets(base, config.targets)
    corpus_name, chunks = corpus_chunks(base.tokenizer, config.corpus, config.context_length, config.max_tokens)
    train_idx, held_idx = split_chunks(len(chunks), config.n_heldout_chunks, seed=config.seed)
    torch.manual_seed(config.seed)  # lora_A's init draws from the global generator
    lora_cfg = peft.LoraConfig(r=int(config.rank), lora_alpha=config.alpha or config.rank,
                               target_modules=list(config.targets), lora_dropout=0.0, bias="none",
                               task_type="CAUSAL_LM")
    try:
        model = peft.get_peft_model(base.model, lora_cfg)
    except ValueError as err:
        raise ValueError(f"cannot put LoRA on {list(config.targets)} in {base.name!r}: {err}") from err
    model.peft_config["default"].base_model_name_or_path = base.model_name
    held = chunks[held_idx]
    before = mean_loss(model, held, config.batch_size)
    precision = resolve_precision(config.precision, next(model.parameters()).device)
    losses, step_seconds = _train(model, chunks[train_idx], config, precision)
    after = mean_loss(model, held, config.batch_size)
    seconds = time.time() - started
    log.info("LoRA r=%d on %s: held-out loss %.4f -> %.4f (%d steps, %s, %.0f s)",
             config.rank, base.name, before, after, config.steps, precision, seconds)
    curve = {"step": list(range(1, len(losses) + 1)), "loss": losses, "seconds": step_seconds,
             "heldout_loss_before": before, "heldout_loss_after": after}
    manifest = {
        "kind": "lora-finetune", "base_model": base.model_name, "base_model_spec": base.name,
        "base_model_source": base.source, "rank": int(config.rank), "alpha": float(config.alpha or config.rank),
        "targets": list(config.targets), "steps": int(config.steps), "seed": int(config.seed),
        "corpus": corpus_name, "corpus_spec": config.corpus, "n_train_chunks": len(train_idx),
        "n_heldout_chunks": len(held_idx), "tokens_seen": int(config.steps * config.batch_size * config.context_length),
        "final_loss": losses[-1], "heldout_loss_before": before, "heldout_loss_after": after,
        "seconds": round(seconds, 2), "precision": precision,
        "config": {k: v for k, v in asdict(config).items() if k not in ("out", "progress")},
        "peft_version": peft.__version__, "provenance": provenance(),
    }
    _write_adapter(model, out, curve, manifest)
    return out


def _check_targets(base: BaseModel, targets: Sequence[str]) -> None:
    """Every target must name linear layers of the base model (peft only fails when none does)."""
    import torch

    linear = sorted({n.rsplit(".", 1)[-1] for n, m in base.model.named_modules() if isinstance(m, torch.nn.Linear)})
    missing = [t for t in targets if t not in linear]
    if missing:
        raise ValueError(f"target modules {missing} are not linear layers of {base.name!r} "
                         f"({type(base.model).__name__}); its linear layers are named {linear}")


def resolve_precision(precision: str, device: "torch.device | str") -> str:
    """``"float32"`` or ``"bfloat16"``: ``precision`` itself, or for ``"auto"`` bfloat16
    where ``device`` computes it natively (see :class:`LoraConfig`)."""
    import torch

    precision = PRECISIONS.get(str(precision).lower(), str(precision))
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device.type == "cpu" and _cpu_has_native_bf16() else "float32"


def _cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (Linux CPU flags ``avx512_bf16`` or
    ``amx_bf16``); elsewhere ``False`` (emulated bfloat16 is slower than float32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _train(model, chunks: "torch.Tensor", config: LoraConfig, precision: str = "float32") -> tuple[list[float], list[float]]:
    """``config.steps`` AdamW steps over ``chunks`` ``[n, ctx]`` in a seeded order, the
    forward pass under bfloat16 autocast when ``precision`` is ``"bfloat16"``.

    Returns:
        ``(loss per step, wall seconds since the start at the end of each step)``.
    """
    import torch
    from tqdm.auto import tqdm

    from trajectory.training.lm_loss import causal_lm_loss, release_buffers

    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(config.seed)
    order: list[int] = []
    losses: list[float] = []
    seconds: list[float] = []  # wall time at the end of each step
    started = time.time()
    model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    bar = tqdm(range(config.steps), desc=f"LoRA r={config.rank} ({precision})", unit="step",
               disable=not config.progress)
    for _ in bar:
        if len(order) < config.batch_size:  # a fresh permutation per epoch
            order.extend(torch.randperm(len(chunks), generator=g).tolist())
        idx, order = order[:config.batch_size], order[config.batch_size:]
        with autocast:
            loss = causal_lm_loss(model, chunks[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        seconds.append(round(time.time() - started, 3))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    release_buffers()
    model.eval()
    return losses, seconds


def _write_adapter(model, out: Path, curve: dict, manifest: dict) -> None:
    """peft's files, the loss curve and (last) the manifest into ``out``; each file atomically."""
    out.mkdir(parents=True, exist_ok=True)
    old = out / MANIFEST
    if old.exists():  # the folder's previous adapter is replaced: unmark it first
        old.unlink()
    stale = out / "activations"
    if stale.is_dir() and (stale / "meta.json").is_file():  # collected from the previous adapter
        shutil.rmtree(stale)
    with tempfile.TemporaryDirectory(prefix=".lora-", dir=out) as tmp:
        model.save_pretrained(tmp)
        mask = os.umask(0)
        os.umask(mask)
        for path in sorted(Path(tmp).iterdir()):
            if path.is_file():
                os.chmod(path, 0o666 & ~mask)  # peft may write private (0600) files
                os.replace(path, out / path.name)
    with atomic_write(out / "loss_curve.json") as fh:
        json.dump(curve, fh, indent=1)
    _plot_loss_curve(curve, out / "loss_curve.png", title=f"LoRA r={manifest['rank']} on {manifest['base_model']} ({manifest['precision']})")
    with atomic_write(out / MANIFEST) as fh:
        json.dump(manifest, fh, indent=1)


def _plot_loss_curve(curve: dict, path: Path, title: str) -> None:
    """Training loss per step, its running mean, and the held-out loss before / after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps, loss = np.asarray(curve["step"]), np.asarray(curve["loss"], dtype=float)
    window = max(1, len(loss) // 20)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, color="0.6" if window > 1 else "C0", lw=0.8, label="train loss (per step)")
    if window > 1:
        ax.plot(steps[window - 1:], smooth, color="C0", lw=1.8, label=f"running mean ({window} steps)")
    ax.axhline(curve["heldout_loss_before"], color="C3", ls="--", lw=1, label="held-out, before")
    ax.axhline(curve["heldout_loss_after"], color="C2", ls="--", lw=1, label="held-out, after")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def read_manifest(adapter: str | os.PathLike) -> dict | None:
    """The manifest of an adapter folder written by :func:`finetune` (``None`` for other adapters)."""
    path = Path(adapter) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


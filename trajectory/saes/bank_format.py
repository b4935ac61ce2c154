"""The SAE bank folder on disk: what :meth:`SAEBank.save` writes and :meth:`SAEBank.open` reads.

A bank is one folder::

    manifest.json                  format, format_version, model_name, preset, dtype,
                                   created, versions, metadata, and per layer:
                                   file, sha256, bytes, tensors {name: shape},
                                   source, hook_name, d_in, d_sae, architecture, dtype,
                                   cfg (sae-lens cfg dict), neuronpedia_id, metrics,
                                   explanations (file name or null), n_explanations
    layer_06.safetensors           the SAE's tensors (W_enc [d_in, d_sae], W_dec
                                   [d_sae, d_in], b_enc [d_sae], b_dec [d_in], threshold ...)
    explanations/layer_06.json     {"feature index": "text"} (only layers that have some)

Manifests written before ``format_version`` existed name it ``version``; both are read.
The folder is built under a temporary name beside the target and renamed into place
once complete (manifest written last, :func:`atomic_folder`), so an interrupted save
never leaves a folder that opens as a bank. Writers of one folder take turns through
the lock file ``.<name>.lock`` beside it (:func:`bank_lock`), so concurrent saves
neither fail nor, with ``merge``, lose each other's layers.

This module imports no torch at module level: :func:`read_manifest` and
:func:`read_explanations` serve the graph stage, which runs without it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from trajectory.io import atomic_write, jsonable, package_versions
from trajectory.io import file_lock as _file_lock
from trajectory.presets import format_layers

if TYPE_CHECKING:  # pragma: no cover
    import torch

BANK_FORMAT = "trajectory-sae-bank"
BANK_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Banks up to this size are sha256-checked at every :meth:`SAEBank.open` by default.
SHA256_AUTO_BYTES = 2 * 1024**3

_FIX = "rerun `trajectory preload` with --force"

log = logging.getLogger(__name__)
#: the lock files this thread holds (:func:`bank_lock` is re-entrant per thread)
_held = threading.local()


class CorruptBankError(ValueError):
    """A bank file is missing, truncated, fails its checksum or cannot be parsed."""


def layer_file(layer: int) -> str:
    """``layer_06.safetensors``: the file of ``layer``'s tensors in a bank folder."""
    return f"layer_{int(layer):02d}.safetensors"


def rebuild_command(preset: str | None, layer: int) -> str:
    """The command that rebuilds ``layer`` of a bank (of ``preset``, when it has one)."""
    if preset:
        return f"`trajectory preload --preset {preset} --force --layers {int(layer)}`"
    return f"`trajectory preload --force --layers {int(layer)}` (with the source options that built the bank)"


def format_version(manifest: Mapping[str, Any]) -> int:
    """The manifest's ``format_version`` (``version`` in manifests written before it)."""
    return int(manifest.get("format_version", manifest.get("version", 0)))


# ---------------------------------------------------------------------------- reading


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the bank folder ``path`` (plain JSON; needs no torch).

    Raises ``FileNotFoundError`` (run ``trajectory preload``) when there is no bank,
    :class:`CorruptBankError` when the manifest is unreadable or of another format.
    """
    path = Path(path)
    file = path / MANIFEST
    if not path.is_dir():
        raise FileNotFoundError(
            f"no SAE bank at {path}; run `trajectory preload --preset <preset>` first "
            "(e.g. `trajectory preload --preset offline`)"
        )
    if not file.is_file():
        raise FileNotFoundError(
            f"{path} is not a complete SAE bank (no {MANIFEST}); run `trajectory preload` "
            "(with --force to rebuild) first"
        )
    manifest = _read_json(file)
    if not isinstance(manifest, dict) or manifest.get("format") != BANK_FORMAT:
        raise CorruptBankError(f"{file} is not a {BANK_FORMAT} manifest; {_FIX}")
    if format_version(manifest) > BANK_FORMAT_VERSION:
        raise CorruptBankError(
            f"{file} has format version {format_version(manifest)}, newer than this package reads "
            f"({BANK_FORMAT_VERSION}); upgrade trajectory or rerun `trajectory preload --force`"
        )
    return manifest


def read_explanations(path: str | os.PathLike, layer: int) -> dict[int, str]:
    """Feature index -> explanation text of ``layer`` in the bank at ``path`` ({} if none)."""
    path = Path(path)
    manifest = read_manifest(path)
    m = manifest["layers"].get(str(int(layer)))
    if m is None:
        have = format_layers(int(k) for k in manifest["layers"])
        raise ValueError(f"layer {layer} is not in the SAE bank at {path} (it has layers {have})")
    if not m.get("explanations"):
        return {}
    file = path / m["explanations"]
    if not file.is_file():
        raise CorruptBankError(f"{file} is missing; {_FIX}")
    return {int(k): str(v) for k, v in _read_json(file).items()}


def select_layers(manifest: Mapping[str, Any], layers: Sequence[int] | None, path: Path) -> list[int]:
    """``layers`` (default: all of the bank) sorted, after checking the bank has each."""
    have = sorted(int(k) for k in manifest["layers"])
    wanted = have if layers is None else sorted({int(x) for x in layers})
    missing = [x for x in wanted if x not in have]
    if missing:
        raise ValueError(
            f"layer(s) {missing} are not in the SAE bank at {path} (it has layers {format_layers(have)}); "
            f"preload them with `trajectory preload --preset {manifest.get('preset') or '...'} --layers ...`"
        )
    return wanted


def resolve_verify(records: Iterable[Mapping[str, Any]], verify: bool | str) -> bool | str:
    """``verify="auto"`` -> ``"sha256"`` up to :data:`SHA256_AUTO_BYTES` on disk, else ``"size"``.

    Hashing the offline bank (a few hundred MB) takes well under a second; hashing the
    31 GB of a 65k Gemma Scope bank would take a minute at every open.
    """
    if verify != "auto":
        return verify
    on_disk = sum(int(m.get("bytes", 0)) for m in records)
    return "sha256" if on_disk <= SHA256_AUTO_BYTES else "size"


def read_layer(path: Path, record: Mapping[str, Any], *, verify: bool | str) -> dict[str, "torch.Tensor"]:
    """The tensors of one layer (``record``: its manifest entry), memory-mapped on CPU.

    ``verify`` as in :func:`verify_file` (``"size"``: no checksum; false: only parse);
    the tensor shapes are always checked against the manifest.
    """
    from safetensors import SafetensorError, safe_open

    file = path / record["file"]
    if verify:
        verify_file(file, record, check_sha256=(verify != "size"))
    elif not file.is_file():
        raise CorruptBankError(f"{file} is missing; {_FIX}")
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise CorruptBankError(f"{file} cannot be read as safetensors ({exc}); {_FIX}") from None
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    if shapes != record["tensors"]:
        raise CorruptBankError(f"{file} holds tensors {shapes} but the manifest lists {record['tensors']}; {_FIX}")
    return tensors


def verify_file(file: Path, entry: Mapping[str, Any], *, check_sha256: bool = True) -> None:
    """Check a layer file against its manifest entry (existence, size, sha256, header)."""
    if not file.is_file():
        raise CorruptBankError(f"{file} is missing from the SAE bank; {_FIX}")
    size = file.stat().st_size
    if size != int(entry["bytes"]):
        raise CorruptBankError(
            f"{file} is {size} bytes but the manifest says {entry['bytes']} (truncated or replaced); {_FIX}"
        )
    with open(file, "rb") as fh:
        # a safetensors file starts with the byte length of its JSON header (u64, little endian)
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        ok = 0 < n <= size - 8
        if ok:
            try:
                json.loads(fh.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                ok = False
    if not ok:
        raise CorruptBankError(f"{file} has an unparsable safetensors header; {_FIX}")
    if check_sha256 and sha256(file) != entry["sha256"]:
        raise CorruptBankError(f"{file} fails its sha256 checksum (corrupted on disk); {_FIX}")


def sha256(file: Path) -> str:
    """Hex sha256 of ``file``, read in 16 MB chunks."""
    h = hashlib.sha256()
    with open(file, "rb") as fh:
        while chunk := fh.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptBankError(f"{file} is not valid JSON ({exc}); {_FIX}") from None


# ---------------------------------------------------------------------------- writing


@contextlib.contextmanager
def bank_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of the bank folder ``path`` (waiting for it if need be).

    The lock is the file ``.<name>.lock`` beside the folder (POSIX ``flock``; it stays
    after use, as removing it would let two writers lock two different files). Hold it
    around "read the bank, add layers, save" so that a second writer starts from the
    first one's result. Re-entrant within a thread: :meth:`SAEBank.save` inside it takes
    it again without waiting for itself.

    Example:
        >>> import tempfile
        >>> with bank_lock(Path(tempfile.mkdtemp()) / "bank"):
        ...     pass  # read, extend and save the bank here
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = (path.parent / f".{path.name}.lock").resolve()
    held = _held.__dict__.setdefault("locks", set())
    if lock in held:
        yield
        return
    with _file_lock(lock):
        held.add(lock)
        try:
            yield
        finally:
            held.discard(lock)


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` that takes ``path``'s place on success.

    ``path`` is at any moment the old complete folder, absent, or the new complete
    folder; on an exception the temporary folder is removed and ``path`` left as it was.
    The swap happens under :func:`bank_lock`, so concurrent writers never trip over
    each other's renames: the last to finish wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        with bank_lock(path):
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def keep_layers(
    path: Path, folder: Path, records: Mapping[str, Mapping[str, Any]], header: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge into ``folder`` (a bank being written) the layers the bank at ``path`` has
    and ``records`` lacks: their files are hard-linked (copied where links fail), their
    manifest entries kept as they are.

    ``header`` holds ``model_name``, ``preset`` and ``metadata`` of the bank being written;
    returns the merged layer entries (sorted) and header (the old metadata updated with
    the new, the old model name and preset where the new ones are empty). Call it under
    :func:`bank_lock`, or another writer's layers may land after it looked.
    """
    records, header = dict(records), dict(header)
    if not (path / MANIFEST).is_file():
        return records, header
    old = read_manifest(path)
    if old.get("model_name") and header["model_name"] and old["model_name"] != header["model_name"]:
        raise ValueError(
            f"cannot merge into the SAE bank at {path}: it holds SAEs of {old['model_name']}, this bank is "
            f"for {header['model_name']}; save it elsewhere, or without merge to replace that bank"
        )
    kept = {k: m for k, m in old["layers"].items() if k not in records}
    for m in kept.values():
        verify_file(path / m["file"], m, check_sha256=False)  # never carry a truncated file along
        for name in filter(None, (m["file"], m.get("explanations"))):
            _link_or_copy(path / name, folder / name)
    if kept:
        log.info("kept layer(s) %s of the SAE bank at %s", format_layers(int(k) for k in kept), path)
    header["model_name"] = header["model_name"] or old.get("model_name", "")
    header["preset"] = header["preset"] or old.get("preset")
    header["metadata"] = {**(old.get("metadata") or {}), **header["metadata"]}
    return dict(sorted({**kept, **records}.items(), key=lambda kv: int(kv[0]))), header


def _link_or_copy(src: Path, dst: Path) -> None:
    # bank files are never changed in place (every save writes a new folder), so the
    # old and the new bank may share them
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not src.is_file():
        raise CorruptBankError(f"{src} is missing; {_FIX}")
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_explanations(folder: Path, layer: int, explanations: Mapping[int, str]) -> str | None:
    """Write ``explanations/layer_NN.json`` into ``folder``; its relative name (``None`` if empty)."""
    if not explanations:
        return None
    name = f"explanations/layer_{int(layer):02d}.json"
    (folder / "explanations").mkdir(exist_ok=True)
    with open(folder / name, "w", encoding="utf-8") as fh:
        json.dump({str(int(k)): str(v) for k, v in sorted(explanations.items())}, fh, ensure_ascii=False)
    return name


def layer_record(folder: Path, file: str, tensors: Mapping[str, Sequence[int]], **fields: Any) -> dict[str, Any]:
    """A layer's manifest entry: ``file``, its ``sha256`` and ``bytes``, ``tensors`` shapes, then ``fields``."""
    return {
        "file": file,
        "sha256": sha256(folder / file),
        "bytes": (folder / file).stat().st_size,
        "tensors": {k: list(v) for k, v in tensors.items()},
        **fields,
    }


def write_manifest(
    folder: Path,
    layers: Mapping[str, Mapping[str, Any]],
    *,
    model_name: str,
    preset: str | None,
    metadata: Mapping[str, Any],
) -> None:
    """Write ``manifest.json`` (the last file of a bank: its presence marks the bank complete)."""
    dtypes = {m["dtype"] for m in layers.values()}
    manifest = {
        "format": BANK_FORMAT,
        "format_version": BANK_FORMAT_VERSION,
        "model_name": model_name,
        "preset": preset,
        "dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": package_versions(),
        "metadata": jsonable(metadata),
        "layers": dict(layers),
    }
    with atomic_write(folder / MANIFEST) as fh:
        json.dump(manifest, fh, indent=1, ensure_ascii=False)

"""Where outputs and caches live, how files are written (atomically), and what they record.

Every file this package writes goes through :func:`atomic_write` or
:func:`atomic_path`: data land in a temporary file beside the target and are moved
into place with ``os.replace``, so an interrupted run never leaves a half-written
file under the final name.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

#: Default folder for outputs of the three stages (relative to the working directory).
#: Only the CLI and :mod:`trajectory.pipeline` default to it; library functions take paths.
RESULTS_DIR = Path("results")

#: The packages whose versions shape our numbers; every file format records these.
PROVENANCE_PACKAGES = ("trajectory", "torch", "sae-lens", "transformer-lens", "numpy", "safetensors")


def default_bank_dir(name: str) -> Path:
    """``results/banks/<name>``: where ``trajectory preload`` writes a preset's bank."""
    return RESULTS_DIR / "banks" / name


def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`PROVENANCE_PACKAGES` (``None`` when not installed)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for package in PROVENANCE_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def provenance(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What every output file records about how it was made: ``created`` (UTC, ISO 8601),
    ``versions`` (:func:`package_versions`) and ``settings`` (as given)."""
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": package_versions(),
        "settings": dict(settings or {}),
    }


def jsonable(value: Any, *, strict: bool = False) -> Any:
    """A plain-JSON copy of ``value``: mappings (keys as strings), lists, tuples, numbers,
    strings; numpy/torch scalars become numbers, arrays and tensors lists. Anything else
    becomes its ``str``, or — ``strict`` — raises ``TypeError`` (for files that must read
    back equal)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, strict=strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, strict=strict) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if strict:
        raise TypeError(f"{type(value).__name__} value {value!r} cannot be written as JSON")
    return str(value)


def cache_dir(*parts: str) -> Path:
    """The user cache folder for large derived files (model copies, SAE banks).

    ``$TRAJECTORY_CACHE`` if set, else ``$XDG_CACHE_HOME/trajectory``, else
    ``~/.cache/trajectory``. The folder (and ``parts`` below it) is created.
    """
    root = os.environ.get("TRAJECTORY_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        root = os.path.join(xdg, "trajectory")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place on success.

    For libraries that want a file name (``safetensors.torch.save_file``,
    ``matplotlib.savefig``). On an exception the temporary file is removed and
    ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name tells a later run which leftovers are stale (clean_stale_temp_files)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; replace ``path`` on success."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


_TEMP = re.compile(r"^\..+\.(?:(?P<pid>\d+)-)?[A-Za-z0-9_]{6,}\.tmp(?:\.[A-Za-z0-9]+)?$")


def clean_stale_temp_files(folder: str | os.PathLike, *, max_age_s: float = 3600.0) -> list[Path]:
    """Remove temporary files that :func:`atomic_path` left in ``folder`` when a run was
    killed (SIGKILL leaves no chance to clean up); returns what was removed.

    Only files named as ``atomic_path`` names them are touched: those whose writer
    process no longer runs, and those of unknown writer older than ``max_age_s``.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TEMP.match(entry.name)
        if not m or not entry.is_file():
            continue
        pid = int(m.group("pid")) if m.group("pid") else None
        stale = (pid is not None and pid != os.getpid() and not _alive(pid)) or \
            (pid is None and time.time() - entry.stat().st_mtime > max_age_s)
        if stale:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Refuse, before any work, an output file path that cannot be written: an existing
    folder, or a path below an existing file. Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is an existing folder; pass a file name (e.g. {path / 'out'}{path.suffix})")
    _check_parents(path, what)
    return path


def check_output_dir(path: str | os.PathLike, names: Iterable[str] = (), what: str = "output folder") -> Path:
    """Refuse, before any work, an output folder that cannot be used: an existing file, a
    path below a file, or one whose ``names`` (files to write in it) are existing folders."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is an existing file; pass a folder")
    _check_parents(path, what)
    for name in names:
        if (path / name).is_dir():
            raise ValueError(f"{what} {path} holds a folder named {name!r} where a file must go; "
                             "remove it or pass another folder")
    return path


def _check_parents(path: Path, what: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what} {path} is below {parent}, which is a file; pass another path")
            if not os.access(parent, os.W_OK):
                raise ValueError(f"{what} {path}: no permission to write in {parent}")
            return


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) between processes: POSIX
    ``flock``, a no-op where there is none. Logs when it has to wait for another holder."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.getLogger(__name__).info("waiting for another process that holds %s", path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

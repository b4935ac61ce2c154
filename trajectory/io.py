"""Where outputs and caches live, and how files are written (atomically).

Every file this package writes goes through :func:`atomic_write` or
:func:`atomic_path`: data land in a temporary file beside the target and are moved
into place with ``os.replace``, so an interrupted run never leaves a half-written
file under the final name.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

#: Default folder for outputs of the three stages (relative to the working directory).
RESULTS_DIR = Path("results")


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
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

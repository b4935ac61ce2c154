"""The embedded offline model's GGUF: chunk joining with checks, the pinned packages, the cache folder."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os

import pytest

from trajectory.model import offline_gguf
from trajectory.model.offline_gguf import GGUFChunk, join_chunks


# ------------------------------------------------------------------ chunk joiner


def _fake_chunks(tmp_path, sizes=(1000, 2345, 17), pin=False):
    """Three chunk files of random bytes owned by fake packages; returns (chunks, joined bytes)."""
    src = tmp_path / "src"
    src.mkdir()
    chunks, data = [], b""
    for i, size in enumerate(sizes):
        blob = os.urandom(size)
        path = src / f"model.gguf.part{i:02d}"
        path.write_bytes(blob)
        data += blob
        digest = hashlib.sha256(blob).hexdigest() if pin else None
        chunks.append(GGUFChunk(f"fake-part{i + 1}", path, size if pin else None, digest))
    return chunks, data


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_join_chunks_good_digest(tmp_path):
    chunks, data = _fake_chunks(tmp_path, pin=True)
    dest = tmp_path / "out" / "model.gguf"
    got = join_chunks(chunks, dest, hashlib.sha256(data).hexdigest(), len(data))
    assert got == dest
    assert dest.read_bytes() == data
    assert _leftovers(dest.parent) == ["model.gguf"]  # no temporary file left


def test_join_chunks_wrong_total_digest_leaves_nothing(tmp_path):
    chunks, data = _fake_chunks(tmp_path)
    dest = tmp_path / "out" / "model.gguf"
    wrong = hashlib.sha256(data + b"x").hexdigest()
    with pytest.raises(RuntimeError, match=r"sha256 .*expected .*fake-part1, fake-part2, fake-part3.*reinstall"):
        join_chunks(chunks, dest, wrong, len(data), fix="reinstall them")
    assert _leftovers(dest.parent) == []


def test_join_chunks_tampered_chunk_named(tmp_path):
    chunks, data = _fake_chunks(tmp_path, pin=True)
    blob = bytearray(chunks[1].path.read_bytes())
    blob[100] ^= 0xFF  # same size, one flipped byte
    chunks[1].path.write_bytes(bytes(blob))
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(RuntimeError, match=r"chunk model.gguf.part01 of package 'fake-part2' has sha256"):
        join_chunks(chunks, dest, hashlib.sha256(data).hexdigest(), len(data))
    assert _leftovers(dest.parent) == []


def test_join_chunks_truncated_chunk_named(tmp_path):
    chunks, data = _fake_chunks(tmp_path, pin=True)
    chunks[2].path.write_bytes(chunks[2].path.read_bytes()[:-1])
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(RuntimeError, match=r"'fake-part3' has 16 bytes, expected 17"):
        join_chunks(chunks, dest, hashlib.sha256(data).hexdigest(), len(data))
    assert _leftovers(dest.parent) == []


def test_join_chunks_missing_chunk_named(tmp_path):
    chunks, data = _fake_chunks(tmp_path)
    chunks[0].path.unlink()
    dest = tmp_path / "out" / "model.gguf"
    dest.parent.mkdir()
    dest.write_bytes(b"previous good file")  # must survive a failed join
    with pytest.raises(RuntimeError, match=r"of package 'fake-part1' is missing; pip install"):
        join_chunks(chunks, dest, hashlib.sha256(data).hexdigest(), fix="pip install it")
    assert dest.read_bytes() == b"previous good file"
    assert _leftovers(dest.parent) == ["model.gguf"]


# ------------------------------------------------------------------ the pinned offline GGUF


def _installed(package):
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs_gguf = pytest.mark.skipif(not _installed(offline_gguf.OFFLINE_PACKAGE), reason="trajectory[offline] not installed")


@needs_gguf
def test_offline_pins_match_the_installed_packages():
    """Our pinned digest equals the upstream SHA256SUMS shipped as package data (read as
    text, the package's code is not run), and the located chunks have the pinned sizes."""
    dist = importlib.metadata.distribution(offline_gguf.OFFLINE_PACKAGE)
    sums = [f for f in dist.files if f.name == "SHA256SUMS"]
    assert sums, "upstream SHA256SUMS not found in the package"
    line = dist.locate_file(sums[0]).read_text().split()
    assert line == [offline_gguf.OFFLINE_GGUF_SHA256, offline_gguf.OFFLINE_GGUF_NAME]
    chunks = offline_gguf.locate_offline_chunks()
    assert [c.package for c in chunks] == [f"{offline_gguf.OFFLINE_PACKAGE}-part{i}" for i in range(1, 5)]
    assert [c.path.stat().st_size for c in chunks] == [c.size for c in chunks]
    assert sum(c.size for c in chunks) == offline_gguf.OFFLINE_GGUF_SIZE


def test_missing_chunk_package_gives_the_fix(monkeypatch):
    fake = (("trajectory-no-such-chunk-package", "x.gguf.part00", 1, "0" * 64),)
    monkeypatch.setattr(offline_gguf, "OFFLINE_GGUF_CHUNKS", fake)
    with pytest.raises(RuntimeError, match=r"'trajectory-no-such-chunk-package'.*not installed.*trajectory\[offline\]"):
        offline_gguf.locate_offline_chunks()


# ------------------------------------------------------------------ the cache folder


def test_half_built_cache_folder_is_not_taken(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAJECTORY_CACHE", str(tmp_path))
    final = tmp_path / "models" / offline_gguf.OFFLINE_CACHE_NAME
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")  # weights written, marker never was
    built = []
    monkeypatch.setattr(offline_gguf, "_build_offline_dir", lambda path: built.append(path))
    assert offline_gguf.offline_model_dir() == final
    assert built == [final]
    # a marker for another GGUF (or an older cache format) is not good either
    (final / offline_gguf.COMPLETE_MARKER).write_text(json.dumps({"format": offline_gguf.OFFLINE_CACHE_FORMAT, "source_sha256": "0" * 64}))
    offline_gguf.offline_model_dir()
    assert len(built) == 2
    (final / offline_gguf.COMPLETE_MARKER).write_text(
        json.dumps({"format": offline_gguf.OFFLINE_CACHE_FORMAT, "source_sha256": offline_gguf.OFFLINE_GGUF_SHA256})
    )
    offline_gguf.offline_model_dir()
    assert len(built) == 2  # complete: used as it is


def test_failed_build_leaves_no_folder(tmp_path, monkeypatch):
    """A build whose GGUF fails the pinned digest stops with the clear error and leaves
    neither the final folder nor its temporary build folder behind."""
    monkeypatch.setenv("TRAJECTORY_CACHE", str(tmp_path / "cache"))
    chunks, _ = _fake_chunks(tmp_path)
    monkeypatch.setattr(offline_gguf, "locate_offline_chunks", lambda: chunks)
    with pytest.raises(RuntimeError, match=r"has 3362 bytes, expected 253113024; chunks from fake-part1.*trajectory\[offline\].*force-reinstall"):
        offline_gguf.offline_model_dir()
    left = _leftovers(tmp_path / "cache" / "models")
    assert [name for name in left if not name.endswith(".lock")] == []

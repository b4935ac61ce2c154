"""Text corpora for SAE training and feature analysis, and how they are cut into chunks.

A corpus is a name plus a list of documents (plain strings). :func:`load_corpus`
accepts:

- ``None`` or ``"default"``: :func:`default_corpus`, which needs no download — the
  Python standard library's own documentation text (``pydoc_data.topics``) and the
  docstrings of a fixed list of standard-library modules (about 110k Gemma tokens);
- a text file (one document; ``.txt``, ``.md`` or anything UTF-8);
- a folder: every ``.txt`` / ``.md`` file below it, in sorted path order;
- ``"hf:<dataset>"`` (or any other string naming a Hugging Face dataset) where the hub
  is reachable: its ``text`` column, train split.

:func:`tokenize_chunks` turns documents into fixed-length chunks of token ids, each
starting with BOS, and :func:`split_chunks` makes the deterministic train / held-out
split that SAE training uses.

Example:
    >>> from trajectory.training.corpus import load_corpus
    >>> name, docs = load_corpus(None)
    >>> name, len(docs) > 100
    ('default', True)
"""
from __future__ import annotations

import importlib
import inspect
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformer_lens import HookedTransformer

#: Standard-library modules whose docstrings join the default corpus. A fixed list
#: (not ``sys.stdlib_module_names``) so the corpus is the same everywhere and no module
#: with import side effects (``this``, ``antigravity``, ``tkinter``) is touched.
STDLIB_MODULES = (
    "abc argparse ast asyncio base64 bisect calendar cmath collections colorsys contextlib "
    "copy csv dataclasses datetime decimal difflib enum fnmatch fractions functools getopt "
    "glob graphlib gzip hashlib heapq hmac html http.client inspect io ipaddress itertools "
    "json logging math mimetypes operator optparse os pathlib pickle pprint queue random re "
    "sched secrets shlex shutil signal socket sqlite3 statistics string struct subprocess "
    "tarfile tempfile textwrap threading time timeit tokenize traceback types typing "
    "unittest urllib.parse uuid warnings weakref zipfile zlib"
).split()

TEXT_SUFFIXES = (".txt", ".md")


class CorpusError(ValueError):
    """A corpus could not be loaded (bad path, empty, hub unreachable)."""


def _docstrings(module_name: str) -> list[str]:
    """The module docstring and those of its public classes and functions."""
    try:
        module = importlib.import_module(module_name)
    except Exception:  # a module missing from this Python build is simply skipped
        return []
    docs = []
    if module.__doc__:
        docs.append(module.__doc__)
    with warnings.catch_warnings():  # e.g. typing.io's DeprecationWarning on access
        warnings.simplefilter("ignore")
        for name in sorted(vars(module)):
            if name.startswith("_"):
                continue
            obj = getattr(module, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == module.__name__:
                doc = inspect.getdoc(obj)
                if doc and len(doc) > 40:
                    docs.append(f"{name}: {doc}")
    return docs


def default_corpus() -> list[str]:
    """Documents that need no download: Python's documentation topics and module docstrings.

    Returns:
        ``pydoc_data.topics`` texts in sorted topic order, then the docstrings of
        :data:`STDLIB_MODULES` (module, then public classes and functions, sorted by
        name). Deterministic for a given Python version.
    """
    from pydoc_data.topics import topics

    docs = [topics[key].strip() for key in sorted(topics) if topics[key].strip()]
    for module_name in STDLIB_MODULES:
        docs.extend(d.strip() for d in _docstrings(module_name))
    return docs


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"corpus file {path} is not UTF-8 text ({exc}); convert it or leave it out") from None


def load_corpus(spec: str | os.PathLike | None = None) -> tuple[str, list[str]]:
    """Resolve a corpus spec to ``(name, documents)``.

    Args:
        spec: ``None``/``"default"``, a text file, a folder of ``.txt``/``.md`` files,
            or a Hugging Face dataset name (``"hf:<name>"`` or a name that is not a path).

    Returns:
        ``(name, docs)``: a short name for records (``"default"``, the file or folder
        name, ``"hf:<dataset>"``) and the non-empty documents.

    Raises:
        CorpusError: the path does not exist, holds no text, or the dataset cannot be
            reached (with what to do instead).
    """
    if spec is None or str(spec) == "default":
        return "default", default_corpus()
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        docs = [_read_text(path)]
        name = path.name
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise CorpusError(
                f"corpus folder {path} holds no {'/'.join(TEXT_SUFFIXES)} files; "
                "put text files there or pass a single file"
            )
        docs = [_read_text(p) for p in files]
        name = path.name or str(path)
    elif text.startswith("hf:") or not (
        text.startswith(("/", ".", "~")) or Path(text).suffix or text.count("/") > 1
    ):
        return _load_hf_dataset(text[3:] if text.startswith("hf:") else text)
    else:
        raise CorpusError(
            f"corpus {text!r} is neither an existing file nor a folder; "
            "pass a text file, a folder of .txt/.md files, 'hf:<dataset>', or omit it for the default corpus"
        )
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise CorpusError(f"corpus {text!r} is empty; give it some text")
    return name, docs


def _load_hf_dataset(name: str, max_docs: int = 20_000) -> tuple[str, list[str]]:
    """A Hugging Face dataset's ``text`` column (train split, first ``max_docs`` rows)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets ships with sae-lens
        raise CorpusError("loading a Hugging Face dataset needs the `datasets` package: pip install datasets") from None
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        hint = " (HF_HUB_OFFLINE=1 is set)"
    else:
        hint = ""
    try:
        ds = datasets.load_dataset(name, split="train", streaming=True)
        docs = []
        for row in ds:
            if "text" not in row:
                raise CorpusError(f"dataset {name!r} has no 'text' column (columns: {sorted(row)})")
            if row["text"] and row["text"].strip():
                docs.append(row["text"])
            if len(docs) >= max_docs:
                break
    except CorpusError:
        raise
    except Exception as exc:
        raise CorpusError(
            f"{name!r} is no local file or folder, and loading it as a Hugging Face dataset failed{hint}: "
            f"{type(exc).__name__}: {exc}. Without hub access, pass a local text file or folder as the corpus, or omit it for the default corpus"
        ) from None
    if not docs:
        raise CorpusError(f"dataset {name!r} has no non-empty 'text' rows")
    return f"hf:{name}", docs


def tokenize_chunks(
    model: "HookedTransformer",
    docs: Sequence[str],
    context_length: int = 128,
    max_tokens: int | None = None,
) -> "torch.Tensor":
    """Cut documents into chunks of ``context_length`` token ids, each starting with BOS.

    Documents are tokenized without BOS and concatenated (separated by a blank line's
    tokens) into one stream, which is cut into pieces of ``context_length - 1`` tokens;
    BOS is put in front of each. A trailing partial piece is dropped.

    Args:
        model: gives the tokenizer and BOS id.
        docs: the documents.
        context_length: tokens per chunk, BOS included (at least 2).
        max_tokens: stop once this many non-BOS tokens are collected (``None``: all).

    Returns:
        ``[n_chunks, context_length]`` int64 token ids.
    """
    import torch

    if context_length < 2:
        raise ValueError(f"context_length must be at least 2, got {context_length}")
    tok = model.tokenizer
    if tok is None:
        raise ValueError("the model has no tokenizer; build it with one to tokenize a corpus")
    bos = tok.bos_token_id
    if bos is None:
        raise ValueError("the tokenizer has no BOS token; SAE training here expects BOS-prefixed chunks")
    sep = tok("\n\n", add_special_tokens=False)["input_ids"]
    piece = context_length - 1
    stream: list[int] = []
    for doc in docs:
        stream.extend(tok(doc, add_special_tokens=False)["input_ids"])
        stream.extend(sep)
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    n = len(stream) // piece
    if max_tokens is not None:
        n = min(n, max(max_tokens // piece, 1))
    if n == 0:
        raise ValueError(
            f"the corpus has {len(stream)} tokens, fewer than one chunk of {piece}; "
            "use more text or a shorter context_length"
        )
    body = torch.tensor(stream[: n * piece], dtype=torch.long).view(n, piece)
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), body], dim=1)


def split_chunks(
    n_chunks: int, n_heldout: int, seed: int = 0, n_train: int | None = None
) -> tuple[list[int], list[int]]:
    """Deterministic train / held-out split of chunk indices.

    Chunks are drawn by a seeded permutation, so a subset (``n_train``) spreads over the
    whole corpus rather than taking its beginning.

    Args:
        n_chunks: number of chunks.
        n_heldout: how many go to the held-out set (at least 1 and fewer than ``n_chunks``).
        seed: permutation seed.
        n_train: how many go to the train set (default: all the others).

    Returns:
        ``(train, heldout)``: sorted chunk indices, disjoint (together ``range(n_chunks)``
        when ``n_train`` is ``None``).
    """
    import numpy as np

    if n_chunks < 2:
        raise ValueError(f"need at least 2 chunks to split into train and held-out, got {n_chunks}")
    n_heldout = min(max(int(n_heldout), 1), n_chunks - 1)
    perm = np.random.default_rng(seed).permutation(n_chunks)
    end = n_chunks if n_train is None else n_heldout + max(int(n_train), 1)
    return sorted(perm[n_heldout:end].tolist()), sorted(perm[:n_heldout].tolist())

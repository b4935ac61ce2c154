"""Text corpora for SAE training and feature analysis, and how they are cut into chunks.

A corpus is a name plus a list of documents (plain strings). :func:`load_corpus`
accepts:

- a named corpus that needs no download (:data:`NAMED_CORPORA`):

  - ``"mixed"`` (also ``None`` and ``"default"``): :func:`default_corpus` — all of
    ``"english"`` and all of ``"python-docs"``, documents shuffled together with a fixed
    seed, about half English prose and half Python documentation (by characters:
    0.86 MB and 0.77 MB; see :func:`mixed_corpus`);
  - ``"english"``: :func:`english_corpus` — natural English narrative prose: the
    sentences of the PyPI package ``markov-draftjs`` (MIT licence), Markov-chain text
    built from a public-domain Project Gutenberg novel (Dostoevsky's *The Brothers
    Karamazov*, Garnett's 1912 translation): ordinary words, names, dialogue and
    punctuation, locally grammatical though not a coherent story;
  - ``"python-docs"``: :func:`python_docs_corpus` — the Python standard library's own
    documentation text (``pydoc_data.topics``) and the docstrings of a fixed list of
    standard-library modules (about 190k Gemma tokens);

- a text file (one document; ``.txt``, ``.md`` or anything UTF-8);
- a folder: every ``.txt`` / ``.md`` file below it, in sorted path order;
- ``"hf:<dataset>"`` (or an ``owner/name`` Hugging Face dataset id) where the hub is
  reachable: its ``text`` column, train split.

Any other bare word is an unknown corpus name and a :class:`CorpusError` that lists the
named corpora.

:func:`tokenize_chunks` turns documents into fixed-length chunks of token ids, each
starting with BOS, and :func:`split_chunks` makes the deterministic train / held-out
split that SAE training uses.

Example:
    >>> from trajectory.training.corpus import load_corpus
    >>> name, docs = load_corpus(None)
    >>> name, len(docs) > 1000
    ('mixed', True)
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os
import random
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

#: The corpora :func:`load_corpus` knows by name; none needs a download.
NAMED_CORPORA = ("mixed", "english", "python-docs")

#: Seed of the document shuffle that interleaves the mixed corpus.
MIXED_SEED = 0

#: The PyPI distribution that carries the English prose (import name ``markov_draftjs``).
ENGLISH_PACKAGE = "markov-draftjs"

logger = logging.getLogger(__name__)


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


def python_docs_corpus() -> list[str]:
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


def english_corpus() -> list[str]:
    """Natural English prose shipped by the PyPI package ``markov-draftjs`` (no download).

    The package holds 792 sample documents of Markov-chain sentences built from a
    public-domain Project Gutenberg novel; each becomes one document here: the text of
    its blocks (paragraphs, headings, list items; image blocks left out), one per line,
    in the package's order. About 0.86 MB, 158k words.

    Returns:
        the non-empty documents, deterministic for a given package version.

    Raises:
        CorpusError: ``markov-draftjs`` is not installed (with the pip line to fix it).
    """
    try:
        from markov_draftjs import get_content_sample
    except ImportError:
        raise CorpusError(
            f"the English corpus comes from the PyPI package {ENGLISH_PACKAGE} (MIT; sentences made from "
            f"public-domain Project Gutenberg text), which is not installed: pip install {ENGLISH_PACKAGE}, "
            "or use the corpus 'python-docs' or a text file/folder of your own"
        ) from None
    docs = []
    for state in get_content_sample():
        lines = [b["text"].strip() for b in state.get("blocks", []) if b.get("type") != "atomic"]
        text = "\n".join(line for line in lines if line)
        if text:
            docs.append(text)
    if not docs:
        raise CorpusError(f"the installed {ENGLISH_PACKAGE} holds no text; reinstall it: pip install --force-reinstall {ENGLISH_PACKAGE}")
    return docs


def mixed_corpus(seed: int = MIXED_SEED) -> list[str]:
    """All of :func:`english_corpus` and all of :func:`python_docs_corpus`, shuffled together.

    The documents of both are put in one list and shuffled with ``random.Random(seed)``,
    so any run of consecutive chunks (and any subset :func:`split_chunks` draws) holds
    both kinds in about their overall proportion: roughly half English prose, half
    Python documentation (0.86 MB against 0.77 MB of text, 53% / 47%).

    Args:
        seed: shuffle seed (the default corpus uses :data:`MIXED_SEED`).

    Returns:
        the documents in a deterministic order for a given seed and package versions.

    Raises:
        CorpusError: the English part is not installed (see :func:`english_corpus`).
    """
    docs = english_corpus() + python_docs_corpus()
    random.Random(seed).shuffle(docs)
    return docs


def default_corpus() -> list[str]:
    """The default corpus: :func:`mixed_corpus` with :data:`MIXED_SEED`.

    Returns:
        English prose and Python documentation, about half each, shuffled together.

    Raises:
        CorpusError: ``markov-draftjs`` is not installed (pip install markov-draftjs);
            ``load_corpus(None)`` instead falls back to ``"python-docs"`` with a warning.
    """
    return mixed_corpus(MIXED_SEED)


def named_corpus(name: str) -> list[str]:
    """The documents of one of :data:`NAMED_CORPORA` (``"default"`` = ``"mixed"``).

    Raises:
        CorpusError: ``name`` is not a named corpus (the message lists them).
    """
    loaders = {"mixed": default_corpus, "default": default_corpus, "english": english_corpus,
               "python-docs": python_docs_corpus}
    if name not in loaders:
        raise CorpusError(f"unknown corpus {name!r}; named corpora: {', '.join(NAMED_CORPORA)} "
                          "(or pass a text file, a folder of .txt/.md files, or 'hf:<dataset>')")
    return loaders[name]()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"corpus file {path} is not UTF-8 text ({exc}); convert it or leave it out") from None


def load_corpus(spec: str | os.PathLike | None = None) -> tuple[str, list[str]]:
    """Resolve a corpus spec to ``(name, documents)``.

    Args:
        spec: ``None``/``"default"`` (the mixed corpus), a name from
            :data:`NAMED_CORPORA` (``"mixed"``, ``"english"``, ``"python-docs"``), a
            text file, a folder of ``.txt``/``.md`` files, or a Hugging Face dataset
            (``"hf:<name>"`` or ``"owner/name"``). Named corpora win over same-named
            files in the working folder: write ``./english`` for such a file.

    Returns:
        ``(name, docs)``: a short name for records (``"mixed"``, ``"english"``,
        ``"python-docs"``, the file or folder name, ``"hf:<dataset>"``) and the
        non-empty documents. ``None``/``"default"`` give ``"mixed"``, or
        ``"python-docs"`` with a logged warning when ``markov-draftjs`` is missing.

    Raises:
        CorpusError: an unknown corpus name, a path that does not exist or holds no
            text, or a dataset that cannot be reached (with what to do instead).
    """
    if spec is None or str(spec) == "default":
        try:
            return "mixed", default_corpus()
        except CorpusError as exc:
            logger.warning("default corpus: %s; falling back to the Python documentation only", exc)
            return "python-docs", python_docs_corpus()
    text = str(spec)
    if text in NAMED_CORPORA:
        return text, named_corpus(text)
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
    elif text.startswith("hf:") or (
        text.count("/") == 1 and not text.startswith(("/", ".", "~")) and not Path(text).suffix
    ):
        return _load_hf_dataset(text[3:] if text.startswith("hf:") else text)
    elif "/" not in text and "\\" not in text and not Path(text).suffix:
        raise CorpusError(
            f"unknown corpus {text!r}: no named corpus and no file or folder of that name; named corpora: "
            f"{', '.join(NAMED_CORPORA)} (or a text file, a folder of .txt/.md files, or 'hf:<dataset>')"
        )
    else:
        raise CorpusError(
            f"corpus {text!r} is neither an existing file nor a folder; "
            "pass a text file, a folder of .txt/.md files, 'hf:<dataset>', a named corpus "
            f"({', '.join(NAMED_CORPORA)}), or omit it for the default corpus"
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

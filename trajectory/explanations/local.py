"""Explanations for locally trained SAEs: top-activating tokens and their contexts.

SAEs trained by :mod:`trajectory.training` have no Neuronpedia pages, so the bank stores
a short label per feature made here from the training activations. A label reads

    ``'drink' 'water' 'tea' (max 12.3) | context: gave, poured, cup | "John gave a [drink]"``

and has up to three parts:

1. the feature's top tokens: the distinct tokens with the highest activation, best
   first, and the best activation (:func:`top_tokens`);
2. ``context:`` the words seen most often in the *contexts* of its top activations
   (:func:`top_contexts`): the :data:`CONTEXT_BEFORE` tokens before each of the
   ``n_examples`` strongest rows, the peak token itself left out. Only whole words count
   (letters only, at least two, lower-cased), not :data:`STOPWORDS`, not the top
   tokens, and only words found in at least two of the contexts, most frequent first;
   the part is left out when no word qualifies;
3. the strongest context itself, the peak token in brackets, cut to
   :data:`SNIPPET_CHARS` characters from the left.

Contexts look backwards only: an activation at position ``q`` of the residual stream
depends on tokens ``<= q`` alone. When ``segments`` (the chunk of each row) is given,
a context never reaches into another chunk.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

__all__ = ["STOPWORDS", "context_words", "local_explanations", "top_contexts", "top_tokens", "words_of"]

#: Tokens before the peak that make its context.
CONTEXT_BEFORE = 4
#: Strongest rows per feature whose contexts are counted.
N_EXAMPLES = 20
#: Longest example snippet in a label.
SNIPPET_CHARS = 48

#: English function words never named as context words (they are in every context).
STOPWORDS = frozenset(
    "a about above after again against all am an and any are as at be because been before being below "
    "between both but by can could did do does doing down during each few for from further had has have "
    "having he her here hers herself him himself his how if in into is it its itself just me more most my "
    "myself no nor not now of off on once only or other our ours ourselves out over own same she should so "
    "some such than that the their theirs them themselves then there these they this those through to too "
    "under until up very was we were what when where which while who whom why will with would you your "
    "yours yourself yourselves".split()
)

_WORD = re.compile(r"[A-Za-z]{2,}")
_SPECIAL = re.compile(r"<[^<>\s]*>")  # special tokens such as <unk>, <start_of_turn>


def words_of(text: str) -> list[str]:
    """The lower-cased words (runs of at least two ASCII letters) of ``text`` that are
    not :data:`STOPWORDS`, in order; special tokens like ``<unk>`` are no words.

    Examples:
        >>> words_of("John gave a drink to Mary.")
        ['john', 'gave', 'drink', 'mary']
    """
    return [w for w in (m.lower() for m in _WORD.findall(_SPECIAL.sub(" ", text))) if w not in STOPWORDS]


def _encode_nonzero(sae: "SAE", acts: "torch.Tensor", batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(feature, row, activation)`` of every non-zero SAE activation over ``acts`` ``[N, d_in]``."""
    import torch

    feats, rows_, vals = [], [], []
    with torch.no_grad():
        for start in range(0, acts.shape[0], batch_size):
            f = sae.encode(acts[start : start + batch_size].float())
            rows, cols = f.nonzero(as_tuple=True)
            feats.append(cols.numpy())
            rows_.append((rows + start).numpy())
            vals.append(f[rows, cols].numpy())
    if not feats:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    return (np.concatenate(feats).astype(np.int64), np.concatenate(rows_).astype(np.int64),
            np.concatenate(vals).astype(np.float64))


def _by_feature(feat: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(feature, indices into feat)`` per feature present, indices in their original
    (row) order: one stable sort of the feature ids (a radix sort when they fit 16 bits)."""
    if len(feat) == 0:
        return
    small = feat.astype(np.int16) if feat.max() < 2**15 else feat
    order = np.argsort(small, kind="stable")
    ids = feat[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    for start, stop in zip(starts.tolist(), np.r_[starts[1:], len(order)].tolist()):
        yield int(ids[start]), order[start:stop]


def _at_least_nth_largest(values: np.ndarray, n: int) -> np.ndarray:
    """Mask of the entries >= the ``n``-th largest of ``values`` (ties included: the
    strongest ``n`` are among them, whatever the tie-break)."""
    if len(values) <= n:
        return np.ones(len(values), dtype=bool)
    return values >= np.partition(values, len(values) - n)[len(values) - n]


def _top_tokens_from(feat, row, val, tokens: np.ndarray, n_tokens: int) -> dict[int, list[tuple[int, float]]]:
    tok = np.asarray(tokens, dtype=np.int64)[row]
    out: dict[int, list[tuple[int, float]]] = {}
    for feature, idx in _by_feature(feat):
        v, t = val[idx], tok[idx]
        m = 4 * n_tokens
        while True:
            # the entries at or above the m-th largest value hold the best value of every
            # token that beats it: with n_tokens distinct tokens among them, the top
            # n_tokens tokens are all there with their best values
            keep = _at_least_nth_largest(v, m)
            kt, kv = t[keep], v[keep]
            order = np.lexsort((-kv, kt))  # per token, best value first
            kt, kv = kt[order], kv[order]
            first = np.r_[True, kt[1:] != kt[:-1]]
            kt, kv = kt[first], kv[first]
            if len(kt) >= n_tokens or keep.all():
                break
            m *= 4
        order = np.lexsort((kt, -kv))[:n_tokens]  # best value first, ties by token id
        out[feature] = [(int(a), float(b)) for a, b in zip(kt[order], kv[order])]
    return out


def _top_rows_from(feat, row, val, n_examples: int) -> dict[int, list[tuple[int, float]]]:
    out: dict[int, list[tuple[int, float]]] = {}
    for feature, idx in _by_feature(feat):
        idx = idx[_at_least_nth_largest(val[idx], n_examples)]
        r, v = row[idx], val[idx]
        order = np.lexsort((r, -v))[:n_examples]  # best value first, ties by row
        out[feature] = [(int(a), float(b)) for a, b in zip(r[order], v[order])]
    return out


def top_tokens(
    sae: "SAE",
    acts: "torch.Tensor",
    tokens: np.ndarray,
    *,
    n_tokens: int = 3,
    batch_size: int = 4096,
) -> dict[int, list[tuple[int, float]]]:
    """Per feature, the distinct tokens on which it activates most.

    Args:
        sae: a sae-lens SAE.
        acts: ``[N, d_in]`` raw activations.
        tokens: ``[N]`` token id of each row.
        n_tokens: distinct tokens kept per feature.

    Returns:
        feature -> ``[(token_id, max activation on that token), ...]``, best first (ties:
        lower token id first); features never active are absent.
    """
    feat, row, val = _encode_nonzero(sae, acts, batch_size)
    return _top_tokens_from(feat, row, val, tokens, n_tokens)


def top_contexts(
    sae: "SAE",
    acts: "torch.Tensor",
    *,
    n_examples: int = N_EXAMPLES,
    batch_size: int = 4096,
) -> dict[int, list[tuple[int, float]]]:
    """Per feature, the rows where it activates most (the peaks of its top contexts).

    Args:
        sae: a sae-lens SAE.
        acts: ``[N, d_in]`` raw activations.
        n_examples: rows kept per feature.

    Returns:
        feature -> ``[(row, activation), ...]``, best first (ties: lower row first);
        features never active are absent.
    """
    feat, row, val = _encode_nonzero(sae, acts, batch_size)
    return _top_rows_from(feat, row, val, n_examples)


def _context_rows(row: int, segments: np.ndarray | None, before: int) -> range:
    """Rows ``row-before .. row-1`` that lie in ``row``'s segment."""
    start = max(row - before, 0)
    if segments is not None:
        while segments[start] != segments[row]:
            start += 1
    return range(start, row)


def context_words(
    rows: list[int],
    tokens: np.ndarray,
    decode: Callable[[list[int]], str],
    *,
    segments: np.ndarray | None = None,
    before: int = CONTEXT_BEFORE,
    exclude: frozenset[str] | set[str] = frozenset(),
    n_words: int = 3,
) -> list[str]:
    """The words found most often in the contexts of ``rows``.

    Each context is the ``before`` tokens before a row (same segment only), the row's own
    token left out; a word counts once per context. Words are :func:`words_of` the
    decoded context (``decode`` turns a list of token ids into text), less ``exclude``;
    only words in at least two contexts are named.

    Returns:
        up to ``n_words`` words, most contexts first (ties: alphabetical).
    """
    counts: Counter[str] = Counter()
    for row in rows:
        text = decode([int(tokens[r]) for r in _context_rows(row, segments, before)])
        counts.update(set(words_of(text)) - set(exclude))
    ranked = sorted((w for w, c in counts.items() if c >= 2), key=lambda w: (-counts[w], w))
    return ranked[:n_words]


def _snippet(row: int, tokens: np.ndarray, decode: Callable[[list[int]], str], segments, before: int) -> str:
    ids = [int(tokens[r]) for r in _context_rows(row, segments, before)]
    left, full = decode(ids), decode(ids + [int(tokens[row])])
    tail = full[len(left):] if full.startswith(left) else " " + decode([int(tokens[row])])
    gap = " " if tail[:1].isspace() else ""
    text = " ".join(f"{left}{gap}[{tail.strip()}]".split())
    return text if len(text) <= SNIPPET_CHARS else "…" + text[-(SNIPPET_CHARS - 1):]


def local_explanations(
    model: "HookedTransformer",
    sae: "SAE",
    acts: "torch.Tensor",
    tokens: np.ndarray,
    *,
    n_tokens: int = 3,
    segments: np.ndarray | None = None,
    n_examples: int = N_EXAMPLES,
    context_before: int = CONTEXT_BEFORE,
    batch_size: int = 4096,
) -> dict[int, str]:
    """Short explanations from each feature's top-activating tokens and their contexts.

    Args:
        model: the model whose tokenizer decodes the tokens.
        sae: a sae-lens SAE.
        acts: ``[N, d_in]`` raw activations (the train activations), rows in corpus order.
        tokens: ``[N]`` token id of each row.
        n_tokens: tokens named per feature.
        segments: ``[N]`` chunk (or document) id of each row: contexts stay inside one
            (``None``: the rows are one stream).
        n_examples: strongest rows whose contexts are counted per feature.
        context_before: tokens before the peak that make a context (0: no context part
            and no snippet, the label is the top tokens alone).

    Returns:
        feature -> text like
        ``'drink' 'water' 'tea' (max 12.3) | context: gave, poured | "John gave a [drink]"``
        (see the module docstring); features never active get none.
    """
    tokens = np.asarray(tokens)
    if segments is not None:
        segments = np.asarray(segments)
        if segments.shape != tokens.shape:
            raise ValueError(f"segments has shape {segments.shape} but tokens has {tokens.shape}; give one id per row")
    if len(tokens) != acts.shape[0]:
        raise ValueError(f"tokens has {len(tokens)} rows but acts has {acts.shape[0]}; give one token id per row")
    feat, row, val = _encode_nonzero(sae, acts, batch_size)
    best_tokens = _top_tokens_from(feat, row, val, tokens, n_tokens)
    best_rows = _top_rows_from(feat, row, val, n_examples) if context_before > 0 else {}
    cache: dict[tuple[int, ...], str] = {}

    def decode(ids: list[int]) -> str:
        key = tuple(ids)
        if key not in cache:
            cache[key] = model.tokenizer.decode(list(key)) if key else ""
        return cache[key]

    out = {}
    for feature, best in best_tokens.items():
        words = " ".join(f"'{_token_label(decode([t]))}'" for t, _ in best)
        text = f"{words} (max {best[0][1]:.3g})"
        if feature in best_rows:
            rows = [r for r, _ in best_rows[feature]]
            exclude = {w for t, _ in best for w in words_of(decode([t]))}
            ctx = context_words(rows, tokens, decode, segments=segments, before=context_before, exclude=exclude)
            if ctx:
                text += " | context: " + ", ".join(ctx)
            text += f' | "{_snippet(rows[0], tokens, decode, segments, context_before)}"'
        out[feature] = text
    return out


def _token_label(text: str, width: int = 14) -> str:
    """A token's text, stripped (its repr when only whitespace), cut to ``width`` chars."""
    text = text.strip() or repr(text)[1:-1] or "?"
    return text if len(text) <= width else text[: width - 1] + "…"

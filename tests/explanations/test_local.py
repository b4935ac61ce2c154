"""Local explanations: top tokens plus the words of the top-activating contexts."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch

from trajectory.explanations.local import STOPWORDS, context_words, local_explanations, top_contexts, words_of

CTX = 10  # chunk length with BOS; 9 rows per chunk


@pytest.fixture(scope="module")
def corpus_acts(tiny_model):
    """``(acts [N, d], tokens [N], segments [N])`` of layer 1 on the tiny corpus, BOS rows left out."""
    from trajectory.testing import CORPUS_SENTENCES
    from trajectory.training.corpus import tokenize_chunks

    chunks = tokenize_chunks(tiny_model, CORPUS_SENTENCES * 3, context_length=CTX)
    _, cache = tiny_model.run_with_cache(chunks, names_filter="blocks.1.hook_resid_post")
    acts = cache["blocks.1.hook_resid_post"][:, 1:].reshape(-1, tiny_model.cfg.d_model)
    tokens = chunks[:, 1:].reshape(-1).numpy()
    segments = np.repeat(np.arange(len(chunks)), CTX - 1)
    return acts, tokens, segments


def _reference_label(tok, acts_f, tokens, segments, before=4, n_examples=20):
    """One feature's label, by brute force over rows (``acts_f`` ``[N]``)."""
    dec = lambda ids: tok.decode([int(i) for i in ids]) if len(ids) else ""  # noqa: E731
    active = [(float(a), r) for r, a in enumerate(acts_f.tolist()) if a > 0]
    best_by_token: dict[int, float] = {}
    for a, r in active:
        t = int(tokens[r])
        best_by_token[t] = max(best_by_token.get(t, 0.0), a)
    top = sorted(best_by_token.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    shown = []
    for t, _ in top:
        s = dec([t]).strip() or repr(dec([t]))[1:-1] or "?"
        shown.append(s if len(s) <= 14 else s[:13] + "…")
    label = " ".join(f"'{s}'" for s in shown) + f" (max {top[0][1]:.3g})"
    rows = [r for _, r in sorted(active, key=lambda ar: (-ar[0], ar[1]))[:n_examples]]

    def window(r):
        return [q for q in range(max(r - before, 0), r) if segments[q] == segments[r]]

    def words(text):
        text = re.sub(r"<[^<>\s]*>", " ", text)
        return [w.lower() for w in re.findall(r"[A-Za-z]+", text) if len(w) >= 2 and w.lower() not in STOPWORDS]

    own = {w for t, _ in top for w in words(dec([t]))}
    counts = Counter()
    for r in rows:
        counts.update(set(words(dec(tokens[window(r)]))) - own)
    common = sorted((w for w, c in counts.items() if c >= 2), key=lambda w: (-counts[w], w))[:3]
    if common:
        label += " | context: " + ", ".join(common)
    r = rows[0]
    left, full = dec(tokens[window(r)]), dec(list(tokens[window(r)]) + [tokens[r]])
    tail = full[len(left):]
    snippet = " ".join((left + (" " if tail[:1].isspace() else "") + "[" + tail.strip() + "]").split())
    if len(snippet) > 48:
        snippet = "…" + snippet[-47:]
    return label + f' | "{snippet}"'


def test_labels_match_a_brute_force_reference(tiny_model, tiny_bank, corpus_acts):
    acts, tokens, segments = corpus_acts
    sae = tiny_bank[1]
    labels = local_explanations(tiny_model, sae, acts, tokens, segments=segments)
    with torch.no_grad():
        f = sae.encode(acts)  # [N, d_sae]: sae-lens's own encode
    checked = with_context = 0
    for feature in range(sae.cfg.d_sae):
        if not (f[:, feature] > 0).any():
            assert feature not in labels
            continue
        assert labels[feature] == _reference_label(tiny_model.tokenizer, f[:, feature], tokens, segments)
        checked += 1
        with_context += " | context: " in labels[feature]
    assert checked > 20 and with_context > 10  # the context part is not a dead branch


def test_contexts_stay_inside_their_chunk(tiny_model, tiny_bank, corpus_acts):
    acts, tokens, segments = corpus_acts
    sae = tiny_bank[1]
    tops = top_contexts(sae, acts, n_examples=5)
    with torch.no_grad():
        f = sae.encode(acts)
    for feature, rows in list(tops.items())[:10]:  # the strongest rows, best first
        values = f[:, feature]
        want = sorted(((-float(a), r) for r, a in enumerate(values.tolist()) if a > 0))[:5]
        assert [r for r, _ in rows] == [r for _, r in want]
    # a row opening its chunk has no context: with segments, nothing from the chunk before
    decode = lambda ids: tiny_model.tokenizer.decode(list(ids))  # noqa: E731
    first_rows = [int(r) for r in np.flatnonzero(np.r_[True, segments[1:] != segments[:-1]])][:6]
    assert context_words(first_rows, tokens, decode, segments=segments) == []
    # without segments the windows reach back into the chunk before (one stream)
    assert context_words(first_rows[1:], tokens, decode) != []


def test_no_context_part_when_asked_and_bad_shapes(tiny_model, tiny_bank, corpus_acts):
    acts, tokens, segments = corpus_acts
    plain = local_explanations(tiny_model, tiny_bank[1], acts, tokens, context_before=0)
    assert plain and all(" | " not in v and v.endswith(")") for v in plain.values())
    with pytest.raises(ValueError, match="one id per row"):
        local_explanations(tiny_model, tiny_bank[1], acts, tokens, segments=segments[:-1])
    with pytest.raises(ValueError, match="one token id per row"):
        local_explanations(tiny_model, tiny_bank[1], acts, tokens[:-1])


def test_words_of_drops_function_words_and_special_tokens():
    assert words_of("When Mary and John went to the store, John gave a drink to") == [
        "mary", "john", "went", "store", "john", "gave", "drink"]
    assert words_of("<start_of_turn>user I'm x1 ok") == ["user", "ok"]

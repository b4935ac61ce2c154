"""Explanations for locally trained SAEs: each feature's top-activating corpus tokens.

SAEs trained by :mod:`trajectory.training` have no Neuronpedia pages, so the bank stores
a short label per feature made here from the training activations, like
``'room' 'dark' 'door' (max 12.3)``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

__all__ = ["local_explanations", "top_tokens"]


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
    import torch

    feats, toks, vals = [], [], []
    tokens_t = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    with torch.no_grad():
        for start in range(0, acts.shape[0], batch_size):
            f = sae.encode(acts[start : start + batch_size].float())
            rows, cols = f.nonzero(as_tuple=True)
            feats.append(cols.numpy())
            toks.append(tokens_t[start + rows].numpy())
            vals.append(f[rows, cols].numpy())
    if not feats:
        return {}
    feat = np.concatenate(feats).astype(np.int64)
    tok = np.concatenate(toks).astype(np.int64)
    val = np.concatenate(vals).astype(np.float64)
    # best activation per (feature, token): sort by feature, token, -value; keep firsts
    order = np.lexsort((-val, tok, feat))
    feat, tok, val = feat[order], tok[order], val[order]
    first = np.ones(len(feat), dtype=bool)
    first[1:] = (feat[1:] != feat[:-1]) | (tok[1:] != tok[:-1])
    feat, tok, val = feat[first], tok[first], val[first]
    # per feature, the n_tokens best of those
    order = np.lexsort((tok, -val, feat))
    feat, tok, val = feat[order], tok[order], val[order]
    starts = np.r_[0, np.flatnonzero(feat[1:] != feat[:-1]) + 1]
    rank = np.arange(len(feat)) - np.repeat(starts, np.diff(np.r_[starts, len(feat)]))
    keep = rank < n_tokens
    out: dict[int, list[tuple[int, float]]] = {}
    for f_, t_, v_ in zip(feat[keep].tolist(), tok[keep].tolist(), val[keep].tolist()):
        out.setdefault(int(f_), []).append((int(t_), float(v_)))
    return out


def local_explanations(
    model: "HookedTransformer",
    sae: "SAE",
    acts: "torch.Tensor",
    tokens: np.ndarray,
    *,
    n_tokens: int = 3,
) -> dict[int, str]:
    """Short explanations from each feature's top-activating tokens in the corpus.

    Args:
        model: the model whose tokenizer decodes the tokens.
        sae: a sae-lens SAE.
        acts: ``[N, d_in]`` raw activations (the train activations).
        tokens: ``[N]`` token id of each row.
        n_tokens: tokens named per feature.

    Returns:
        feature -> text like ``'room' 'dark' 'door' (max 12.3)``; features never active
        get none.
    """
    out = {}
    for feature, best in top_tokens(sae, acts, tokens, n_tokens=n_tokens).items():
        words = " ".join(f"'{_token_label(model, t)}'" for t, _ in best)
        out[feature] = f"{words} (max {best[0][1]:.3g})"
    return out


def _token_label(model: "HookedTransformer", token_id: int, width: int = 14) -> str:
    """The token's text, stripped (its repr when only whitespace), cut to ``width`` chars."""
    text = model.tokenizer.decode([int(token_id)])
    text = text.strip() or repr(text)[1:-1] or "?"
    return text if len(text) <= width else text[: width - 1] + "…"

"""Encoding every step vector of a layer with its SAE, by mixing in feature space.

An SAE encoder is linear before its activation (:class:`LinearEncoder`), so every step
row's pre-activations are a combination of vectors encoded once per layer::

    pre[q, j] = (resid_pre[q] - b_in) W_enc + b_enc
                + (Σ_{k≤j} Σ_h pattern[h,q,k] · F[k,h] + F_b) / r[q, j]

with ``F[k,h] = (w ⊙ v[k,kv(h)] W_O[h]) W_enc`` each per-key, per-head value vector
encoded once, ``F_b = (w ⊙ b_O) W_enc``, ``w`` the post-norm weight and ``r[q, j]``
the RMS of the partial sum (in d_model space; the frozen scale, or 1, in the other
variants). All of a layer's encoded vectors come from ONE product with ``W_enc``
(reading it dominates at these sizes). The cumulative sums over keys are taken in
blocks of keys (a prefix per block plus the keys inside it), so each step row costs a
product of inner dimension ``B·n_heads + 2Q`` instead of ``d_model``; only the
elementwise activation and the top-k remain per row (:meth:`LinearEncoder.select`).

Rows of a chunk of queries are in ``(q, step)`` order: for each query ``q``, ``q + 3``
rows (initial, keys ``0..q``, mlp). :func:`select_chunk` gives their top-k lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

from trajectory.evolution.topk import select_active_topk, select_candidates_topk

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from trajectory.evolution.attention import LayerActivations

#: Keys per block in the feature-space mixing (see :func:`_mixed_pieces`): the least.
_KEY_BLOCK = 8
#: Elements of one piece's ``[rows, d_sae]`` buffer that narrow SAEs grow blocks up to (8 MB float32).
_PIECE_ELEMENTS = 2**21


@dataclass
class LinearEncoder:
    """An SAE encoder written as ``activation((x - b_in) @ W_enc + b_enc)``.

    Attributes:
        kind: ``"jumprelu"``, ``"relu"`` or ``"topk"``.
        W_enc: ``[d_in, d_sae]`` float32; b_enc: ``[d_sae]``; b_in: ``[d_in]``
            (``b_dec`` when the SAE subtracts it from its input, else zeros).
        threshold: ``[d_sae]`` (jumprelu); sae_k: the SAE's own k (topk);
        feature_scale: ``[d_sae]`` multiplying the pre-activations (TopK SAEs that
            rescale by decoder norm), else ``None``.
    """

    kind: str
    W_enc: "torch.Tensor"
    b_enc: "torch.Tensor"
    b_in: "torch.Tensor"
    threshold: "torch.Tensor | None" = None
    sae_k: int = 0
    feature_scale: "torch.Tensor | None" = None

    @classmethod
    def from_sae(cls, sae: "SAE", device) -> "LinearEncoder | None":
        """The linear form of ``sae`` on ``device`` (float32), or ``None`` when its encoder is not one."""
        import torch

        kinds = {"JumpReLUSAE": "jumprelu", "StandardSAE": "relu", "TopKSAE": "topk"}
        kind = kinds.get(type(sae).__name__)
        cfg = sae.cfg
        if kind is None or getattr(cfg, "normalize_activations", "none") not in ("none", None):
            return None
        if getattr(cfg, "hook_head_index", None) is not None:
            return None

        def f32(t):
            return t.detach().to(device=device, dtype=torch.float32)

        b_in = f32(sae.b_dec) if cfg.apply_b_dec_to_input else torch.zeros(cfg.d_in, device=device)
        enc = cls(kind=kind, W_enc=f32(sae.W_enc), b_enc=f32(sae.b_enc), b_in=b_in)
        if kind == "jumprelu":
            enc.threshold = f32(sae.threshold)
        if kind == "topk":
            enc.sae_k = int(cfg.k)
            if getattr(cfg, "rescale_acts_by_decoder_norm", False):
                enc.feature_scale = f32(sae.W_dec).norm(dim=-1)
        return enc

    def pre(self, x: "torch.Tensor") -> "torch.Tensor":
        """Pre-activations of d_model vectors ``x [..., d_in]`` -> ``[..., d_sae]`` (no feature_scale)."""
        return (x - self.b_in) @ self.W_enc + self.b_enc

    def select(self, pre: "torch.Tensor", k: int):
        """Top-k active features of each row of pre-activations ``[rows, d_sae]``
        (feature_scale already applied), activated as the SAE's ``encode`` does; returns
        what :func:`select_active_topk` returns. JumpReLU and ReLU only compute the mask
        (the values are ``pre`` itself); TopK ranks the SAE's own top ``sae_k`` directly,
        with no ``[rows, d_sae]`` activation matrix."""
        import torch

        if self.kind == "jumprelu":  # relu(pre) * (pre > θ) is pre where pre > max(θ, 0)
            return select_active_topk(pre, k, pre > self.threshold.clamp(min=0))
        if self.kind == "relu":
            return select_active_topk(pre, k, pre > 0)
        vals, idx = torch.topk(pre, self.sae_k, dim=-1, sorted=False)
        return select_candidates_topk(vals.relu(), idx, k)


# ------------------------------------------------------------------- chunking
def query_chunks(N: int, batch_rows: int, n_heads: int | None = None) -> list[list[int]]:
    """Queries 1..N-1 grouped so that each group's step rows fit ``batch_rows``.

    With ``n_heads`` (feature-space mixing) a group also has at most
    ``max(8, _KEY_BLOCK·n_heads/2)`` queries: few queries per chunk keep the inner
    dimension ``B·n_heads + 2Q`` of its products small.
    """
    max_queries = max(8, _KEY_BLOCK * n_heads // 2) if n_heads is not None else None
    chunks, cur = [], []
    for q in range(1, N):
        if cur and ((len(cur) + 1) * (q + 3) > batch_rows or (max_queries and len(cur) >= max_queries)):
            chunks.append(cur)
            cur = []
        cur.append(q)
    if cur:
        chunks.append(cur)
    return chunks


def layer_steps_direct(
    model: "HookedTransformer", acts: "LayerActivations", postnorm: str, queries: list[int], device
) -> "torch.Tensor":
    """Step vectors of ``queries`` in d_model space: ``[Σ_q (q + 3), d_model]``, rows (q, step)."""
    import torch

    from trajectory.evolution.attention import attn_partial_sums

    P = attn_partial_sums(model, acts, acts.layer, queries=queries, postnorm=postnorm).to(device)
    pre = acts.resid_pre.to(device, torch.float32)
    post = acts.resid_post.to(device, torch.float32)
    parts = []
    for i, q in enumerate(queries):
        parts += [pre[q : q + 1], pre[q] + P[i, : q + 1], post[q : q + 1]]
    return torch.cat(parts)


# ------------------------------------------------------- feature-space mixing
def select_chunk(
    model: "HookedTransformer", acts: "LayerActivations", enc: LinearEncoder, postnorm: str, queries: list[int],
    cache: dict, k: int, always_mix: bool = True,
) -> tuple:
    """Top-k lists of all step rows of ``queries`` (``Σ_q (q + 3)`` rows, (q, step) order),
    as :func:`select_active_topk` returns them. ``cache``: one dict per layer, filled on
    the first chunk (see :func:`feature_space_pieces`)."""
    pieces, positions = [], []
    for pre, final_pos in feature_space_pieces(model, acts, enc, postnorm, queries, cache, always_mix):
        pieces.append(enc.select(pre, k))
        positions.append(None if final_pos is None else final_pos.cpu().numpy())
        del pre
    if positions[0] is None:
        return pieces[0]
    joined = tuple(np.concatenate([pc[i] for pc in pieces]) for i in range(4))
    return _reorder_rows(joined, np.concatenate(positions))


def feature_space_pieces(
    model: "HookedTransformer", acts: "LayerActivations", enc: LinearEncoder, postnorm: str, queries: list[int],
    cache: dict, always_mix: bool = True,
) -> Iterator[tuple]:
    """Pre-activations of all step rows of ``queries``, mixed in feature space.

    Every row is a combination of vectors already in feature space: the per-key,
    per-head encoded values ``F[k, h]``, the encoded output bias ``F_b``, and the
    encoded ``resid_pre[q]`` / ``resid_post[q]`` (:func:`_encode_layer`, once per layer
    into ``cache``). When mixing costs more than encoding the d_model step vectors (and
    ``always_mix`` is false), those are put through the same linear encoder instead.

    Yields:
        ``(pre [rows, d_sae] float32, final_pos [rows] or None)`` pieces that together
        cover the ``Σ_q (q + 3)`` step rows of the chunk: piece row i is row
        ``final_pos[i]`` of the chunk in (q, step) order (``None``: one piece, already in
        order). Each piece is consumed (activation, top-k) before the next is made, so
        it lives in one reused buffer of a few MB that stays in the CPU cache; the
        whole chunk's ``[rows, d_sae]`` never exists at once.
    """
    if "F" not in cache:
        cache.update(_encode_layer(model, acts, enc, postnorm))
    Q, K = len(queries), queries[-1] + 1
    if not always_mix and min(K, _KEY_BLOCK) * cache["H"] + 2 * Q >= cache["u"].shape[1]:
        # mixing would cost more than encoding the d_model step vectors: encode those
        x = layer_steps_direct(model, acts, postnorm, queries, enc.W_enc.device)
        yield (x - enc.b_in) @ cache["W"] + cache["b_enc"], None
        return
    yield from _mixed_pieces(cache, queries, postnorm)


def _encode_layer(model: "HookedTransformer", acts: "LayerActivations", enc: LinearEncoder, postnorm: str) -> dict:
    """The layer's vectors in feature space, from ONE product with ``W_enc``: ``F [N·h, f]``
    (row ``k·h + h``), ``Fb [1, f]``, ``base``/``mlp [N, f]`` (encoder pre-activations of
    resid_pre/resid_post), plus what the mixing needs in d_model space (``u [N·h, d]``)."""
    import torch

    from trajectory.evolution.attention import _norm_params, head_values, output_bias

    device = enc.W_enc.device
    w, eps = _norm_params(model, acts.layer, postnorm, device, torch.float32)
    u = head_values(model, acts).to(device)  # [N, h, d]
    N, H, d = u.shape
    bO = output_bias(model, acts.layer, device)
    W = enc.W_enc if enc.feature_scale is None else enc.W_enc * enc.feature_scale
    b_enc = enc.b_enc if enc.feature_scale is None else enc.b_enc * enc.feature_scale
    # one product for all of them: reading W_enc (d_model × d_sae) dominates at these sizes
    X = torch.cat(
        [
            (u * w).reshape(N * H, d),  # per-key, per-head values through W_O and the norm weight
            (w * bO)[None],  # the output bias
            acts.resid_pre.to(device, torch.float32) - enc.b_in,
            acts.resid_post.to(device, torch.float32) - enc.b_in,
        ]
    )
    Y = X @ W
    return dict(
        u=u.reshape(N * H, d),
        W=W,
        b_enc=b_enc,
        bO=bO,
        eps=eps,
        H=H,
        F=Y[: N * H],
        Fb=Y[N * H : N * H + 1],
        base=Y[N * H + 1 : N * H + 1 + N] + b_enc,
        mlp=Y[N * H + 1 + N :] + b_enc,
        pattern=acts.pattern.to(device, torch.float32),
        scale=None if acts.scale is None else acts.scale.to(device, torch.float32),
    )


def _inverse_rms(c: dict, postnorm: str, queries: list[int]) -> "torch.Tensor":
    """``1/r [Q, K]`` for every (q, j) of the (consecutive) ``queries``: the partial
    sum's own RMS (in d_model space), the frozen scale, or 1."""
    import torch

    from trajectory.evolution.attention import mix_keys

    H = c["H"]
    q0, q1 = queries[0], queries[-1]
    Q, K = len(queries), q1 + 1
    if postnorm == "per_partial_sum":
        p = c["pattern"][:, q0 : q1 + 1, :K]  # [h, Q, K]
        S = mix_keys(p, c["u"][: K * H].reshape(K, H, -1)).cumsum(1) + c["bO"]
        return (S.pow(2).mean(-1) + c["eps"]).rsqrt()
    if postnorm == "frozen_scale":
        return (1.0 / c["scale"][q0 : q1 + 1])[:, None].expand(Q, K)
    return torch.ones(Q, K, device=c["F"].device)


def _mixed_pieces(c: dict, queries: list[int], postnorm: str) -> Iterator[tuple]:
    """The pieces of :func:`feature_space_pieces` by mixing: one per block of keys, then
    one with the initial and mlp rows of every query.

    Keys in blocks of B: row (q, j) with j in block b is
    ``base[q] + (P[q, b] + Σ_{b0 ≤ k ≤ j} Σ_h pattern[h,q,k] F[k,h]) / r[q, j]``
    where ``P[q, b] = F_b + all keys before the block`` (one small product per block), so
    each row's product has inner dimension ``B·h + 2Q`` instead of ``K·h + 1 + 2Q``.
    B is ``_KEY_BLOCK``, or more for narrow SAEs, up to a piece of ``_PIECE_ELEMENTS``
    (fewer, larger pieces: per-piece overhead dominates there) while ``B·h + 2Q`` stays
    below d_model.
    """
    import torch

    H, F = c["H"], c["F"]
    device = F.device
    q0, q1 = queries[0], queries[-1]
    Q, K = len(queries), q1 + 1
    p = c["pattern"][:, q0 : q1 + 1, :K]  # [h, Q, K]
    inv_r = _inverse_rms(c, postnorm, queries)
    f, d_model = F.shape[1], c["u"].shape[1]
    B = max(_KEY_BLOCK, min(_PIECE_ELEMENTS // (Q * f), (d_model - 2 * Q - 1) // H))
    qs = torch.tensor(queries, device=device)
    sizes = qs + 3
    starts = torch.cumsum(sizes, 0) - sizes  # final row of each query's "initial" step
    # one buffer per layer, reused by every piece of every chunk (a fresh allocation would
    # pay its page faults again each time, and a small one stays in the CPU cache)
    need = max(B * len(queries), 2 * Q)
    buf = c.get("buffer")
    if buf is None or buf.shape[0] < need:
        buf = c["buffer"] = torch.empty(need, f, device=device)
    prefix = c["Fb"].expand(Q, -1).clone()  # P[:, b]: F_b + keys before the block
    for k0 in range(0, K, B):
        k1 = min(k0 + B, K)
        pre, row_qi, row_j = _block_piece(c, p[:, :, k0:k1], inv_r, qs, q0, prefix, k0, buf)
        yield pre, starts[row_qi] + 1 + row_j
        if k1 < K:  # move the prefix past this block
            blk = p[:, :, k0:k1].permute(1, 2, 0).reshape(Q, -1)  # [Q, Bk·h]
            prefix += blk @ F[k0 * H : k1 * H]
    pre = buf[: 2 * Q]
    pre[:Q] = c["base"][qs]
    pre[Q:] = c["mlp"][qs]
    yield pre, torch.cat([starts, starts + qs + 2])


def _block_piece(c: dict, p_block, inv_r, qs, q0: int, prefix, k0: int, buf) -> tuple:
    """Pre-activations of the rows (q, j) whose key j lies in the block ``k0 .. k0 + Bk - 1``.

    Args: ``p_block [h, Q, Bk]`` the chunk's pattern over the block's keys, ``inv_r [Q, K]``,
    ``qs [Q]`` the queries (from ``q0`` on), ``prefix [Q, f]`` (``P[q, b]``), ``buf`` the reused buffer.
    Returns ``(pre [rows, f]`` (a view of ``buf``), ``row_qi [rows]`` (chunk query index),
    ``row_j [rows]`` (key))``, rows grouped by query, keys ascending.
    """
    import torch

    H, device = c["H"], qs.device
    Q, Bk = p_block.shape[1], p_block.shape[2]
    k1 = k0 + Bk
    live = qs >= k0  # queries with a key in this block
    qi = torch.nonzero(live).flatten()
    n_j = torch.clamp(qs[qi] - k0 + 1, max=Bk)  # rows per live query
    row_qi = torch.repeat_interleave(qi, n_j)
    row_j = k0 + torch.cat([torch.arange(int(m), device=device) for m in n_j])
    rows = row_qi.numel()
    inv = inv_r[row_qi, row_j]  # [rows]
    coef = p_block[:, row_qi].permute(1, 2, 0)  # [rows, Bk, h]
    coef = coef * (torch.arange(k0, k1, device=device)[None, :] <= row_j[:, None])[..., None]
    T = torch.zeros(rows, Bk * H + 2 * Q, device=device)
    T[:, : Bk * H] = coef.reshape(rows, -1) * inv[:, None]
    ar = torch.arange(rows, device=device)
    T[ar, Bk * H + row_qi] = inv  # prefix P[q, b]
    T[ar, Bk * H + Q + row_qi] = 1.0  # base[q]
    G = torch.cat([c["F"][k0 * H : k1 * H], prefix, c["base"][q0 : q0 + Q]])
    pre = buf[:rows]
    torch.mm(T, G, out=pre)
    return pre, row_qi, row_j


def _reorder_rows(part: tuple, final_pos: np.ndarray) -> tuple:
    """Put ragged selection results ``(idx, val, counts, n_active)`` from buffer order into
    final order (buffer row i goes to position ``final_pos[i]``)."""
    idx, val, counts, n_active = part
    order = np.argsort(final_pos, kind="stable")  # buffer rows, in final order
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    new_counts = counts[order]
    take = np.repeat(offsets[:-1][order] - np.concatenate([[0], np.cumsum(new_counts)[:-1]]), new_counts)
    take += np.arange(take.size, dtype=np.int64)
    return idx[take], val[take], new_counts, n_active[order]

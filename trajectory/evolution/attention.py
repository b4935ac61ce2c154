"""Attention contributions: what each key token adds to each query through one layer.

For layer L, query q and key k ≤ q (causal; keys outside a sliding window get zero
attention and so contribute nothing)::

    c[q, k] = Σ_h pattern[h, q, k] · v[k, kv(h)] @ W_O[h]                 [d_model]

with grouped-query attention mapping query head ``h`` to value head
``kv(h) = h // (n_heads / n_kv_heads)``. Summed over keys, plus ``b_O``, this is the
layer's raw attention output. Models with a post-attention norm (Gemma's
``ln1_post``, an RMSNorm with weight ``w``) then normalise it; this module offers the
two ways the method needs (``postnorm``):

``"per_partial_sum"`` (the original research code)
    every partial sum ``P[q, j] = b_O + Σ_{k≤j} c[q, k]`` is normalised with its own RMS:
    ``w ⊙ P / sqrt(mean(P²) + eps)``. Not a per-key split; its last partial sum equals
    ``hook_attn_out[q]`` exactly.
``"frozen_scale"`` (the exact linear split)
    the norm's scale is frozen at the full sum's (``blocks.L.ln1_post.hook_scale``), so
    ``w ⊙ c[q, k] / scale[q]`` sums over keys to ``hook_attn_out[q]``.
``"none"``
    no norm (GPT-2 style models, where it is the only choice).

``b_O`` (zero in Gemma) belongs to every partial sum; in a per-key split it is
attributed to key 0, which is in every partial sum.

One forward pass gives every prefix at once: with causal attention, position q of the
full prompt is the last position of the prefix of length q + 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Sequence

from trajectory.hooks import attn_hook, resid_post, resid_pre

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformer_lens import HookedTransformer

POSTNORMS = ("per_partial_sum", "frozen_scale", "none")


@dataclass
class LayerActivations:
    """What one forward pass records for one layer (batch dimension removed).

    Attributes:
        layer: block index.
        resid_pre: ``[pos, d_model]`` residual stream entering the block.
        resid_post: ``[pos, d_model]`` residual stream leaving it.
        pattern: ``[n_heads, pos, pos]`` attention pattern (query, key), after soft-capping,
            masking and softmax.
        v: ``[pos, n_kv_heads, d_head]`` value vectors.
        scale: ``[pos]`` the post-attention norm's scale (RMS of the raw attention
            output), ``None`` when the model has no post-attention norm.
    """

    layer: int
    resid_pre: "torch.Tensor"
    resid_post: "torch.Tensor"
    pattern: "torch.Tensor"
    v: "torch.Tensor"
    scale: "torch.Tensor | None" = None

    @property
    def n_pos(self) -> int:
        return int(self.resid_pre.shape[0])


def has_postnorm(model: "HookedTransformer", layer: int) -> bool:
    """Whether block ``layer`` normalises its attention output (Gemma's ``ln1_post``)."""
    return hasattr(model.blocks[layer], "ln1_post")


def resolve_postnorm(model: "HookedTransformer", layer: int, postnorm: str) -> str:
    """The variant actually used at ``layer``: ``"none"`` when the model has no post-norm."""
    if postnorm not in POSTNORMS:
        raise ValueError(f"unknown postnorm {postnorm!r}; use one of {', '.join(POSTNORMS)}")
    if not has_postnorm(model, layer):
        return "none"
    if postnorm == "none":
        raise ValueError(
            f"layer {layer} of {model.cfg.model_name} has a post-attention norm; "
            "postnorm='none' would ignore it — use 'per_partial_sum' or 'frozen_scale'"
        )
    norm = model.blocks[layer].ln1_post
    if type(norm).__name__ not in ("RMSNorm", "RMSNormPre"):
        raise NotImplementedError(
            f"post-attention norm {type(norm).__name__} of layer {layer} is not supported "
            "(only RMS norms, as in Gemma 2/3)"
        )
    return postnorm


def hook_names(model: "HookedTransformer", layers: Iterable[int]) -> list[str]:
    """TransformerLens hooks :func:`forward_activations` records for ``layers``."""
    names = []
    for L in layers:
        names += [resid_pre(L), resid_post(L), attn_hook(L, "pattern"), attn_hook(L, "v")]
        if has_postnorm(model, L):
            names.append(_postnorm_scale(L))
    return names


def _postnorm_scale(layer: int) -> str:
    """The hook of the post-attention norm's scale (RMS of the raw attention output)."""
    return f"blocks.{layer}.ln1_post.hook_scale"


def forward_activations(
    model: "HookedTransformer", tokens: "torch.Tensor", layers: Sequence[int]
) -> dict[int, LayerActivations]:
    """Run ``model`` once on ``tokens`` (``[pos]`` or ``[1, pos]``) and keep, per layer,
    what the decomposition needs: ``{layer: LayerActivations}``. Stops after the last
    requested layer. (Nothing is written to disk; for an on-disk activation store of a
    corpus see :func:`trajectory.training.store.collect_activations`.)"""
    import torch

    if tokens.ndim == 1:
        tokens = tokens[None]
    layers = sorted(int(L) for L in layers)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens.to(model.cfg.device),
            names_filter=hook_names(model, layers),
            stop_at_layer=max(layers) + 1,
            return_type=None,
        )
    return {L: layer_activations(cache, model, L) for L in layers}


def batch_forward_activations(
    model: "HookedTransformer", prompts: Sequence["torch.Tensor"], layers: Sequence[int]
) -> Iterator[tuple[int, list[LayerActivations]]]:
    """ONE forward pass over several prompts of different lengths, one layer at a time.

    The prompts (token ids ``[N_i]``, BOS included) are right-padded to ``[B, N_max]``
    and every position is marked real (an all-ones attention mask, passed explicitly so
    that TransformerLens never derives one from pad or BOS token ids). Right padding
    keeps the real positions exact: with causal attention a query ``q < N_i`` attends to
    keys ``0..q`` only, all real; rotary or learned positions count from 0 as in the
    one-prompt run; norms and MLPs act per position. The padded positions compute
    values nobody reads and are cut away.

    The blocks run one after the other (``start_at_layer`` / ``stop_at_layer``), so at
    any time memory holds the running residual ``[B, N_max, d_model]`` and ONE layer's
    recorded hooks (pattern ``[B, n_heads, N_max, N_max]``, v, resid pre/post, scale).

    Yields:
        ``(layer, [LayerActivations of prompt i, sliced to its N_i positions])`` for
        each of ``layers`` in ascending order; the slices are views of the layer's batch
        tensors, freed once the caller drops them. Stops after the last requested layer.
    """
    import torch

    layers = sorted({int(L) for L in layers})
    lengths = [int(ids.shape[-1]) for ids in prompts]
    if not lengths or min(lengths) < 1 or not layers:
        raise ValueError("batch_forward_activations needs prompts of at least one token and at least one layer")
    device = model.cfg.device
    tokens = torch.zeros(len(lengths), max(lengths), dtype=torch.long)  # pad id: never read
    for i, ids in enumerate(prompts):
        tokens[i, : lengths[i]] = torch.as_tensor(ids, dtype=torch.long).flatten()
    wanted = set(layers)
    with torch.no_grad():
        resid, _, shortformer, mask = model.input_to_embed(
            tokens.to(device), attention_mask=torch.ones_like(tokens).to(device)
        )
        for L in range(layers[-1] + 1):
            run = dict(start_at_layer=L, stop_at_layer=L + 1, shortformer_pos_embed=shortformer, attention_mask=mask)
            if L not in wanted:
                resid = model(resid, **run)
                continue
            resid, cache = model.run_with_cache(resid, names_filter=hook_names(model, [L]), **run)
            yield L, [layer_activations(cache, model, L, batch=i, n_pos=n) for i, n in enumerate(lengths)]
            del cache


def layer_activations(
    cache: Mapping[str, "torch.Tensor"], model: "HookedTransformer", layer: int, *, batch: int = 0,
    n_pos: int | None = None,
) -> LayerActivations:
    """Pick layer ``layer``'s tensors out of a TransformerLens ``ActivationCache``: prompt
    ``batch`` of the batch, its first ``n_pos`` positions (default: all)."""
    L, b, n = layer, batch, n_pos
    scale = None
    if has_postnorm(model, L):
        scale = cache[_postnorm_scale(L)][b, :n, 0]
    return LayerActivations(
        layer=L,
        resid_pre=cache[resid_pre(L)][b, :n],
        resid_post=cache[resid_post(L)][b, :n],
        pattern=cache[attn_hook(L, "pattern")][b, :, :n, :n],
        v=cache[attn_hook(L, "v")][b, :n],
        scale=scale,
    )


def _as_layer_activations(acts, model, layer) -> LayerActivations:
    if isinstance(acts, LayerActivations):
        return acts
    return layer_activations(acts, model, layer)


def head_values(model: "HookedTransformer", acts: LayerActivations, dtype=None) -> "torch.Tensor":
    """Per-key, per-query-head value vectors through W_O: ``u[k, h] = v[k, kv(h)] @ W_O[h]``.

    Returns ``[pos, n_heads, d_model]``.
    """
    import torch

    attn = model.blocks[acts.layer].attn
    W_O = attn.W_O  # [n_heads, d_head, d_model]
    dtype = dtype or torch.float32
    n_heads = W_O.shape[0]
    v = acts.v.to(dtype)
    n_kv = v.shape[1]
    if n_heads % n_kv:
        raise ValueError(f"layer {acts.layer}: {n_heads} query heads cannot share {n_kv} value heads")
    v = v.repeat_interleave(n_heads // n_kv, dim=1)  # [pos, n_heads, d_head]
    return torch.einsum("khd,hdm->khm", v, W_O.to(device=v.device, dtype=dtype))


def mix_keys(pattern: "torch.Tensor", u: "torch.Tensor") -> "torch.Tensor":
    """``out[q, k] = Σ_h pattern[h, q, k] · u[k, h]``: ``[h, q, k] × [k, h, m] -> [q, k, m]``.

    A batched product over keys on contiguous operands (torch's einsum picks a very
    slow strided path for this contraction on CPU).
    """
    import torch

    return torch.bmm(pattern.permute(2, 1, 0).contiguous(), u.contiguous()).transpose(0, 1)


def _norm_params(model, layer: int, postnorm: str, device, dtype):
    """(w [d_model], eps) of the post-attention norm, ones/0 when there is none."""
    import torch

    if postnorm == "none":
        return torch.ones(model.cfg.d_model, device=device, dtype=dtype), 0.0
    norm = model.blocks[layer].ln1_post
    w = getattr(norm, "w", None)
    w = torch.ones(model.cfg.d_model, device=device, dtype=dtype) if w is None else w.to(device=device, dtype=dtype)
    return w, float(norm.eps)


def output_bias(model: "HookedTransformer", layer: int, device=None, dtype=None) -> "torch.Tensor":
    """``b_O`` of the layer's attention, ``[d_model]`` (zeros when absent)."""
    import torch

    b = getattr(model.blocks[layer].attn, "b_O", None)
    if b is None:
        return torch.zeros(model.cfg.d_model, device=device, dtype=dtype or torch.float32)
    return b.to(device=device, dtype=dtype or torch.float32)


def attn_contributions(
    model: "HookedTransformer",
    acts: "LayerActivations | Mapping[str, torch.Tensor]",
    layer: int,
    *,
    query: int | None = None,
    postnorm: str = "frozen_scale",
    include_bias: bool = True,
) -> "torch.Tensor":
    """Per-key attention contributions of layer ``layer``.

    Args:
        model: the ``HookedTransformer`` that produced ``acts``.
        acts: :class:`LayerActivations` or a TransformerLens ``ActivationCache`` with the
            hooks of :func:`hook_names` (batch 0 is used).
        query: one query position, or ``None`` for all.
        postnorm: ``"frozen_scale"`` (exact split: sums over keys to ``hook_attn_out``)
            or ``"none"`` (raw contributions, before any post-norm; sums to the raw
            attention output). ``"per_partial_sum"`` is not a per-key split; use
            :func:`attn_partial_sums`. On models without a post-norm both give the raw ones.
        include_bias: attribute ``b_O`` to key 0 (so sums include it).

    Returns:
        ``[pos_q, pos_k, d_model]`` (float32), or ``[pos_k, d_model]`` for one ``query``;
        entries with ``k > q`` are zero.
    """
    import torch

    acts = _as_layer_activations(acts, model, layer)
    if postnorm == "per_partial_sum":
        raise ValueError("per_partial_sum is not a per-key split; use attn_partial_sums(..., postnorm='per_partial_sum')")
    variant = resolve_postnorm(model, layer, postnorm) if postnorm != "none" else "none"
    u = head_values(model, acts)  # [k, h, d]
    device = u.device
    pattern = acts.pattern.to(torch.float32)  # [h, q, k]
    if query is not None:
        pattern = pattern[:, query : query + 1]
    c = mix_keys(pattern, u).contiguous()
    if include_bias:
        c[:, 0] += output_bias(model, layer, device)
    if variant == "frozen_scale":
        w, _ = _norm_params(model, layer, variant, device, torch.float32)
        scale = acts.scale.to(torch.float32)
        if query is not None:
            scale = scale[query : query + 1]
        c = c * w / scale[:, None, None]
    return c[0] if query is not None else c


def attn_partial_sums(
    model: "HookedTransformer",
    acts: "LayerActivations | Mapping[str, torch.Tensor]",
    layer: int,
    *,
    queries: Sequence[int] | None = None,
    postnorm: str = "per_partial_sum",
) -> "torch.Tensor":
    """Post-normed partial sums ``postnorm(b_O + Σ_{k≤j} c[q, k])`` for ``j = 0..pos-1``.

    This is what the method adds to ``resid_pre[q]`` at step ``j + 1``. For ``j ≥ q``
    it equals the layer's attention output at ``q`` (``hook_attn_out[q]``) in the
    ``per_partial_sum`` and ``frozen_scale`` variants alike.

    Returns:
        ``[len(queries), pos, d_model]`` float32 (all queries when ``queries`` is None).
    """
    import torch

    acts = _as_layer_activations(acts, model, layer)
    variant = resolve_postnorm(model, layer, postnorm)
    u = head_values(model, acts)
    device = u.device
    q_idx = torch.arange(acts.n_pos, device=device) if queries is None else torch.as_tensor(list(queries), device=device)
    pattern = acts.pattern.to(torch.float32)[:, q_idx]  # [h, Q, k]
    sums = mix_keys(pattern, u).cumsum(dim=1) + output_bias(model, layer, device)
    w, eps = _norm_params(model, layer, variant, device, torch.float32)
    if variant == "per_partial_sum":
        sums = w * sums / (sums.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    elif variant == "frozen_scale":
        sums = w * sums / acts.scale.to(torch.float32)[q_idx][:, None, None]
    return sums

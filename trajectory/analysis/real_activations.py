"""Real analysis: what makes SAE features fire on a text corpus.

:func:`real` streams a corpus through the model and one layer's SAE in batches. The
forward pass stops at the SAE's layer (``stop_at_layer``), the SAE encodes the hook's
activations, and per requested feature the scan keeps running statistics and the
top-activating windows. BOS positions are excluded from everything by default (the
BOS residual is an outlier that many features treat specially; ``include_bos=True``
counts it).

:func:`logit_effects` gives the tokens a feature's decoder direction promotes and
suppresses through the unembedding.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from trajectory.analysis.features import parse_features
from trajectory.analysis.stats import Example, FeatureReport, FeatureStats
from trajectory.sae_formats import check_sae_fits

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def hook_layer(hook_name: str) -> int | None:
    """Block index of a TransformerLens hook name (``blocks.6.hook_resid_post`` -> 6)."""
    m = _BLOCK.match(hook_name)
    return int(m.group(1)) if m else None


def stop_layer(hook_name: str) -> int | None:
    """``stop_at_layer`` that still runs the hook: the block after its own; 0 for the
    embedding hooks; ``None`` (whole model) for anything after the blocks."""
    layer = hook_layer(hook_name)
    if layer is not None:
        return layer + 1
    if hook_name in ("hook_embed", "hook_pos_embed", "hook_tokens"):
        return 0
    return None


def resolve_hook(sae: "SAE", hook_name: str | None) -> str:
    """``hook_name`` or the SAE's own ``cfg.metadata.hook_name``; a clear error when neither."""
    hook = hook_name or getattr(sae.cfg.metadata, "hook_name", None)
    if not hook:
        raise ValueError("the SAE does not say which hook it reads; pass hook_name (e.g. blocks.6.hook_resid_post)")
    return str(hook)


def hook_activations(
    model: "HookedTransformer", tokens: "torch.Tensor", hook_name: str, *, embed_override: "torch.Tensor | None" = None
) -> "torch.Tensor":
    """Activations at ``hook_name`` for ``tokens [batch, pos]``, running only as far as needed.

    Args:
        embed_override: ``[batch, pos, d_model]`` used instead of the token embeddings
            (``hook_embed`` output; positional embeddings, if any, are still added).

    Returns:
        ``[batch, pos, width]`` (keeps the autograd graph when gradients are enabled).
    """
    seen: dict[str, Any] = {}

    def grab(act, hook):
        seen["act"] = act
        return act

    hooks = [(hook_name, grab)]
    if embed_override is not None:
        hooks.insert(0, ("hook_embed", lambda act, hook: embed_override.to(act.dtype)))
    model.run_with_hooks(tokens, stop_at_layer=stop_layer(hook_name), fwd_hooks=hooks, return_type=None)
    if "act" not in seen:
        raise ValueError(f"hook {hook_name!r} did not fire on a forward pass of {model.cfg.model_name}")
    return seen["act"]


def final_norm_direction(model: "HookedTransformer", direction: "torch.Tensor", final_norm: str = "weight") -> "torch.Tensor":
    """Map residual directions ``[..., d_model]`` through the final norm, with unit scale.

    ``final_norm="weight"``: centre (LayerNorm only) and multiply by the final norm's
    elementwise weight, with the normalising scale (1/RMS or 1/std of the whole
    residual) set to 1 — a direction alone has no meaningful norm, and the scale is one
    positive number per position that does not change which tokens rank highest.
    ``"ignore"``: the direction unchanged (plain ``W_dec @ W_U``). The final norm's
    bias and the output soft-cap (monotonic) are left out in both cases.
    """
    if final_norm == "ignore":
        return direction
    if final_norm != "weight":
        raise ValueError(f"final_norm must be 'weight' or 'ignore', got {final_norm!r}")
    ln = getattr(model, "ln_final", None)
    kind = type(ln).__name__ if ln is not None else ""
    d = direction
    if kind.startswith("LayerNorm"):
        d = d - d.mean(dim=-1, keepdim=True)
    w = getattr(ln, "w", None)
    if w is not None:
        d = d * w.to(d.dtype)
    return d


def logit_effects(
    model: "HookedTransformer",
    sae: "SAE",
    features: Sequence[int],
    *,
    k: int = 10,
    final_norm: str = "weight",
) -> dict[int, tuple[list[tuple[str, float]], list[tuple[str, float]]]]:
    """Tokens each feature's decoder direction promotes and suppresses most.

    The effect on the logits is ``norm(W_dec[f]) @ W_U`` (``[d_vocab]``), where ``norm``
    is :func:`final_norm_direction` — by default the final norm's weight applied with
    unit scale (``final_norm="ignore"``: ``W_dec[f] @ W_U``). Only for SAEs whose
    ``d_in`` is ``d_model`` (residual-stream hooks); others get empty lists.

    Returns:
        ``{feature: (top, bottom)}``; ``top`` = ``k`` ``(token, value)`` pairs, largest
        first; ``bottom`` = ``k`` most negative, most negative first.
    """
    import torch

    out: dict[int, tuple[list, list]] = {}
    if int(sae.cfg.d_in) != int(model.cfg.d_model) or not features:
        return {int(f): ([], []) for f in features}
    with torch.no_grad():
        W_U = model.W_U  # [d_model, d_vocab]
        d = sae.W_dec[list(features)].to(W_U.device, W_U.dtype)  # [n, d_model]
        effects = final_norm_direction(model, d, final_norm) @ W_U  # [n, d_vocab]
        k = min(k, effects.shape[-1])
        top_v, top_i = effects.topk(k, dim=-1)
        bot_v, bot_i = (-effects).topk(k, dim=-1)
    decode = _decoder(model)
    for row, f in enumerate(features):
        out[int(f)] = (
            [(decode(int(i)), float(v)) for v, i in zip(top_v[row], top_i[row])],
            [(decode(int(i)), float(-v)) for v, i in zip(bot_v[row], bot_i[row])],
        )
    return out


def _decoder(model: "HookedTransformer"):
    """Token id -> its string, cached (one ``decode`` per distinct id)."""
    cache: dict[int, str] = {}
    tok = model.tokenizer

    def decode(i: int) -> str:
        s = cache.get(i)
        if s is None:
            s = tok.decode([i]) if tok is not None else str(i)
            cache[i] = s
        return s

    return decode


def corpus_tokens(
    model: "HookedTransformer",
    corpus: "str | Sequence[str] | torch.Tensor | None",
    *,
    context_length: int = 128,
    max_tokens: int | None = None,
) -> tuple[str, "torch.Tensor"]:
    """Resolve a corpus to ``(name, tokens [n_chunks, context_length])``.

    ``corpus``: ``None``/``"default"``/a path/a dataset name (:func:`trajectory.corpus.load_corpus`),
    a list of documents, or an already tokenized ``[n, pos]`` tensor (used as is).
    """
    import torch

    from trajectory.corpus import load_corpus, tokenize_chunks

    if isinstance(corpus, torch.Tensor):
        if corpus.ndim != 2:
            raise ValueError(f"a token corpus must be [n_chunks, pos], got shape {tuple(corpus.shape)}")
        return "tokens", corpus.long()
    if corpus is None or isinstance(corpus, str):
        name, docs = load_corpus(corpus)
    else:
        name, docs = "documents", [d for d in corpus if d and d.strip()]
        if not docs:
            raise ValueError("the corpus is empty; give it some text")
    return name, tokenize_chunks(model, docs, context_length=context_length, max_tokens=max_tokens)


def real(
    model: "HookedTransformer",
    sae: "SAE",
    features: "str | Iterable[int]",
    corpus: "str | Sequence[str] | torch.Tensor | None" = None,
    *,
    hook_name: str | None = None,
    max_examples: int = 20,
    batch_size: int = 16,
    context_length: int = 128,
    max_tokens: int | None = None,
    window: tuple[int, int] = (12, 4),
    n_logits: int = 10,
    n_bins: int = 40,
    final_norm: str = "weight",
    include_bos: bool = False,
    progress: bool = True,
) -> FeatureReport:
    """Scan a corpus and characterise SAE features by their real activations.

    Args:
        model: the language model (TransformerLens).
        sae: a sae-lens SAE reading ``hook_name`` of ``model``.
        features: feature spec (``"0-10,50"``) or indices.
        corpus: see :func:`corpus_tokens` (default: the package's offline corpus).
        hook_name: default ``sae.cfg.metadata.hook_name``.
        max_examples: top-activating windows kept per feature.
        batch_size: chunks per forward pass.
        context_length / max_tokens: how the corpus is cut into chunks (BOS first).
        window: tokens kept ``(before, after)`` the peak token in each example
            (clipped to the chunk).
        n_logits: promoted / suppressed tokens listed per feature.
        n_bins: bins of the histogram of non-zero activations (``0 .. max``, or
            ``min .. max`` when some are negative).
        final_norm: how logit effects treat the final norm (see :func:`logit_effects`).
        include_bos: count BOS positions (default: excluded).
        progress: show a tqdm bar.

    Returns:
        A ``"real"`` :class:`FeatureReport`. Density = share of counted tokens where the
        activation is non-zero; mean over all counted tokens; examples best first
        (ties: earlier chunk and position first).
    """
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    hook = resolve_hook(sae, hook_name)
    check_sae_fits(sae, model, hook)  # a clear error, not a matmul shape error mid-scan
    feats = parse_features(features, d_sae=int(sae.cfg.d_sae))
    corpus_name, tokens = corpus_tokens(model, corpus, context_length=context_length, max_tokens=max_tokens)
    n_chunks, P = tokens.shape
    nf = len(feats)
    before, after = int(window[0]), int(window[1])
    W = before + after + 1
    device = model.cfg.device
    sae_dtype = sae.W_enc.dtype
    feat_idx = torch.tensor(feats, dtype=torch.long, device=sae.W_enc.device)
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else None

    n_tokens = 0
    n_active = torch.zeros(nf, dtype=torch.long)
    act_sum = torch.zeros(nf, dtype=torch.float64)
    nonzero_f: list[torch.Tensor] = []  # feature column of each non-zero activation
    nonzero_v: list[torch.Tensor] = []  # its value
    # running top examples per feature: values [m, nf], keys (chunk, pos) [m, nf], windows [m, nf, W]
    top_v = torch.empty(0, nf)
    top_c = torch.empty(0, nf, dtype=torch.long)
    top_p = torch.empty(0, nf, dtype=torch.long)
    top_ids = torch.empty(0, nf, W, dtype=torch.long)
    top_acts = torch.empty(0, nf, W)
    offsets = torch.arange(-before, after + 1)

    bar = tqdm(total=n_chunks * P, desc=f"real scan {hook}", unit="tok", unit_scale=True, disable=not progress)
    with torch.no_grad():
        for start in range(0, n_chunks, batch_size):
            batch = tokens[start : start + batch_size]
            B = batch.shape[0]
            x = hook_activations(model, batch.to(device), hook)
            acts = sae.encode(x.to(sae.W_enc.device, sae_dtype))  # [B, P, d_sae]
            sel = acts.index_select(-1, feat_idx).float().cpu()  # [B, P, nf]
            del acts, x
            mask = torch.ones(B, P, dtype=torch.bool) if (include_bos or bos is None) else batch != bos
            sel = sel * mask[..., None]
            n_tokens += int(mask.sum())
            active = sel != 0
            n_active += active.sum((0, 1))
            act_sum += sel.sum((0, 1), dtype=torch.float64)
            b_i, p_i, f_i = active.nonzero(as_tuple=True)
            nonzero_f.append(f_i)
            nonzero_v.append(sel[b_i, p_i, f_i])

            # candidates of this batch: its own top max_examples per feature
            cand = sel.masked_fill(~active, float("-inf")).reshape(B * P, nf)
            kk = min(max_examples, B * P)
            v, flat = cand.topk(kk, dim=0)  # [kk, nf]
            cb, cp = flat // P, flat % P
            pos = cp[..., None] + offsets  # [kk, nf, W]
            inside = (pos >= 0) & (pos < P)
            posc = pos.clamp(0, P - 1)
            bb = cb[..., None].expand_as(posc)
            ids = torch.where(inside, batch[bb, posc], torch.full_like(posc, -1))
            ff = torch.arange(nf)[None, :, None].expand_as(posc)
            wacts = torch.where(inside, sel[bb, posc, ff], torch.zeros(()))
            top_v = torch.cat([top_v, v])
            top_c = torch.cat([top_c, cb + start])
            top_p = torch.cat([top_p, cp])
            top_ids = torch.cat([top_ids, ids])
            top_acts = torch.cat([top_acts, wacts])
            if top_v.shape[0] > max_examples:
                keep = top_v.topk(max_examples, dim=0).indices  # [max_examples, nf]
                top_v = top_v.gather(0, keep)
                top_c = top_c.gather(0, keep)
                top_p = top_p.gather(0, keep)
                kw = keep[..., None].expand(-1, -1, W)
                top_ids = top_ids.gather(0, kw)
                top_acts = top_acts.gather(0, kw)
            bar.update(B * P)
    bar.close()

    nz_f = torch.cat(nonzero_f) if nonzero_f else torch.empty(0, dtype=torch.long)
    nz_v = torch.cat(nonzero_v) if nonzero_v else torch.empty(0)
    effects = logit_effects(model, sae, feats, k=n_logits, final_norm=final_norm)
    dec_norms = sae.W_dec.detach()[feats].float().norm(dim=-1).cpu()
    decode = _decoder(model)

    stats: dict[int, FeatureStats] = {}
    for j, f in enumerate(feats):
        vals = nz_v[nz_f == j].numpy()
        if len(vals):
            lo = min(0.0, float(vals.min()))
            counts, edges = np.histogram(vals, bins=n_bins, range=(lo, float(vals.max()) or 1.0))
        else:
            counts, edges = np.zeros(0, dtype=int), np.zeros(0)
        examples = []
        for r in range(top_v.shape[0]):
            val = float(top_v[r, j])
            if not np.isfinite(val):
                continue
            ids = top_ids[r, j]
            keep = ids >= 0
            wids = [int(i) for i in ids[keep]]
            peak = int(keep[:before].sum())  # tokens kept before the peak
            examples.append(
                Example(
                    tokens=[decode(i) for i in wids],
                    token_ids=wids,
                    activations=[float(a) for a in top_acts[r, j][keep]],
                    peak=peak,
                    activation=val,
                    context=int(top_c[r, j]),
                    position=int(top_p[r, j]),
                )
            )
        examples.sort(key=lambda e: (-e.activation, e.context, e.position))
        na = int(n_active[j])
        top, bottom = effects[f]
        stats[f] = FeatureStats(
            feature=f,
            mode="real",
            max_activation=float(vals.max()) if len(vals) else 0.0,
            mean_activation=float(act_sum[j]) / max(n_tokens, 1),
            mean_active=float(act_sum[j]) / na if na else 0.0,
            density=na / max(n_tokens, 1),
            n_tokens=n_tokens,
            n_active=na,
            decoder_norm=float(dec_norms[j]),
            histogram_edges=[float(e) for e in edges],
            histogram_counts=[int(c) for c in counts],
            examples=examples,
            top_logits=top,
            bottom_logits=bottom,
        )
    return FeatureReport(
        mode="real",
        features=stats,
        model_name=str(model.cfg.model_name),
        hook_name=hook,
        layer=hook_layer(hook),
        sae=sae_info(sae),
        corpus=corpus_name,
        n_tokens=n_tokens,
        settings=dict(
            max_examples=max_examples, batch_size=batch_size, context_length=int(P), max_tokens=max_tokens,
            window=[before, after], n_logits=n_logits, n_bins=n_bins, final_norm=final_norm, include_bos=include_bos,
        ),
    )


def sae_info(sae: "SAE") -> dict[str, Any]:
    """``{"d_in", "d_sae", "architecture", "source"}`` of a sae-lens SAE."""
    meta = sae.cfg.metadata
    return {
        "d_in": int(sae.cfg.d_in),
        "d_sae": int(sae.cfg.d_sae),
        "architecture": str(sae.cfg.architecture()),
        "source": str(getattr(meta, "source", None) or getattr(meta, "sae_lens_id", None) or ""),
    }

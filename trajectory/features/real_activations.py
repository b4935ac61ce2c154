"""Real analysis: what makes SAE features fire on a text corpus.

:func:`real` streams a corpus through the model and one layer's SAE in batches. The
forward pass stops at the SAE's layer (``stop_at_layer``), the SAE encodes the hook's
activations, and per requested feature the scan keeps running statistics and the
top-activating windows. BOS positions are excluded from everything by default (the
BOS residual is an outlier that many features treat specially; ``include_bos=True``
counts it).

The steps: :func:`corpus_tokens` (corpus -> chunks), :func:`scan_corpus` (chunks ->
running sums and top examples), :func:`feature_stats` (-> one :class:`FeatureStats`
per feature, with logit effects and the nearest decoder direction from
:mod:`trajectory.features.logits`), and
:meth:`FeatureReport.from_run`. :func:`hook_activations`, :func:`stop_layer` and
:func:`resolve_hook` are how both analyses run the model up to an SAE's hook.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from trajectory.features.config import RealConfig, make_config
from trajectory.features.logits import decoder_neighbours, final_norm_direction, logit_effects, token_decoder
from trajectory.features.report import Example, FeatureReport, FeatureStats, sae_info
from trajectory.features.spec import parse_features
from trajectory.hooks import layer_of
from trajectory.saes.formats import check_sae_fits

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

# the weight-only helpers live in logits / report; callers import them from here too
__all__ = [
    "RealConfig", "real", "corpus_tokens", "scan_corpus", "feature_stats", "hook_activations", "stop_layer",
    "resolve_hook", "checked_features", "logit_effects", "final_norm_direction", "sae_info",
]


def stop_layer(hook_name: str) -> int | None:
    """``stop_at_layer`` that still runs the hook: the block after its own; 0 for the
    embedding hooks; ``None`` (whole model) for anything after the blocks."""
    layer = layer_of(hook_name)
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


def checked_features(
    model: "HookedTransformer", sae: "SAE", features: "str | Iterable[int]", hook_name: str | None
) -> tuple[str, list[int]]:
    """The hook ``sae`` reads on ``model`` and the parsed feature indices, checked up front
    (a clear error, not a matmul shape error mid-scan)."""
    hook = resolve_hook(sae, hook_name)
    check_sae_fits(sae, model, hook)
    return hook, parse_features(features, d_sae=int(sae.cfg.d_sae))


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


def corpus_tokens(
    model: "HookedTransformer",
    corpus: "str | Sequence[str] | torch.Tensor | None",
    *,
    context_length: int = 128,
    max_tokens: int | None = None,
) -> tuple[str, "torch.Tensor"]:
    """Resolve a corpus to ``(name, tokens [n_chunks, context_length])``.

    ``corpus``: ``None``/``"default"``/a path/a dataset name (:func:`trajectory.training.corpus.load_corpus`),
    a list of documents, or an already tokenized ``[n, pos]`` tensor (used as is).
    """
    import torch

    from trajectory.training.corpus import load_corpus, tokenize_chunks

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
    config: RealConfig | None = None,
    hook_name: str | None = None,
    progress: bool = True,
    **settings: Any,
) -> FeatureReport:
    """Scan a corpus and characterise SAE features by their real activations.

    Args:
        model: the language model (TransformerLens).
        sae: a sae-lens SAE reading ``hook_name`` of ``model``.
        features: feature spec (``"0-10,50"``) or indices.
        corpus: see :func:`corpus_tokens` (default: the package's offline corpus).
        config: the settings (:class:`RealConfig`; default ``RealConfig()``).
        hook_name: default ``sae.cfg.metadata.hook_name``.
        progress: show a tqdm bar.
        **settings: fields of :class:`RealConfig` (``max_examples``, ``batch_size``,
            ``context_length``, ``max_tokens``, ``window``, ``n_logits``, ``n_bins``,
            ``final_norm``, ``include_bos``), overriding ``config``'s.

    Returns:
        A ``"real"`` :class:`FeatureReport`. Density = share of counted tokens where the
        activation is non-zero; mean over all counted tokens; examples best first
        (ties: earlier chunk and position first).

    Example:
        >>> from trajectory.testing import CORPUS_SENTENCES, random_sae, tiny_model
        >>> model = tiny_model()
        >>> sae = random_sae(32, 64, seed=3, hook_name="blocks.1.hook_resid_post")
        >>> report = real(model, sae, "0-2", CORPUS_SENTENCES, context_length=8, progress=False)
        >>> report.feature_ids, report.settings["context_length"]
        ([0, 1, 2], 8)
    """
    cfg = make_config(RealConfig, config, settings)
    hook, feats = checked_features(model, sae, features, hook_name)
    corpus_name, tokens = corpus_tokens(model, corpus, context_length=cfg.context_length, max_tokens=cfg.max_tokens)
    scan = scan_corpus(model, sae, hook, feats, tokens, cfg, progress=progress)
    effects = logit_effects(model, sae, feats, k=cfg.n_logits, final_norm=cfg.final_norm)
    dec_norms = sae.W_dec.detach()[feats].float().norm(dim=-1).cpu()
    neighbours = decoder_neighbours(sae, feats)
    decode = token_decoder(model)
    stats = {f: feature_stats(scan, j, f, n_bins=cfg.n_bins, decode=decode, decoder_norm=float(dec_norms[j]),
                              logits=effects[f], neighbour=neighbours[j]) for j, f in enumerate(feats)}
    # the chunk width actually scanned (a token tensor brings its own); the window as a JSON list
    used = {**asdict(cfg), "context_length": int(tokens.shape[1]), "window": list(cfg.window)}
    return FeatureReport.from_run("real", stats, model=model, sae=sae, hook_name=hook, settings=used,
                                  corpus=corpus_name, n_tokens=scan.n_tokens)


@dataclass
class CorpusScan:
    """What :func:`scan_corpus` keeps of a corpus, for ``nf`` features (column ``j`` =
    the ``j``-th requested feature).

    Attributes:
        n_tokens: counted tokens (BOS excluded unless ``include_bos``).
        n_active: ``[nf]`` counted tokens where each feature is non-zero.
        act_sum: ``[nf]`` float64 sum of each feature's activations.
        nonzero_feature / nonzero_value: ``[n_nonzero]`` column and value of every
            non-zero activation (for the histograms).
        top: the top-activating windows.
    """

    n_tokens: int
    n_active: "torch.Tensor"
    act_sum: "torch.Tensor"
    nonzero_feature: "torch.Tensor"
    nonzero_value: "torch.Tensor"
    top: "TopExamples"


def scan_corpus(
    model: "HookedTransformer", sae: "SAE", hook: str, feats: list[int], tokens: "torch.Tensor", cfg: RealConfig,
    *, progress: bool = True,
) -> CorpusScan:
    """Run ``tokens [n_chunks, pos]`` through the model (up to ``hook``) and the SAE in
    batches of ``cfg.batch_size`` chunks, keeping sums and top examples of ``feats``."""
    import torch
    from tqdm.auto import tqdm

    n_chunks, P = tokens.shape
    nf = len(feats)
    feat_idx = torch.tensor(feats, dtype=torch.long, device=sae.W_enc.device)
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else None
    n_tokens = 0
    n_active = torch.zeros(nf, dtype=torch.long)
    act_sum = torch.zeros(nf, dtype=torch.float64)
    nonzero_f: list[torch.Tensor] = []  # feature column of each non-zero activation
    nonzero_v: list[torch.Tensor] = []  # its value
    top = TopExamples(nf, cfg.max_examples, cfg.window)
    bar = tqdm(total=n_chunks * P, desc=f"real scan {hook}", unit="tok", unit_scale=True, disable=not progress)
    with torch.no_grad():
        for start in range(0, n_chunks, cfg.batch_size):
            batch = tokens[start : start + cfg.batch_size]
            B = batch.shape[0]
            x = hook_activations(model, batch.to(model.cfg.device), hook)
            acts = sae.encode(x.to(sae.W_enc.device, sae.W_enc.dtype))  # [B, P, d_sae]
            sel = acts.index_select(-1, feat_idx).float().cpu()  # [B, P, nf]
            del acts, x
            mask = torch.ones(B, P, dtype=torch.bool) if (cfg.include_bos or bos is None) else batch != bos
            sel = sel * mask[..., None]
            n_tokens += int(mask.sum())
            active = sel != 0
            n_active += active.sum((0, 1))
            act_sum += sel.sum((0, 1), dtype=torch.float64)
            b_i, p_i, f_i = active.nonzero(as_tuple=True)
            nonzero_f.append(f_i)
            nonzero_v.append(sel[b_i, p_i, f_i])
            top.add(sel, active, batch, start)
            bar.update(B * P)
    bar.close()
    return CorpusScan(
        n_tokens=n_tokens, n_active=n_active, act_sum=act_sum, top=top,
        nonzero_feature=torch.cat(nonzero_f) if nonzero_f else torch.empty(0, dtype=torch.long),
        nonzero_value=torch.cat(nonzero_v) if nonzero_v else torch.empty(0),
    )


class TopExamples:
    """The running top ``m`` activations per feature over a scan, with their windows.

    Attributes (``W = before + 1 + after``):
        values: ``[m, nf]`` activations (``-inf``: no example).
        chunk / position: ``[m, nf]`` where each one is (corpus chunk, position in it).
        ids / acts: ``[m, nf, W]`` token ids of the window (-1 outside the chunk) and
            the feature's activation on each.
    """

    def __init__(self, nf: int, m: int, window: tuple[int, int]):
        import torch

        self.m = m
        self.before = int(window[0])
        self.offsets = torch.arange(-self.before, int(window[1]) + 1)
        W = len(self.offsets)
        self.values = torch.empty(0, nf)
        self.chunk = torch.empty(0, nf, dtype=torch.long)
        self.position = torch.empty(0, nf, dtype=torch.long)
        self.ids = torch.empty(0, nf, W, dtype=torch.long)
        self.acts = torch.empty(0, nf, W)

    def add(self, sel: "torch.Tensor", active: "torch.Tensor", batch: "torch.Tensor", start: int,
            score: "torch.Tensor | None" = None) -> None:
        """Merge in a batch: ``sel [B, P, nf]`` activations, ``active`` their non-zero
        mask, ``batch [B, P]`` token ids, ``start`` the index of its first chunk.
        ``score [B, P, nf]`` ranks the entries instead of the activations (a random key
        gives a uniform sample of the active entries); ``values`` then holds the scores."""
        import torch

        B, P, nf = sel.shape
        # candidates of this batch: its own top m per feature
        cand = (sel if score is None else score).masked_fill(~active, float("-inf")).reshape(B * P, nf)
        v, flat = cand.topk(min(self.m, B * P), dim=0)  # [kk, nf]
        cb, cp = flat // P, flat % P
        pos = cp[..., None] + self.offsets  # [kk, nf, W]
        inside = (pos >= 0) & (pos < P)
        posc = pos.clamp(0, P - 1)
        bb = cb[..., None].expand_as(posc)
        ff = torch.arange(nf)[None, :, None].expand_as(posc)
        self.values = torch.cat([self.values, v])
        self.chunk = torch.cat([self.chunk, cb + start])
        self.position = torch.cat([self.position, cp])
        self.ids = torch.cat([self.ids, torch.where(inside, batch[bb, posc], torch.full_like(posc, -1))])
        self.acts = torch.cat([self.acts, torch.where(inside, sel[bb, posc, ff], torch.zeros(()))])
        if self.values.shape[0] > self.m:
            keep = self.values.topk(self.m, dim=0).indices  # [m, nf]
            self.values, self.chunk, self.position = (t.gather(0, keep) for t in (self.values, self.chunk, self.position))
            kw = keep[..., None].expand(-1, -1, self.ids.shape[-1])
            self.ids, self.acts = self.ids.gather(0, kw), self.acts.gather(0, kw)

    def examples(self, j: int, decode: Callable[[int], str]) -> list[Example]:
        """Feature column ``j``'s examples, best first (ties: earlier chunk and position)."""
        out = []
        for r in range(self.values.shape[0]):
            val = float(self.values[r, j])
            if not math.isfinite(val):  # -inf: fewer than m activations were non-zero
                continue
            ids = self.ids[r, j]
            keep = ids >= 0
            wids = [int(i) for i in ids[keep]]
            out.append(Example(
                tokens=[decode(i) for i in wids], token_ids=wids, activations=[float(a) for a in self.acts[r, j][keep]],
                peak=int(keep[: self.before].sum()),  # tokens kept before the peak
                activation=val, context=int(self.chunk[r, j]), position=int(self.position[r, j]),
            ))
        out.sort(key=lambda e: (-e.activation, e.context, e.position))
        return out


def feature_stats(
    scan: CorpusScan, j: int, feature: int, *, n_bins: int, decode: Callable[[int], str], decoder_norm: float,
    logits: tuple[list[tuple[str, float]], list[tuple[str, float]]], neighbour: tuple[int, float] | None = None,
) -> FeatureStats:
    """The :class:`FeatureStats` of column ``j`` (= ``feature``) of a scan; ``neighbour``:
    its nearest decoder direction ``(feature, cosine)`` (:func:`decoder_neighbours`)."""
    vals = scan.nonzero_value[scan.nonzero_feature == j].numpy()
    edges, counts = _histogram(vals, n_bins)
    n_tokens, na, total = scan.n_tokens, int(scan.n_active[j]), float(scan.act_sum[j])
    return FeatureStats(
        feature=feature,
        mode="real",
        max_activation=float(vals.max()) if len(vals) else 0.0,
        mean_activation=total / max(n_tokens, 1),
        mean_active=total / na if na else 0.0,
        density=na / max(n_tokens, 1),
        n_tokens=n_tokens,
        n_active=na,
        decoder_norm=decoder_norm,
        decoder_neighbour=None if neighbour is None else neighbour[0],
        decoder_neighbour_cosine=None if neighbour is None else neighbour[1],
        histogram_edges=edges,
        histogram_counts=counts,
        examples=scan.top.examples(j, decode),
        top_logits=logits[0],
        bottom_logits=logits[1],
    )


def _histogram(vals: "np.ndarray", n_bins: int) -> tuple[list[float], list[int]]:
    """Edges and counts of ``n_bins`` bins over ``min(0, vals.min()) .. vals.max()``; empty lists for no values."""
    import numpy as np

    if not len(vals):
        return [], []
    counts, edges = np.histogram(vals, bins=n_bins, range=(min(0.0, float(vals.min())), float(vals.max()) or 1.0))
    return [float(e) for e in edges], [int(c) for c in counts]

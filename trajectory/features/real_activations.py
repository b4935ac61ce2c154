"""Real analysis: what makes SAE features fire on a text corpus.

:func:`real` streams a corpus through the model and one layer's SAE in batches. The
forward pass stops at the SAE's layer (``stop_at_layer``), the SAE encodes the hook's
activations, and per requested feature the scan keeps running statistics and the
top-activating windows. BOS positions are excluded from everything by default (the
BOS residual is an outlier that many features treat specially; ``include_bos=True``
counts it).

The steps: :func:`corpus_tokens` (corpus -> chunks), :func:`scan_corpus` (chunks ->
running counts, sums, maxima, fixed log-spaced histograms and top examples — the
dashboard's collection code, :mod:`trajectory.features.corpus_scan`, so memory stays
bounded however long the corpus), :func:`feature_stats` (-> one :class:`FeatureStats`
per feature, with logit effects and the nearest decoder direction from
:mod:`trajectory.features.logits`), and
:meth:`FeatureReport.from_run`. :func:`hook_activations`, :func:`stop_layer` and
:func:`resolve_hook` are how both analyses run the model up to an SAE's hook.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from trajectory.features.config import RealConfig, make_config
from trajectory.features.corpus_scan import (
    FeatureScan, TopExamples, coarse_histogram, select_features, stop_layer, stream_corpus,
)
from trajectory.features.logits import decoder_neighbours, final_norm_direction, logit_effects, token_decoder
from trajectory.features.report import FeatureReport, FeatureStats, sae_info
from trajectory.features.spec import parse_features
from trajectory.saes.formats import check_sae_fits

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

# the weight-only helpers live in logits / report; callers import them from here too
__all__ = [
    "RealConfig", "real", "corpus_tokens", "scan_corpus", "feature_stats", "hook_activations", "stop_layer",
    "resolve_hook", "checked_features", "logit_effects", "final_norm_direction", "sae_info", "FeatureScan",
    "TopExamples", "chunked_logit_effects",
]


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
    effects = chunked_logit_effects(model, sae, feats, k=cfg.n_logits, final_norm=cfg.final_norm)
    dec_norms = sae.W_dec.detach()[feats].float().norm(dim=-1).cpu()
    neighbours = decoder_neighbours(sae, feats)
    decode = token_decoder(model)
    stats = {f: feature_stats(scan, j, f, n_bins=cfg.n_bins, decode=decode, decoder_norm=float(dec_norms[j]),
                              logits=effects[f], neighbour=neighbours[j]) for j, f in enumerate(feats)}
    # the chunk width actually scanned (a token tensor brings its own); the window as a JSON list
    used = {**asdict(cfg), "context_length": int(tokens.shape[1]), "window": list(cfg.window)}
    return FeatureReport.from_run("real", stats, model=model, sae=sae, hook_name=hook, settings=used,
                                  corpus=corpus_name, n_tokens=scan.n_tokens)


def scan_corpus(
    model: "HookedTransformer", sae: "SAE", hook: str, feats: list[int], tokens: "torch.Tensor", cfg: RealConfig,
    *, progress: bool = True,
) -> FeatureScan:
    """Run ``tokens [n_chunks, pos]`` through the model (up to ``hook``) and the SAE in
    batches of ``cfg.batch_size`` chunks, keeping the running statistics and top examples
    of ``feats`` (the dashboard's own code path, :mod:`trajectory.features.corpus_scan`;
    memory does not grow with the corpus)."""
    import torch

    index = torch.tensor(feats, dtype=torch.long)
    scan = FeatureScan(len(feats), cfg.max_examples, cfg.window)
    for start, batch, mask, acts in stream_corpus(model, tokens, [hook], batch_size=cfg.batch_size,
                                                  include_bos=cfg.include_bos, progress=progress,
                                                  desc=f"real scan {hook}"):
        scan.add(select_features(sae, acts[hook], index, mask), mask, batch, start)
    return scan


def chunked_logit_effects(model: "HookedTransformer", sae: "SAE", feats: Sequence[int], *, k: int, final_norm: str,
                          chunk: int = 256) -> dict[int, tuple[list[tuple[str, float]], list[tuple[str, float]]]]:
    """:func:`~trajectory.features.logits.logit_effects` ``chunk`` features at a time, so
    peak memory is ``[chunk, d_vocab]``, never ``[len(feats), d_vocab]``."""
    effects: dict[int, Any] = {}
    for s in range(0, len(feats), chunk):
        effects.update(logit_effects(model, sae, list(feats[s : s + chunk]), k=k, final_norm=final_norm))
    return effects


def feature_stats(
    scan: FeatureScan, j: int, feature: int, *, n_bins: int, decode: Callable[[int], str], decoder_norm: float,
    logits: tuple[list[tuple[str, float]], list[tuple[str, float]]], neighbour: tuple[int, float] | None = None,
) -> FeatureStats:
    """The :class:`FeatureStats` of column ``j`` (= ``feature``) of a scan; ``neighbour``:
    its nearest decoder direction ``(feature, cosine)`` (:func:`decoder_neighbours`)."""
    edges, counts = coarse_histogram(*scan.histogram(j), n_bins)
    n_tokens, na, total = scan.n_tokens, int(scan.n_active[j]), float(scan.act_sum[j])
    return FeatureStats(
        feature=feature,
        mode="real",
        max_activation=scan.max_activation(j),
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

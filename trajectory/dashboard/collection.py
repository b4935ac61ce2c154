"""Dashboard collection: one streaming pass over a corpus for the SAEs of many layers.

:func:`collect` tokenizes the corpus (:func:`trajectory.features.real_activations.corpus_tokens`),
runs each batch of chunks through the model once — stopping after the last requested
layer — and hands every SAE's activations of the requested features to a
:class:`LayerScan`, which keeps, as tensors (no Python loop per feature per batch):

- through :class:`~trajectory.features.corpus_scan.FeatureScan`, the real analysis's own
  scan (one code path for both): the top activations with their windows, density, max
  and sum, and an exact histogram over fixed log-spaced bins (:data:`HIST_EDGES`);
- a uniform sample of the non-zero activations (random keys, a running top-``sample_size``
  of the keys), from which each feature's quantile bands take their examples;
so nothing grows with the corpus.

After the pass, logit effects (:func:`trajectory.features.logits.logit_effects`) and the
nearest features by decoder cosine are computed ``feature_chunk`` features at a time, so
peak memory is ``feature_chunk x d_vocab`` (never ``d_sae x d_vocab``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from trajectory.dashboard.data import Band, CardExample, FeatureCard, LayerDashboard, round_sig
from trajectory.features.config import RealConfig
from trajectory.features.corpus_scan import (  # noqa: F401 - HIST_EDGES, hook_batch: re-exported
    HIST_EDGES, FeatureScan, TopExamples, hook_batch, select_features, stream_corpus,
)
from trajectory.features.logits import token_decoder
from trajectory.features.real_activations import chunked_logit_effects, corpus_tokens
from trajectory.features.report import sae_info
from trajectory.features.spec import parse_features
from trajectory.io import provenance
from trajectory.saes.formats import check_sae_fits

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class DashboardConfig:
    """Settings of :func:`collect`.

    Attributes:
        max_examples: top-activating windows per feature.
        n_bands: quantile bands: equal-width intervals of ``(0, max]``.
        band_examples: examples shown per band.
        sample_size: non-zero activations sampled per feature (uniformly) to fill the bands.
        batch_size / context_length / max_tokens / window / n_logits / final_norm /
            include_bos: as in :class:`trajectory.features.RealConfig`.
        n_neighbours: nearest features by decoder cosine listed per feature.
        feature_chunk: features per step of the logit-effect and cosine computations and
            of turning the scan's tensors into cards.
        seed: seeds the sample (same corpus and seed: same dashboard).
    """

    max_examples: int = 10
    n_bands: int = 5
    band_examples: int = 3
    sample_size: int = 64
    batch_size: int = 16
    context_length: int = 128
    max_tokens: int | None = None
    window: tuple[int, int] = (12, 4)
    n_logits: int = 10
    n_neighbours: int = 5
    final_norm: str = "weight"
    include_bos: bool = False
    feature_chunk: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", self.real().window)  # RealConfig checks the shared fields
        for name in ("n_bands", "band_examples", "sample_size", "feature_chunk"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"DashboardConfig.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.n_neighbours, int) or self.n_neighbours < 0:
            raise ValueError(f"DashboardConfig.n_neighbours must be an integer >= 0, got {self.n_neighbours!r}")

    def real(self) -> RealConfig:
        """The fields shared with the real analysis, as a (checked) :class:`RealConfig`."""
        return RealConfig(max_examples=self.max_examples, batch_size=self.batch_size,
                          context_length=self.context_length, max_tokens=self.max_tokens, window=self.window,
                          n_logits=self.n_logits, final_norm=self.final_norm, include_bos=self.include_bos)


@dataclass
class DashboardTarget:
    """One SAE to build a dashboard page for: its ``name`` (``"layer_06"``: the page and
    JSON file names), the SAE, the hook it reads, its layer and any stored explanations."""

    name: str
    sae: "SAE"
    hook: str
    layer: int | None = None
    explanations: dict[int, str] = field(default_factory=dict)


class LayerScan(FeatureScan):
    """Running state of one SAE over the pass, for ``nf`` features (column ``j`` = the
    ``j``-th requested feature): the real analysis's :class:`~trajectory.features.corpus_scan.FeatureScan`
    (counts, sums, max, histogram over :data:`HIST_EDGES`, top examples) plus ``sample``,
    a :class:`SampledWindows` for the quantile bands."""

    def __init__(self, target: DashboardTarget, feats: list[int], cfg: DashboardConfig):
        import torch

        super().__init__(len(feats), cfg.max_examples, cfg.window)
        self.target, self.feats = target, feats
        self.index = torch.tensor(feats, dtype=torch.long, device=target.sae.W_enc.device)
        self.sample = SampledWindows(len(feats), cfg.sample_size, cfg.window)

    def add(self, x: "torch.Tensor", mask: "torch.Tensor", batch: "torch.Tensor", start: int,
            generator: "torch.Generator") -> None:
        """Merge a batch: ``x [B, P, d_in]`` hook activations, ``mask [B, P]`` counted
        positions, ``batch [B, P]`` token ids, ``start`` its first chunk's index."""
        import torch

        sel = select_features(self.target.sae, x, self.index, mask)  # [B, P, nf]
        active = super().add(sel, mask, batch, start)
        self.sample.add(sel, active, batch, start, torch.rand(sel.shape, generator=generator))


class SampledWindows(TopExamples):
    """A uniform sample of ``m`` non-zero activations per feature, with their windows:
    every activation gets a random key and the ``m`` largest keys are kept (a reservoir).
    A :class:`TopExamples` ranked by the keys (``values`` holds the keys, ``-inf``: no entry)."""

    def add(self, sel: "torch.Tensor", active: "torch.Tensor", batch: "torch.Tensor", start: int,
            keys: "torch.Tensor") -> None:
        """Merge a batch (as :meth:`TopExamples.add`), ``keys [B, P, nf]`` uniform in ``[0, 1)``."""
        super().add(sel, active, batch, start, score=keys)

    def bands(self, lo: int, tops: Sequence[float], cfg: "DashboardConfig") -> list[list[Band]]:
        """The quantile bands of columns ``lo, lo + 1, ...`` (``tops``: their max
        activations): equal-width bands of ``(0, top]``, each with the first
        ``band_examples`` sampled activations in it, in key order (a random order). The
        band is chosen from the sampled activation, so only kept windows become examples."""
        import torch

        n_b, room = cfg.n_bands, cfg.band_examples
        keys = self.values[:, lo : lo + len(tops)].T.tolist()  # [n, m]
        peaks = self.acts[:, lo : lo + len(tops), self.before].T.tolist()  # [n, m]: the sampled activations
        out, rows, cols, slots = [], [], [], []
        for jj, (top, kk, pp) in enumerate(zip(tops, keys, peaks)):
            edges = [top * b / n_b for b in range(n_b + 1)]
            bands = [Band(low=round_sig(edges[b]), high=round_sig(edges[b + 1]), examples=[]) for b in range(n_b)]
            counts, left = [0] * n_b, n_b * room
            for r, (key, a) in enumerate(zip(kk, pp)):
                if not left:  # every band full
                    break
                if not math.isfinite(key):  # -inf: an empty slot of the sample
                    continue
                b = min(max(math.ceil(round_sig(a) / top * n_b) - 1, 0), n_b - 1) if top > 0 else 0
                if counts[b] < room:
                    counts[b], left = counts[b] + 1, left - 1
                    rows.append(r)
                    cols.append(lo + jj)
                    slots.append(bands[b].examples)  # filled below, once all windows are read
            out.append(bands)
        for slot, ex in zip(slots, _card_examples(self, torch.tensor(rows, dtype=torch.long),
                                                  torch.tensor(cols, dtype=torch.long))):
            slot.append(ex)
        return out


def collect(
    model: "HookedTransformer",
    targets: Sequence[DashboardTarget],
    features: "str | Sequence[int] | None",
    corpus: "str | Sequence[str] | torch.Tensor | None" = None,
    *,
    config: DashboardConfig | None = None,
    progress: bool = True,
) -> list[LayerDashboard]:
    """Dashboards of ``features`` of every SAE in ``targets`` from one pass over ``corpus``.

    Args:
        model: the language model (TransformerLens).
        targets: the SAEs (each reads its own hook of ``model``).
        features: feature spec (``"0-2047"``) or indices, the same for every SAE
            (checked against each SAE's ``d_sae`` before anything runs); ``None``: all.
        corpus: see :func:`trajectory.features.real_activations.corpus_tokens`.
        config: :class:`DashboardConfig` (default ``DashboardConfig()``).
        progress: show a tqdm bar.

    Returns:
        One :class:`LayerDashboard` per target, in the order given.
    """
    import torch

    cfg = config or DashboardConfig()
    if not targets:
        raise ValueError("no SAE to build a dashboard for; pass at least one layer")
    scans = []
    for t in targets:
        check_sae_fits(t.sae, model, t.hook, what=f"the SAE of {t.name}")
        d_sae = int(t.sae.cfg.d_sae)
        scans.append(LayerScan(t, list(range(d_sae)) if features is None else parse_features(features, d_sae=d_sae), cfg))
    corpus_name, tokens = corpus_tokens(model, corpus, context_length=cfg.context_length, max_tokens=cfg.max_tokens)
    generator = torch.Generator().manual_seed(cfg.seed)
    for start, batch, mask, acts in stream_corpus(model, tokens, [t.hook for t in targets],
                                                  batch_size=cfg.batch_size, include_bos=cfg.include_bos,
                                                  progress=progress, desc="dashboard"):
        for scan in scans:
            scan.add(acts[scan.target.hook], mask, batch, start, generator)
    settings = {**asdict(cfg), "context_length": int(tokens.shape[1]), "window": list(cfg.window)}
    return [_layer_dashboard(model, scan, cfg, corpus_name, settings) for scan in scans]


def decoder_neighbours_topk(sae: "SAE", features: Sequence[int], n: int, chunk: int = 256
                            ) -> list[list[tuple[int, float]]]:
    """Per feature, the ``n`` other features whose decoder rows have the largest cosine
    with its own, ``(index, cosine)`` best first; ``chunk`` features at a time
    (``[chunk, d_sae]`` cosines in memory)."""
    from trajectory.features.logits import decoder_cosines

    n = min(n, int(sae.cfg.d_sae) - 1)
    if n <= 0:
        return [[] for _ in features]
    out: list[list[tuple[int, float]]] = []
    for cos in decoder_cosines(sae, features, chunk):
        v, i = cos.topk(n, dim=-1)
        out += [[(a, round_sig(b)) for a, b in zip(ii, vv)] for ii, vv in zip(i.tolist(), v.tolist())]
    return out


def _card_examples(top: TopExamples, rows: "torch.Tensor", cols: "torch.Tensor") -> list[CardExample]:
    """The windows ``(rows[i], cols[i])`` of ``top`` as card examples (one ``tolist`` per
    field, then plain Python: indexing tensors one element at a time is slow)."""
    before = top.before
    out = []
    for ids, acts, chunk, position in zip(top.ids[rows, cols].tolist(), top.acts[rows, cols].tolist(),
                                          top.chunk[rows, cols].tolist(), top.position[rows, cols].tolist()):
        # ids: -1 outside the chunk; only 0 needs no rounding (most of a window)
        values = [a and round_sig(a) for i, a in zip(ids, acts) if i >= 0]
        peak = before - ids[:before].count(-1)  # tokens kept before the peak
        out.append(CardExample(token_ids=[i for i in ids if i >= 0], activations=values, peak=peak,
                               activation=values[peak], chunk=chunk, position=position))
    return out


def _top_examples(top: TopExamples, lo: int, hi: int) -> list[list[CardExample]]:
    """Columns ``lo..hi-1``'s top examples, best first (ties: earlier chunk and position)."""
    import torch

    cols, rows = torch.isfinite(top.values[:, lo:hi].T).nonzero(as_tuple=True)  # by column, then row
    out: list[list[CardExample]] = [[] for _ in range(hi - lo)]
    for c, ex in zip(cols.tolist(), _card_examples(top, rows, cols + lo)):
        out[c].append(ex)
    for examples in out:
        examples.sort(key=lambda e: (-e.activation, e.chunk, e.position))
    return out


def _layer_dashboard(model: "HookedTransformer", scan: LayerScan, cfg: DashboardConfig, corpus: str,
                     settings: dict[str, Any]) -> LayerDashboard:
    """The :class:`LayerDashboard` of a finished scan (logit effects and neighbours in chunks)."""
    t, feats, n_tok = scan.target, scan.feats, max(scan.n_tokens, 1)
    effects = chunked_logit_effects(model, t.sae, feats, k=cfg.n_logits, final_norm=cfg.final_norm,
                                    chunk=cfg.feature_chunk)
    neighbours = decoder_neighbours_topk(t.sae, feats, cfg.n_neighbours, cfg.feature_chunk)
    n_active, act_sum, maxima = scan.n_active.tolist(), scan.act_sum.tolist(), scan.max.tolist()
    cards = []
    for lo in range(0, len(feats), cfg.feature_chunk):  # tensors to lists a chunk of features at a time
        hi = min(lo + cfg.feature_chunk, len(feats))
        tops = [maxima[j] if n_active[j] else 0.0 for j in range(lo, hi)]
        examples, bands = _top_examples(scan.top, lo, hi), scan.sample.bands(lo, tops, cfg)
        for j in range(lo, hi):
            f, na, top = feats[j], n_active[j], tops[j - lo]
            first, counts = scan.histogram(j)
            cards.append(FeatureCard(
                feature=f, explanation=t.explanations.get(f), density=round_sig(na / n_tok), n_active=na,
                max_activation=round_sig(top), mean_activation=round_sig(act_sum[j] / n_tok),
                mean_active=round_sig(act_sum[j] / na) if na else 0.0,
                hist_start=first, histogram=counts, examples=examples[j - lo], bands=bands[j - lo],
                top_logits=[(s, round_sig(v)) for s, v in effects[f][0]],
                bottom_logits=[(s, round_sig(v)) for s, v in effects[f][1]],
                neighbours=neighbours[j],
            ))
    decode = token_decoder(model)
    used = sorted({i for c in cards for e in c.all_examples() for i in e.token_ids})
    return LayerDashboard(
        name=t.name, layer=t.layer, hook_name=t.hook, model_name=str(model.cfg.model_name), sae=sae_info(t.sae),
        corpus=corpus, n_tokens=scan.n_tokens, **provenance(settings), hist_edges=[round_sig(e) for e in HIST_EDGES],
        tokens={i: decode(i) for i in used}, features=cards,
    )

"""One streaming pass over a corpus, shared by the real analysis and the dashboard.

::

    stream_corpus(model, tokens, hooks, ...) ─► (start, batch, mask, {hook: acts}) per batch
    select_features(sae, acts, index, mask)  ─► [B, P, nf] activations of the requested features
    FeatureScan.add(...)                     ─► running counts, sums, max, histogram, top examples

:func:`trajectory.features.real` (one SAE) and :func:`trajectory.dashboard.collect` (the SAEs
of many layers, plus a sample for the quantile bands) run exactly this code, so their
densities, means, maxima, histograms and top examples agree by construction. Everything
kept is a fixed-size tensor per feature: memory does not grow with the corpus.

Histogram bins are fixed and log-spaced (:data:`HIST_EDGES`: 20 per decade from 1e-4 to
1e4), so they need no first pass to find each feature's range.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from trajectory.features.report import Example
from trajectory.hooks import layer_of

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

#: histogram bin edges: 20 log-spaced bins per decade from 1e-4 to 1e4 (bin ``i`` covers
#: ``[HIST_EDGES[i], HIST_EDGES[i+1])``; smaller non-zero values — negative ones too — count
#: in bin 0, larger ones in the last)
HIST_EDGES = [10 ** (-4 + i / 20) for i in range(161)]


def stop_layer(hook_name: str) -> int | None:
    """``stop_at_layer`` that still runs the hook: the block after its own; 0 for the
    embedding hooks; ``None`` (whole model) for anything after the blocks."""
    layer = layer_of(hook_name)
    if layer is not None:
        return layer + 1
    if hook_name in ("hook_embed", "hook_pos_embed", "hook_tokens"):
        return 0
    return None


def hook_batch(model: "HookedTransformer", tokens: "torch.Tensor", hooks: Sequence[str]) -> dict[str, "torch.Tensor"]:
    """``{hook: [batch, pos, width]}`` for several hooks from one forward pass that stops
    after the last of them (:func:`stop_layer`)."""
    seen: dict[str, Any] = {}

    def grab(act, hook):
        seen[hook.name] = act.flatten(2) if act.dim() > 3 else act  # hook_z: heads concatenated
        return act

    stops = [stop_layer(h) for h in hooks]
    stop = None if any(s is None for s in stops) else max(stops)
    model.run_with_hooks(tokens, stop_at_layer=stop, fwd_hooks=[(h, grab) for h in dict.fromkeys(hooks)],
                         return_type=None)
    missing = [h for h in hooks if h not in seen]
    if missing:
        raise ValueError(f"hook(s) {missing} did not fire on a forward pass of {model.cfg.model_name}")
    return seen


def stream_corpus(
    model: "HookedTransformer", tokens: "torch.Tensor", hooks: Sequence[str], *, batch_size: int,
    include_bos: bool = False, progress: bool = True, desc: str = "scan",
) -> Iterator[tuple[int, "torch.Tensor", "torch.Tensor", dict[str, "torch.Tensor"]]]:
    """Run ``tokens [n_chunks, P]`` through ``model`` ``batch_size`` chunks at a time (no
    gradients, one forward pass per batch for all ``hooks``), with a progress bar.

    Yields:
        ``(start, batch [B, P], mask [B, P], {hook: [B, P, width]})``: ``start`` the index
        of the batch's first chunk, ``mask`` the counted positions (BOS left out unless
        ``include_bos``).
    """
    import torch
    from tqdm.auto import tqdm

    n_chunks, P = tokens.shape
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else None
    with tqdm(total=n_chunks * P, desc=desc, unit="tok", unit_scale=True, disable=not progress) as bar:
        with torch.no_grad():
            for start in range(0, n_chunks, batch_size):
                batch = tokens[start : start + batch_size]
                mask = torch.ones(batch.shape, dtype=torch.bool) if (include_bos or bos is None) else batch != bos
                acts = hook_batch(model, batch.to(model.cfg.device), hooks)
                yield start, batch, mask, acts
                del acts
                bar.update(batch.numel())


def select_features(sae: "SAE", x: "torch.Tensor", index: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """``[B, P, nf]`` float32 CPU activations of the features ``index [nf]`` for hook
    activations ``x [B, P, d_in]``; positions outside ``mask [B, P]`` are 0."""
    acts = sae.encode(x.to(sae.W_enc.device, sae.W_enc.dtype))  # [B, P, d_sae]
    return acts.index_select(-1, index.to(acts.device)).float().cpu() * mask[..., None]


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


class FeatureScan:
    """Running statistics of ``nf`` features over a scan (column ``j`` = the ``j``-th
    requested feature); every field has a fixed size, whatever the corpus length.

    Attributes:
        n_tokens: counted tokens (BOS excluded unless asked for).
        n_active: ``[nf]`` counted tokens where each feature is non-zero.
        act_sum: ``[nf]`` float64 sum of each feature's activations.
        max: ``[nf]`` largest non-zero activation (``-inf``: never active).
        hist: ``[nf, len(HIST_EDGES) - 1]`` counts of the non-zero activations per bin.
        top: the top-activating windows (:class:`TopExamples`).
    """

    def __init__(self, nf: int, max_examples: int, window: tuple[int, int]):
        import torch

        self.n_tokens = 0
        self.n_active = torch.zeros(nf, dtype=torch.long)
        self.act_sum = torch.zeros(nf, dtype=torch.float64)
        self.max = torch.full((nf,), float("-inf"))
        self.inner_edges = torch.tensor(HIST_EDGES[1:-1])
        self.hist = torch.zeros(nf, len(HIST_EDGES) - 1, dtype=torch.long)
        self.top = TopExamples(nf, max_examples, window)

    def add(self, sel: "torch.Tensor", mask: "torch.Tensor", batch: "torch.Tensor", start: int) -> "torch.Tensor":
        """Merge a batch: ``sel [B, P, nf]`` activations (0 outside ``mask``), ``mask
        [B, P]`` counted positions, ``batch [B, P]`` token ids, ``start`` its first chunk's
        index. Returns the non-zero mask ``[B, P, nf]``."""
        import torch

        active = sel != 0
        self.n_tokens += int(mask.sum())
        self.n_active += active.sum((0, 1))
        self.act_sum += sel.sum((0, 1), dtype=torch.float64)
        self.max = torch.maximum(self.max, sel.masked_fill(~active, float("-inf")).amax((0, 1)))
        _, _, f_i = active.nonzero(as_tuple=True)
        bins = torch.bucketize(sel[active], self.inner_edges, right=True)  # [n_nonzero], same order as f_i
        nb = self.hist.shape[1]
        self.hist += torch.bincount(f_i * nb + bins, minlength=self.hist.numel()).view_as(self.hist)
        self.top.add(sel, active, batch, start)
        return active

    def max_activation(self, j: int) -> float:
        """Column ``j``'s largest non-zero activation (0 when never active)."""
        return float(self.max[j]) if int(self.n_active[j]) else 0.0

    def histogram(self, j: int) -> tuple[int, list[int]]:
        """Column ``j``'s histogram over its non-empty range: ``(first, counts)``, count
        ``i`` being that of bin ``first + i`` of :data:`HIST_EDGES` (``(0, [])``: never active)."""
        counts = self.hist[j].tolist()
        first = next((i for i, c in enumerate(counts) if c), 0)
        last = max((i for i, c in enumerate(counts) if c), default=-1)
        return first, counts[first : last + 1]


def coarse_histogram(first: int, counts: Sequence[int], n_bins: int) -> tuple[list[float], list[int]]:
    """``(edges, counts)`` of at most ``n_bins`` bins made by merging runs of consecutive
    :data:`HIST_EDGES` bins (``first`` the first one, ``counts`` theirs): exact counts,
    log-spaced edges; ``([], [])`` for no counts."""
    if not counts:
        return [], []
    group = max(1, math.ceil(len(counts) / n_bins))
    merged = [sum(counts[i : i + group]) for i in range(0, len(counts), group)]
    last = len(HIST_EDGES) - 1
    edges = [HIST_EDGES[min(first + i * group, last)] for i in range(len(merged) + 1)]
    return [float(e) for e in edges], merged

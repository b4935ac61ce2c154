"""A causal test of every trajectory edge: :func:`edge_effects`.

An edge ``(t, L-1) → (q, L)`` says "layer L's attention from key ``t`` brought newcomer
features to query ``q``". Two interventions test it, each against the clean run:

**Key knock-out.** Layer L's attention for query ``q`` is computed without key ``t``:
``pattern[h, q, t] = 0`` for every head ``h`` (no renormalisation), then on through the
post-attention norm as the model does, and the rest of the model runs on. Edge
attributes added:

====================  ===================================================================
knockout_kl           ``float``: KL(clean ‖ knocked-out) of the next-token distribution at
                      the prompt's last position
knockout_kl_query     ``float``: the same at position ``q``
knockout_logit_delta  ``float``: knocked-out minus clean logit of the clean top-1 next token
                      at the last position
newcomers_lost        ``float``: fraction of the edge's ``features`` no longer within rank
                      ``T`` (active, top-T) at (q, L) at the graph's final step — the
                      residual stream after attention (``resid_mid``, ``through="attention"``)
                      or after the MLP (``resid_post``, ``through="mlp"``) — encoded with
                      layer L's SAE
====================  ===================================================================

**Feature ablation.** Each newcomer feature ``f`` of the edge clamped to 0 at (q, L) at
the bank's hook (``x − a_f · W_dec[f]``, the SAE's reconstruction error kept): every
entry of the edge's ``features`` list gets ``ablation_kl`` (KL at the last position).

``g.graph["causal"]`` records ``{position, top_id, top_token}`` (the last position and
the clean top-1 next token).

Batched, and only what changes is recomputed: the clean run caches the residual stream
at every needed layer; the knock-outs (and ablations) of one layer run as batches from
that layer on (``start_at_layer``), sorted by query position. By causality nothing
before a batch's smallest query position ``s`` changes, so a batch runs only positions
``s..N-1``, attending to the clean keys and values of positions ``< s`` from a prefix
key-value cache (one per distinct ``s``, filled by one batch-1 pass). Ablations at a
``resid_post`` (or ``resid_pre``) hook edit that residual directly and start at the next
block. Only the needed positions go through the unembedding (the last one, and ``q`` for
knock-outs).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from trajectory.hooks import attn_hook, resid_mid, resid_post, resid_pre
from trajectory.interventions.hooks import decoder_row, latents

if TYPE_CHECKING:  # pragma: no cover
    import networkx as nx
    import torch
    from transformer_lens import HookedTransformer

    from trajectory.evolution.result import Evolution
    from trajectory.saes.bank import SAEBank

log = logging.getLogger(__name__)

#: Runs per batch when ``batch_size`` is not given.
DEFAULT_BATCH_SIZE = 32


def edge_effects(
    model: "HookedTransformer",
    bank: "SAEBank",
    evo: "Evolution",
    g: "nx.DiGraph",
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ablations: bool = True,
    progress: bool = False,
) -> "nx.DiGraph":
    """Annotate every edge of the trajectory graph ``g`` (built from ``evo``) in place.

    Args:
        model: the model the evolution ran.
        bank: its SAE bank (the layers of ``g``'s edges).
        evo: the :class:`~trajectory.evolution.Evolution` behind ``g`` (for the token ids).
        g: a graph of :func:`~trajectory.graph.build.trajectory_graph`.
        batch_size: forward runs per batch.
        ablations: also ablate each newcomer feature (``ablation_kl``).
        progress: progress bar over layers.

    Returns:
        ``g``, with the attributes of the module docstring.
    """
    import torch
    from tqdm.auto import tqdm

    if g.graph.get("kind") != "trajectory":
        raise ValueError("edge_effects needs a trajectory graph (trajectory_graph(evo, ...)); got kind="
                         f"{g.graph.get('kind')!r}")
    if list(g.graph.get("tokens", evo.tokens)) != list(evo.tokens):
        raise ValueError("the graph was built from another prompt than this evolution; pass the evolution it came from")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    by_layer: dict[int, list] = {}
    for u, v, data in g.edges(data=True):
        by_layer.setdefault(int(data["layer"]), []).append(data)
    missing = sorted(set(by_layer) - set(bank.layers))
    if missing:
        raise ValueError(f"the graph has edges at layer(s) {missing}, which the SAE bank lacks (it has "
                         f"{list(bank.layers)}); open the bank the evolution used")
    ids = torch.tensor(evo.token_ids, dtype=torch.long, device=model.cfg.device)[None]
    wanted = {resid_pre(L) for L in by_layer}
    if ablations:
        wanted |= {_ablation_start(bank.hook_name(L), L)[0] for L in by_layer}
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=sorted(wanted))
    last = ids.shape[1] - 1
    clean = torch.log_softmax(logits[0].float(), dim=-1).cpu()
    top = int(logits[0, last].argmax())
    run = _Runner(model, ids, clean=clean, top=top, clean_logit=float(logits[0, last, top]))
    ctx = dict(T=int(g.graph["T"]), through=g.graph.get("through", "attention"), batch_size=int(batch_size))
    for L in tqdm(sorted(by_layer), desc="edge effects", disable=not progress, unit="layer"):
        _knockouts(run, bank, L, cache[resid_pre(L)], by_layer[L], ctx)
        if ablations:
            _ablations(run, bank, L, cache, by_layer[L], ctx)
    token = model.tokenizer.decode([top]) if model.tokenizer is not None else str(top)
    g.graph["causal"] = dict(position=last, top_id=top, top_token=token)
    log.info("edge effects: %d edges over %d layer(s)", g.number_of_edges(), len(by_layer))
    return g


def _ablation_start(hook: str, L: int) -> tuple[str, int]:
    """Where an ablation at the bank's ``hook`` of layer ``L`` is applied: the cached
    activation to edit and the block to start from. ``resid_post(L)`` is the input of
    block ``L+1``; any other hook is edited by a hook on a run from ``resid_pre(L)``."""
    if hook == resid_post(L):
        return hook, L + 1
    return resid_pre(L), L


class _Runner:
    """Runs blocks ``start..`` on the positions ``s..N-1`` of a batch, the positions before
    ``s`` read from a prefix key-value cache of the clean run (one per ``s``)."""

    def __init__(self, model, ids, *, clean, top: int, clean_logit: float):
        self.model, self.ids = model, ids
        self.clean, self.top, self.clean_logit = clean, top, clean_logit  # clean: [N, V] log-probs
        self.last = int(ids.shape[1]) - 1
        self._prefixes: dict[int, object] = {}
        self._unembed = None

    def _cache(self, s: int, B: int):
        """A frozen cache holding the clean keys/values of positions ``< s``, batch ``B``."""
        import torch
        from transformer_lens import TransformerLensKeyValueCache
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

        if s not in self._prefixes:
            prefix = TransformerLensKeyValueCache.init_cache(self.model.cfg, self.model.cfg.device, 1)
            with torch.no_grad():
                self.model(self.ids[:, :s], past_kv_cache=prefix, return_type=None)
            self._prefixes[s] = prefix
        prefix = self._prefixes[s]
        entries = [TransformerLensKeyValueCacheEntry(e.past_keys.expand(B, -1, -1, -1),
                                                     e.past_values.expand(B, -1, -1, -1), frozen=True)
                   for e in prefix.entries]
        return TransformerLensKeyValueCache(entries=entries, frozen=True,
                                            previous_attention_mask=prefix.previous_attention_mask.expand(B, -1))

    def __call__(self, x: "torch.Tensor", start: int, s: int, hooks: list[tuple[str, Callable]],
                 q: "torch.Tensor | None" = None):
        """Run ``x [B, N-s, d_model]`` (positions ``s..N-1`` entering block ``start``) with
        ``hooks``; return the log-probs ``[B, P, d_vocab]`` at the last position (and at
        ``q``, absolute positions ``[B]``, when given: ``P = 2``) and ``[B]`` the logit of
        the clean top-1 token at the last position."""
        import torch

        model, B = self.model, x.shape[0]
        cache = self._cache(s, B) if s > 0 else None
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            final = model(x, start_at_layer=start, stop_at_layer=model.cfg.n_layers, past_kv_cache=cache)
        picked = [final[:, self.last - s]]
        if q is not None:
            picked.append(final[torch.arange(B, device=final.device), q.to(final.device) - s])
        picked = torch.stack(picked, dim=1)  # [B, P, d_model], before ln_final
        if self._unembed is None:  # TL's Unembed copies W_U.T per call; here once per edge_effects
            from trajectory.model.unembed import Unembedding

            self._unembed = Unembedding(model)
        logits = self._unembed.logits(self._unembed.normalize(picked))  # per position, as the full forward does
        return torch.log_softmax(logits, dim=-1).cpu(), logits[:, 0, self.top].cpu()


def _knockouts(run: _Runner, bank, L: int, x0: "torch.Tensor", edges: list[dict], ctx: dict) -> None:
    """Key knock-outs of the edges of layer ``L`` (batched), written onto the edge dicts."""
    import torch

    sae, step_hook = bank[L], (resid_mid(L) if ctx["through"] == "attention" else resid_post(L))
    for chunk in _chunks(sorted(edges, key=lambda e: e["target_token"]), ctx["batch_size"]):
        B = len(chunk)
        b = torch.arange(B, device=x0.device)
        q = torch.tensor([e["target_token"] for e in chunk], device=x0.device)
        t = torch.tensor([e["source_token"] for e in chunk], device=x0.device)
        s = int(q.min())  # positions before s are the clean run's
        kept = {}

        def knock_out(pattern, hook):  # [B, head, query s.., key 0..]
            pattern[b, :, q - s, t] = 0.0
            return pattern

        def keep_step(x, hook):  # the final step's vector at (q, L)
            kept["x"] = x[b, q - s].detach().clone()

        hooks = [(attn_hook(L, "pattern"), knock_out), (step_hook, keep_step)]
        lp, top_logit = run(x0[:, s:].expand(B, -1, -1).clone(), L, s, hooks, q)
        kl_last = _kl(run.clean[run.last], lp[:, 0])
        kl_query = _kl(run.clean[q.cpu()], lp[:, 1])
        delta = top_logit - run.clean_logit
        with torch.no_grad():
            acts = latents(sae, kept["x"])  # [B, d_sae]
            vals, idx = torch.topk(acts, min(ctx["T"], acts.shape[-1]), dim=-1)
        for i, e in enumerate(chunk):
            within = set(idx[i][vals[i] > 0].tolist())
            feats = [f["feature"] for f in e["features"]]
            e["knockout_kl"] = float(kl_last[i])
            e["knockout_kl_query"] = float(kl_query[i])
            e["knockout_logit_delta"] = float(delta[i])
            e["newcomers_lost"] = sum(f not in within for f in feats) / max(len(feats), 1)


def _ablations(run: _Runner, bank, L: int, cache, edges: list[dict], ctx: dict) -> None:
    """Each newcomer feature of each edge clamped to 0 at (q, L) at the bank's hook (batched)."""
    import torch

    sae, hook = bank[L], bank.hook_name(L)
    edited, start = _ablation_start(hook, L)
    x0 = cache[edited]
    items = sorted(((e, f) for e in edges for f in e["features"]), key=lambda ef: ef[0]["target_token"])
    for chunk in _chunks(items, ctx["batch_size"]):
        B = len(chunk)
        b = torch.arange(B, device=x0.device)
        q = torch.tensor([e["target_token"] for e, _ in chunk], device=x0.device)
        feats = torch.tensor([int(f["feature"]) for _, f in chunk], device=x0.device)
        s = int(q.min())

        def ablate(x, hook=None):  # x [B, pos s.., d_in]; remove a_f · W_dec[f] at (b, q_b)
            a = latents(sae, x[b, q - s])[b, feats]  # [B]
            rows = torch.stack([decoder_row(sae, int(f), x) for f in feats])  # [B, d_in]
            x = x.clone()
            x[b, q - s] -= a[:, None] * rows
            return x

        x = x0[:, s:].expand(B, -1, -1)
        if edited == hook:  # edit the cached activation, run on from the next block
            lp, _ = run(ablate(x), start, s, [])
        else:
            lp, _ = run(x.clone(), start, s, [(hook, ablate)])
        kl_last = _kl(run.clean[run.last], lp[:, 0])
        for i, (_, f) in enumerate(chunk):
            f["ablation_kl"] = float(kl_last[i])


def _kl(clean: "torch.Tensor", other: "torch.Tensor") -> "torch.Tensor":
    """``KL(clean ‖ other)`` of log-prob rows (``clean`` ``[V]`` or ``[B, V]``, ``other`` ``[B, V]``)."""
    return (clean.exp() * (clean - other)).sum(-1).clamp_min(0.0)


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]

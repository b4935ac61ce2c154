"""Synthetic analysis: token sequences optimised to make a feature fire.

The search is a continuous relaxation over the vocabulary. Each position ``s`` of a
sequence of ``seq_len`` tokens has learnable logits ``z[s] [V]``; its input embedding is
``softmax(z[s] / tau) @ W_E`` (``W_E [V, d_model]``), fed to the model through a hook on
``hook_embed`` behind a real BOS. In TransformerLens, Gemma's ``sqrt(d_model)``
embedding scale is already folded into ``W_E``, so the relaxed embedding is on the
same scale as real tokens' (positional embeddings, if the model has them, are added
by the model as usual). Adam maximises the feature's SAE pre-activation at the last
position (which attends to the whole sequence; for TopK SAEs, its margin over the k-th
strongest other feature too, see :func:`feature_objective`) while the temperature
``tau`` anneals geometrically from ``temperature[0]`` to ``temperature[1]``, pushing
each position towards one token.

What is reported is never the relaxed objective: every ``eval_every`` steps each
restart is *projected* to real tokens (``argmax z[s]``), that token sequence is run
through the model and the SAE's own ``encode``, and the best activation (over
non-BOS positions) seen for a projected sequence is kept. Restarts run together as
one batch; everything is deterministic for a given ``seed`` on a given device.

The steps: :class:`TokenSearch` (the candidate tokens and their embeddings, once per
run), :meth:`TokenSearch.optimise` (one feature: Adam steps with projections, ->
:class:`SearchResult`), :func:`search_stats` (-> :class:`FeatureStats`), and
:meth:`FeatureReport.from_run`.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from trajectory.features.config import SyntheticConfig, make_config
from trajectory.features.logits import logit_effects, token_decoder
from trajectory.features.real_activations import checked_features, hook_activations
from trajectory.features.report import Example, FeatureReport, FeatureStats

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


def feature_preactivation(sae: "SAE", x: "torch.Tensor", feature: int) -> "torch.Tensor":
    """The SAE's pre-activation of one feature, differentiable: ``[..., d_in] -> [...]``.

    ``process_sae_in(x) @ W_enc[:, f] + b_enc[f]`` (times ``||W_dec[f]||`` for SAEs
    that rescale by decoder norm) — the quantity the SAE's activation function
    thresholds, so it has a gradient even where the feature is off.
    """
    return _hidden_pre(sae, x, feature)


def _hidden_pre(sae: "SAE", x: "torch.Tensor", features: "int | slice" = slice(None)) -> "torch.Tensor":
    """Pre-activations of ``features`` (one index: ``[...]``; a slice: ``[..., m]``), as the
    SAE's encode computes them before its activation function."""
    sae_in = sae.process_sae_in(x.to(sae.W_enc.dtype))
    pre = sae_in @ sae.W_enc[:, features] + sae.b_enc[features]
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        pre = pre * sae.W_dec[features].norm(dim=-1)
    return pre


def topk_of(sae: "SAE") -> int | None:
    """The ``k`` of an SAE whose activation keeps the top-k pre-activations (TopK), else ``None``."""
    k = getattr(sae.cfg, "k", None)
    return int(k) if k is not None and "topk" in type(sae).__name__.lower() else None


def feature_objective(sae: "SAE", x: "torch.Tensor", feature: int) -> "torch.Tensor":
    """What the search maximises for ``feature`` at ``x [..., d_in]`` -> ``[...]``.

    For threshold SAEs (JumpReLU, ReLU) the feature's pre-activation
    (:func:`feature_preactivation`): its threshold is a constant. For TopK SAEs the
    feature also has to beat the others: with ``m = pre_f - max(kth_other, 0)``
    (``kth_other``: the k-th largest pre-activation among the other features) the
    objective is ``pre_f + min(m, 0)``, which pushes the competitors down as long as the
    feature is outside the top-k (its activation is 0 there whatever ``pre_f`` is) and
    equals ``pre_f`` once it is in.
    """
    import torch

    k = topk_of(sae)
    if k is None:
        return feature_preactivation(sae, x, feature)
    hidden = _hidden_pre(sae, x)  # [..., d_sae]
    pre = hidden[..., feature]
    others = hidden.index_fill(-1, torch.tensor([feature], device=hidden.device), float("-inf"))
    kth = others.topk(min(k, others.shape[-1] - 1), dim=-1).values[..., -1].clamp(min=0)
    return pre + torch.clamp(pre - kth, max=0)


def candidate_tokens(model: "HookedTransformer", vocab: Sequence[int] | None = None) -> "torch.Tensor":
    """Token ids the search may use: ``vocab`` or every id except special tokens."""
    import torch

    if vocab is not None:
        ids = torch.tensor(sorted({int(v) for v in vocab}), dtype=torch.long)
        if len(ids) == 0 or ids.min() < 0 or ids.max() >= model.cfg.d_vocab:
            raise ValueError(f"vocab must be non-empty token ids below d_vocab={model.cfg.d_vocab}")
        return ids
    special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    keep = [i for i in range(model.cfg.d_vocab) if i not in special]
    return torch.tensor(keep, dtype=torch.long)


def synthetic(
    model: "HookedTransformer",
    sae: "SAE",
    features: "str | Iterable[int]",
    *,
    config: SyntheticConfig | None = None,
    hook_name: str | None = None,
    best_real: "Mapping[int, float] | FeatureReport | None" = None,
    progress: bool = True,
    **settings: Any,
) -> FeatureReport:
    """Optimise token sequences that maximise each feature (see the module docstring).

    Args:
        model / sae: as for :func:`trajectory.features.real`.
        features: feature spec or indices.
        config: the settings (:class:`SyntheticConfig`; default ``SyntheticConfig()``).
        hook_name: default ``sae.cfg.metadata.hook_name``.
        best_real: best real activation per feature (a ``"real"`` report or a mapping),
            stored in ``best_real_activation`` for comparison.
        progress: tqdm bar over features.
        **settings: fields of :class:`SyntheticConfig` (``seq_len``, ``n_steps``,
            ``learning_rate``, ``restarts``, ``seed``, ``temperature``, ``eval_every``,
            ``vocab``, ``n_logits``, ``final_norm``), overriding ``config``'s.

    Returns:
        A ``"synthetic"`` :class:`FeatureReport`: per feature ``synthetic_activation``
        (= ``max_activation``: the best projected sequence's real activation),
        ``relaxed_activation``, ``examples`` (best projected sequence of each restart,
        best first), ``time_s``.
    """
    from tqdm.auto import tqdm

    cfg = make_config(SyntheticConfig, config, settings)
    hook, feats = checked_features(model, sae, features, hook_name)
    if isinstance(best_real, FeatureReport):
        best_real = {f: s.max_activation for f, s in best_real.items()}
    search = TokenSearch(model, sae, hook, cfg)
    decode = token_decoder(model)
    effects = logit_effects(model, sae, feats, k=cfg.n_logits, final_norm=cfg.final_norm)
    dec_norms = sae.W_dec.detach()[feats].float().norm(dim=-1).cpu()

    stats: dict[int, FeatureStats] = {}
    for j, f in enumerate(tqdm(feats, desc=f"synthetic {hook}", unit="feature", disable=not progress)):
        start = time.perf_counter()
        found = search.optimise(f)
        best = None if best_real is None or f not in best_real else float(best_real[f])
        stats[f] = search_stats(found, f, decode=decode, decoder_norm=float(dec_norms[j]), logits=effects[f],
                                best_real=best, start=start)
    used = dict(
        seq_len=cfg.seq_len, n_steps=cfg.n_steps, learning_rate=cfg.learning_rate, restarts=cfg.restarts, seed=cfg.seed,
        temperature=list(cfg.temperature), eval_every=cfg.eval_every, vocab_size=int(len(search.cand)),
        final_norm=cfg.final_norm,
    )
    return FeatureReport.from_run("synthetic", stats, model=model, sae=sae, hook_name=hook, settings=used)


@dataclass
class SearchResult:
    """The best projected token sequence of each restart, for one feature.

    Attributes (``R`` restarts, ``L = n_prefix + seq_len``):
        values: ``[R]`` best activation over the non-prefix positions (``-inf``: none yet).
        ids: ``[R, L]`` its tokens, BOS prefix first.
        acts: ``[R, L]`` the feature's activation on each.
        relaxed: ``[R]`` the relaxed objective at the last step.
        n_prefix: 1 when a BOS comes first, else 0.
    """

    values: "torch.Tensor"
    ids: "torch.Tensor"
    acts: "torch.Tensor"
    relaxed: "torch.Tensor"
    n_prefix: int


class TokenSearch:
    """The relaxed search of one run: candidate tokens ``cand [V]``, their embeddings
    ``E [V, d_model]`` and the BOS prefix, shared by all features."""

    def __init__(self, model: "HookedTransformer", sae: "SAE", hook: str, cfg: SyntheticConfig):
        import torch

        self.model, self.sae, self.hook, self.cfg = model, sae, hook, cfg
        self.device = model.cfg.device
        bos = model.tokenizer.bos_token_id if model.tokenizer is not None else None
        self.prefix = [bos] if bos is not None else []
        self.cand = candidate_tokens(model, cfg.vocab).to(self.device)
        self.E = model.W_E.detach()[self.cand]  # [V, d_model]
        # [R, n_prefix]: the BOS in front of every restart's sequence
        self.prefix_ids = torch.tensor(self.prefix, dtype=torch.long, device=self.device).expand(cfg.restarts, -1)

    def optimise(self, feature: int) -> SearchResult:
        """Adam on the logits ``z [R, seq_len, V]`` with annealed temperature, projecting to
        tokens every ``eval_every`` steps and after the last."""
        import torch

        cfg, R = self.cfg, self.cfg.restarts
        gen = torch.Generator(device="cpu").manual_seed(int(cfg.seed) * 1_000_003 + int(feature))
        z = torch.randn(R, cfg.seq_len, len(self.cand), generator=gen).to(self.device, self.E.dtype).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=cfg.learning_rate)
        L = len(self.prefix) + cfg.seq_len
        found = SearchResult(values=torch.full((R,), float("-inf")), ids=torch.zeros(R, L, dtype=torch.long),
                             acts=torch.zeros(R, L), relaxed=torch.zeros(R), n_prefix=len(self.prefix))
        t0, t1 = cfg.temperature
        for step in range(cfg.n_steps):
            tau = t0 * (t1 / t0) ** (step / max(cfg.n_steps - 1, 1))
            found.relaxed = self._step(z, opt, tau, feature)
            if (step + 1) % cfg.eval_every == 0 or step == cfg.n_steps - 1:
                self._project(z, feature, found)
        return found

    def _tokens(self, z: "torch.Tensor") -> "torch.Tensor":
        """``[R, n_prefix + seq_len]``: the prefix, then each position's most likely token."""
        import torch

        return torch.cat([self.prefix_ids, self.cand[z.detach().argmax(-1)]], 1)

    def _step(self, z: "torch.Tensor", opt: "torch.optim.Optimizer", tau: float, feature: int) -> "torch.Tensor":
        """One Adam step on the relaxed embeddings; returns the objective ``[R]`` before it."""
        import torch

        probs = torch.softmax(z / tau, dim=-1)  # [R, S, V]
        emb = probs @ self.E  # [R, S, d_model]
        if self.prefix:
            emb = torch.cat([self.model.W_E.detach()[self.prefix].expand(self.cfg.restarts, -1, -1), emb], 1)
        # the tokens only fill the hook_embed input; its output is replaced by emb
        x = hook_activations(self.model, self._tokens(z), self.hook, embed_override=emb)
        pre = feature_objective(self.sae, x[:, -1], feature)  # [R]
        # gradient for z only: the model's own parameters get none (and keep no .grad)
        (z.grad,) = torch.autograd.grad(-pre.sum(), [z])
        opt.step()
        return pre.detach().float().cpu()

    def _project(self, z: "torch.Tensor", feature: int, found: SearchResult) -> None:
        """Run the projected tokens through the model and the SAE's own encode; keep each
        restart's best."""
        import torch

        with torch.no_grad():
            toks = self._tokens(z)
            x = hook_activations(self.model, toks, self.hook).to(self.sae.W_enc.dtype)
            acts = self.sae.encode(x)[..., feature].float().cpu()  # [R, L]
            scored = acts[:, found.n_prefix:].max(-1).values
            better = scored > found.values
            found.values[better] = scored[better]
            found.ids[better] = toks.cpu()[better]
            found.acts[better] = acts[better]


def search_stats(
    found: SearchResult, feature: int, *, decode: Callable[[int], str], decoder_norm: float,
    logits: tuple[list[tuple[str, float]], list[tuple[str, float]]], best_real: float | None, start: float,
) -> FeatureStats:
    """The :class:`FeatureStats` of one feature's search; ``start``: its ``perf_counter`` start."""
    import torch

    n = found.n_prefix
    order = torch.argsort(found.values, descending=True)
    examples = []
    for r in order.tolist():
        ids = found.ids[r, n:].tolist()
        acts = found.acts[r, n:].tolist()
        peak = max(range(len(acts)), key=lambda i: acts[i])
        examples.append(Example(tokens=[decode(i) for i in ids], token_ids=ids, activations=acts, peak=peak,
                                activation=float(found.values[r]), context=int(r), position=peak + n))
    value = float(found.values.max())
    return FeatureStats(
        feature=feature,
        mode="synthetic",
        max_activation=value,
        decoder_norm=decoder_norm,
        examples=examples,
        top_logits=logits[0],
        bottom_logits=logits[1],
        synthetic_activation=value,
        relaxed_activation=float(found.relaxed[order[0]]),
        best_real_activation=best_real,
        time_s=time.perf_counter() - start,
    )

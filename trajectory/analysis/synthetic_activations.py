"""Synthetic analysis: token sequences optimised to make a feature fire.

The search is a continuous relaxation over the vocabulary. Each position ``s`` of a
sequence of ``seq_len`` tokens has learnable logits ``z[s] [V]``; its input embedding is
``softmax(z[s] / tau) @ W_E`` (``W_E [V, d_model]``), fed to the model through a hook on
``hook_embed`` behind a real BOS. In TransformerLens, Gemma's ``sqrt(d_model)``
embedding scale is already folded into ``W_E``, so the relaxed embedding is on the
same scale as real tokens' (positional embeddings, if the model has them, are added
by the model as usual). Adam maximises the feature's SAE pre-activation at the last
position (which attends to the whole sequence; for TopK SAEs, its margin over the k-th
strongest other feature too, see :func:`feature_objective`) while the temperature ``tau`` anneals geometrically from ``temperature[0]``
to ``temperature[1]``, pushing each position towards one token.

What is reported is never the relaxed objective: every ``eval_every`` steps each
restart is *projected* to real tokens (``argmax z[s]``), that token sequence is run
through the model and the SAE's own ``encode``, and the best activation (over
non-BOS positions) seen for a projected sequence is kept. Restarts run together as
one batch; everything is deterministic for a given ``seed`` on a given device.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Iterable, Sequence

from trajectory.analysis.features import parse_features
from trajectory.analysis.real_activations import _decoder, hook_activations, hook_layer, logit_effects, resolve_hook, sae_info
from trajectory.analysis.stats import Example, FeatureReport, FeatureStats
from trajectory.sae_formats import check_sae_fits

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
    hook_name: str | None = None,
    seq_len: int = 8,
    n_steps: int = 150,
    learning_rate: float = 0.1,
    restarts: int = 3,
    seed: int = 0,
    temperature: tuple[float, float] = (2.0, 0.05),
    eval_every: int = 10,
    vocab: Sequence[int] | None = None,
    best_real: "Mapping[int, float] | FeatureReport | None" = None,
    n_logits: int = 10,
    final_norm: str = "weight",
    progress: bool = True,
) -> FeatureReport:
    """Optimise token sequences that maximise each feature (see the module docstring).

    Args:
        model / sae: as for :func:`trajectory.analysis.real`.
        features: feature spec or indices.
        hook_name: default ``sae.cfg.metadata.hook_name``.
        seq_len: optimised tokens per sequence (BOS comes in front, not optimised).
        n_steps: Adam steps per feature.
        learning_rate: Adam step size on the logits ``z``.
        restarts: independent random starts, optimised together as one batch.
        seed: makes the run deterministic (feature ``f`` starts from the generator seeded
            with ``seed * 1_000_003 + f``, so a feature's result does not depend on which
            other features are in the run).
        temperature: ``(start, end)`` of the geometric annealing of ``tau``.
        eval_every: project to tokens and measure the real activation this often
            (and after the last step).
        vocab: restrict the search to these token ids (default: all but special tokens).
        best_real: best real activation per feature (a ``"real"`` report or a mapping),
            stored in ``best_real_activation`` for comparison.
        n_logits / final_norm: logit effects, as in :func:`trajectory.analysis.real`.
        progress: tqdm bar over features.

    Returns:
        A ``"synthetic"`` :class:`FeatureReport`: per feature ``synthetic_activation``
        (= ``max_activation``: the best projected sequence's real activation),
        ``relaxed_activation``, ``examples`` (best projected sequence of each restart,
        best first), ``time_s``.
    """
    import torch
    from tqdm.auto import tqdm

    if seq_len < 1 or n_steps < 1 or restarts < 1 or eval_every < 1:
        raise ValueError("seq_len, n_steps, restarts and eval_every must all be at least 1")
    hook = resolve_hook(sae, hook_name)
    check_sae_fits(sae, model, hook)  # a clear error, not a matmul shape error mid-scan
    feats = parse_features(features, d_sae=int(sae.cfg.d_sae))
    if best_real is not None and isinstance(best_real, FeatureReport):
        best_real = {f: s.max_activation for f, s in best_real.items()}
    device = model.cfg.device
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else None
    cand = candidate_tokens(model, vocab).to(device)
    E = model.W_E.detach()[cand]  # [V, d_model]
    decode = _decoder(model)
    effects = logit_effects(model, sae, feats, k=n_logits, final_norm=final_norm)
    dec_norms = sae.W_dec.detach()[feats].float().norm(dim=-1).cpu()
    t0, t1 = float(temperature[0]), float(temperature[1])

    stats: dict[int, FeatureStats] = {}
    for j, f in enumerate(tqdm(feats, desc=f"synthetic {hook}", unit="feature", disable=not progress)):
        start = time.perf_counter()
        gen = torch.Generator(device="cpu").manual_seed(int(seed) * 1_000_003 + int(f))
        z = (torch.randn(restarts, seq_len, len(cand), generator=gen)).to(device, E.dtype).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=learning_rate)
        prefix = [bos] if bos is not None else []
        best_val = torch.full((restarts,), float("-inf"))
        best_ids = torch.zeros(restarts, len(prefix) + seq_len, dtype=torch.long)
        best_acts = torch.zeros(restarts, len(prefix) + seq_len)
        relaxed = torch.zeros(restarts)

        def project() -> None:
            with torch.no_grad():
                ids = cand[z.argmax(-1)]  # [R, S]
                toks = torch.cat([torch.tensor(prefix, dtype=torch.long, device=device).expand(restarts, -1), ids], 1)
                acts = sae.encode(hook_activations(model, toks, hook).to(sae.W_enc.dtype))[..., f].float().cpu()
                scored = acts[:, len(prefix):].max(-1).values
                better = scored > best_val
                best_val[better] = scored[better]
                best_ids[better] = toks.cpu()[better]
                best_acts[better] = acts[better]

        for step in range(n_steps):
            tau = t0 * (t1 / t0) ** (step / max(n_steps - 1, 1))
            probs = torch.softmax(z / tau, dim=-1)  # [R, S, V]
            emb = probs @ E  # [R, S, d_model]
            if prefix:
                emb = torch.cat([model.W_E.detach()[prefix].expand(restarts, -1, -1), emb], 1)
            dummy = torch.cat(
                [torch.tensor(prefix, dtype=torch.long, device=device).expand(restarts, -1), cand[z.detach().argmax(-1)]], 1
            )
            x = hook_activations(model, dummy, hook, embed_override=emb)
            pre = feature_objective(sae, x[:, -1], f)  # [R]
            # gradient for z only: the model's own parameters get none (and keep no .grad)
            (z.grad,) = torch.autograd.grad(-pre.sum(), [z])
            opt.step()
            relaxed = pre.detach().float().cpu()
            if (step + 1) % eval_every == 0 or step == n_steps - 1:
                project()

        order = torch.argsort(best_val, descending=True)
        examples = []
        for r in order.tolist():
            ids = best_ids[r, len(prefix):].tolist()
            acts = best_acts[r, len(prefix):].tolist()
            peak = max(range(len(acts)), key=lambda i: acts[i])
            examples.append(
                Example(tokens=[decode(i) for i in ids], token_ids=ids, activations=acts, peak=peak,
                        activation=float(best_val[r]), context=int(r), position=peak + len(prefix))
            )
        top, bottom = effects[f]
        value = float(best_val.max())
        stats[f] = FeatureStats(
            feature=f,
            mode="synthetic",
            max_activation=value,
            decoder_norm=float(dec_norms[j]),
            examples=examples,
            top_logits=top,
            bottom_logits=bottom,
            synthetic_activation=value,
            relaxed_activation=float(relaxed[order[0]]),
            best_real_activation=None if best_real is None or f not in best_real else float(best_real[f]),
            time_s=time.perf_counter() - start,
        )
    return FeatureReport(
        mode="synthetic",
        features=stats,
        model_name=str(model.cfg.model_name),
        hook_name=hook,
        layer=hook_layer(hook),
        sae=sae_info(sae),
        settings=dict(
            seq_len=seq_len, n_steps=n_steps, learning_rate=learning_rate, restarts=restarts, seed=seed,
            temperature=[t0, t1], eval_every=eval_every, vocab_size=int(len(cand)), final_norm=final_norm,
        ),
    )

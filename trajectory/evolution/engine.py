"""Stage 2, the evolution engine: top-k SAE features of every (prefix, layer, step).

:func:`evolve` computes, for a prompt of N tokens and every layer L of the bank, every
prefix length ``n = 2..N`` (query ``q = n - 1``) and every step (see
:mod:`trajectory.evolution.result` for the steps and the file format)::

    initial      SAE_L(resid_pre_L[q])
    key j        SAE_L(resid_pre_L[q] + postnorm(b_O + Σ_{k≤j} c_{q,k}))   j = 0..q
    mlp          SAE_L(resid_post_L[q])

with ``c_{q,k}`` the contribution of key k to query q through layer L's attention
(:mod:`trajectory.evolution.attention`). All prefixes come from ONE forward pass (causal
attention). Layers are processed one after the other, so memory holds one layer's
SAE and one batch of step vectors at a time.

How it is fast (``method="feature_space"``, chosen automatically for JumpReLU,
ReLU/standard and TopK SAEs): an SAE encoder is linear before its activation, so every
step row is mixed from vectors encoded once per layer, in blocks of keys, and only the
elementwise activation and the top-k remain per step (:mod:`trajectory.evolution.encoder`).
``method="auto"`` falls back, chunk by chunk, to encoding the d_model step vectors when
that is cheaper (tiny models). Other SAEs (gated, normalising inputs, ...) go through
``method="direct"``: step vectors built in d_model space and encoded with the SAE's own
``encode`` in large batches. All agree to float rounding (tests).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from trajectory.evolution.encoder import LinearEncoder, layer_steps_direct, query_chunks, select_chunk
from trajectory.evolution.result import Evolution, LayerRows, row_offset
from trajectory.evolution.topk import select_active_topk
from trajectory.hooks import layer_of, resid_mid, resid_position, resid_post, resid_pre

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from trajectory.evolution.attention import LayerActivations
    from trajectory.saes.bank import SAEBank

log = logging.getLogger(__name__)

METHODS = ("auto", "feature_space", "direct")

#: Step rows (all layers) :func:`evolve` computes at most unless told otherwise: about
#: 330 tokens over 18 layers; the default ``max_tokens=128`` stays below it up to 117 layers.
DEFAULT_MAX_ROWS = 1_000_000

#: Elements of ``[rows, d_sae]`` float32 per batch when ``batch_size`` is not given (128 MB).
DEFAULT_BATCH_ELEMENTS = 2**25


# --------------------------------------------------------------------------- inputs
def prompt_tokens(model: "HookedTransformer", prompt: "str | Sequence[int] | torch.Tensor", max_tokens: int | None = 128):
    """Tokenise ``prompt`` (BOS prepended as the model does) and check its length.

    Text is tokenised in full (``to_tokens(..., truncate=False)``): TransformerLens
    otherwise cuts it at ``n_ctx`` silently, and the checks below would see the cut.

    Returns ``(ids [N] int64 tensor, token strings)``. Raises ``ValueError`` naming the
    true token count for an empty prompt, fewer than 2 tokens, more than the model's
    context ``n_ctx`` or more than ``max_tokens``.
    """
    import torch

    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("the prompt is empty; pass some text with --prompt or a non-empty line in --prompt-file")
        ids = model.to_tokens(prompt, truncate=False)[0].cpu()
    else:
        ids = torch.as_tensor(prompt, dtype=torch.long).flatten().cpu()
    N = int(ids.shape[0])
    if N < 2:
        raise ValueError(f"the prompt has {N} token(s) (BOS included); the evolution needs at least 2")
    n_ctx = int(model.cfg.n_ctx)
    if N > n_ctx:  # first: raising --max-tokens cannot help here
        raise ValueError(
            f"the prompt has {N} tokens (BOS included), more than the model's context of {n_ctx} "
            f"({model.cfg.model_name}); shorten it"
        )
    if max_tokens is not None and N > max_tokens:
        raise ValueError(
            f"the prompt has {N} tokens (BOS included), more than max_tokens={max_tokens}; "
            "shorten it or raise --max-tokens"
        )
    strs = [model.tokenizer.decode([int(t)]) for t in ids] if model.tokenizer is not None else [str(int(t)) for t in ids]
    return ids, strs


def step_rows(n_tokens: int, n_layers: int = 1) -> int:
    """Step rows an evolution of ``n_tokens`` computes over ``n_layers`` layers:
    ``n_layers · Σ_{n=2..N} (n + 2)`` (each row is one SAE encode and one top-k)."""
    return int(n_layers) * row_offset(int(n_tokens) + 1)


def check_work(n_tokens: int, layers: Sequence[int], max_rows: int | None = DEFAULT_MAX_ROWS) -> int:
    """Refuse an evolution whose step rows (see :func:`step_rows`) exceed ``max_rows``.

    The rows grow with the square of the prompt length (and the attention patterns kept
    by the forward pass, ``[n_heads, N, N]`` per layer, with it), so a long prompt can run
    for hours before failing for memory. Returns the number of rows; ``max_rows=None``
    lifts the bound. Raises ``ValueError`` naming the estimate and how to proceed.
    """
    rows = step_rows(n_tokens, len(layers))
    if max_rows is not None and rows > max_rows:
        raise ValueError(
            f"a prompt of {n_tokens} tokens over {len(layers)} layer(s) makes {rows:,} step rows "
            f"({step_rows(n_tokens):,} per layer, growing with the square of the length), more than "
            f"max_rows={max_rows:,}; pass fewer layers (--layers) or a shorter prompt, or raise the bound "
            "(--max-rows N; max_rows=None in Python lifts it)"
        )
    log.debug("%d tokens x %d layers: %d step rows", n_tokens, len(layers), rows)
    return rows


def model_key(name: str) -> str:
    """A model name in a form that compares across spellings: TransformerLens's official
    name when it knows the name or an alias (``gpt2-small`` -> ``gpt2``), without the
    organisation (``google/gemma-3-270m`` -> ``gemma-3-270m``), lower-cased."""
    name = str(name).strip()
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        name = get_official_model_name(name)
    except (ImportError, ValueError):
        pass  # not a TransformerLens name (local or test models): compare as given
    return name.rsplit("/", 1)[-1].lower()


def check_bank_model(model: "HookedTransformer", bank: "SAEBank", allow_other_model: bool = False) -> None:
    """Refuse a bank recorded for another model (by name; a bank without a name passes).

    Two models of the same width pass every shape check, so only the name tells that
    the SAEs were trained on another model's activations. ``allow_other_model=True``
    lets a deliberate cross-use through (with a warning).
    """
    bank_model = str(getattr(bank, "model_name", "") or "")
    name = str(model.cfg.model_name)
    if not bank_model or model_key(bank_model) == model_key(name):
        return
    if not allow_other_model:
        raise ValueError(
            f"the SAE bank was made for {bank_model!r} but the model is {name!r}; load the bank's model "
            "or preload a bank for this one (to use these SAEs on this model deliberately, pass "
            "--allow-other-model; allow_other_model=True in Python)"
        )
    log.warning("using SAEs made for %r on %r (allow_other_model)", bank_model, name)


def check_bank(
    model: "HookedTransformer", bank: "SAEBank", layers: Sequence[int] | None, *, allow_other_model: bool = False
) -> list[int]:
    """Validate that ``bank`` fits ``model`` at ``layers`` (``None``: all bank layers).

    Returns the sorted layers. Raises ``ValueError`` for a bank recorded for another
    model (unless ``allow_other_model``, see :func:`check_bank_model`), layers outside
    the model or the bank, an SAE whose ``d_in`` differs from ``d_model``, or an SAE
    that reads a hook other than layer L's residual stream.
    """
    check_bank_model(model, bank, allow_other_model)
    n_layers = int(model.cfg.n_layers)
    if layers is None:
        layers = list(bank.layers)
    layers = sorted({int(L) for L in layers})
    check_bank_hooks(bank, [L for L in layers if L in bank.layers])
    check = getattr(bank, "check_model", None)
    if callable(check):
        check(model)
    if not layers:
        raise ValueError("no layers to compute; pass --layers, e.g. 0-17")
    out_of_model = [L for L in layers if not 0 <= L < n_layers]
    if out_of_model:
        raise ValueError(
            f"layer(s) {out_of_model} out of range: {model.cfg.model_name} has layers 0-{n_layers - 1}"
        )
    missing = [L for L in layers if L not in bank.layers]
    if missing:
        raise ValueError(
            f"layer(s) {missing} are not in the SAE bank (it has {list(bank.layers)}); "
            "preload them with `trajectory preload --layers ...` or pass --layers within the bank"
        )
    d_model = int(model.cfg.d_model)
    for L in layers:
        d_in = int(bank[L].cfg.d_in)
        if d_in != d_model:
            raise ValueError(
                f"the SAE of layer {L} expects d_in={d_in} but {model.cfg.model_name} has d_model={d_model}; "
                "the bank was made for another model — preload a bank for this model's preset"
            )
    return layers


def check_bank_hooks(bank: "SAEBank", layers: Sequence[int]) -> None:
    """Refuse SAEs that do not read layer L's residual stream.

    The evolution adds attention contributions to ``resid_pre`` and encodes the sums
    with the layer's SAE, so only SAEs trained on ``blocks.L.hook_resid_pre``,
    ``hook_resid_mid`` or ``hook_resid_post`` of the same layer fit; SAEs on
    ``hook_mlp_out``, ``attn.hook_z``, another layer's stream, ... raise ``ValueError``.
    """
    for L in layers:
        hook = bank.hook_name(L)
        if resid_position(hook) is None or layer_of(hook) != L:
            raise ValueError(
                f"the SAE of layer {L} reads {hook!r}; the evolution accepts SAEs on layer {L}'s residual "
                f"stream only ({resid_pre(L)}, {resid_mid(L)} or {resid_post(L)}) — preload a residual-stream "
                "bank (e.g. a '-res' Gemma Scope release) for this model"
            )


def check_options(*, k: int, postnorm: str, method: str) -> None:
    """Raise ``ValueError`` for a ``k``, ``postnorm`` or ``method`` the engine does not know,
    before any work (:func:`evolve_layer` checks them again per layer)."""
    from trajectory.evolution.attention import POSTNORMS

    if postnorm not in POSTNORMS:
        raise ValueError(f"unknown postnorm {postnorm!r}; use one of {', '.join(POSTNORMS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")


def recorded_postnorm(model: "HookedTransformer", layers: Sequence[int], postnorm: str) -> str:
    """The ``postnorm`` an evolution records: ``"none"`` when no layer has a post-attention norm."""
    from trajectory.evolution.attention import has_postnorm

    return postnorm if any(has_postnorm(model, L) for L in layers) else "none"


def sae_summaries(bank: "SAEBank", layers: Sequence[int]) -> dict[str, dict[str, Any]]:
    """What an evolution file records about each layer's SAE (``metadata["saes"]``):
    ``{str(L): {hook_name, architecture, d_sae, dtype, source, neuronpedia_id}}``, plus
    ``k`` (at most k active features) for TopK SAEs."""
    out = {}
    for L in layers:
        sae = bank[L]
        entry = bank.entry(L) if hasattr(bank, "entry") else None
        out[str(L)] = dict(
            hook_name=bank.hook_name(L),
            architecture=type(sae).__name__,
            d_sae=int(sae.cfg.d_sae),
            dtype=str(sae.W_enc.dtype).replace("torch.", ""),
            source=getattr(entry, "source", None),
            neuronpedia_id=getattr(entry, "neuronpedia_id", None),
        )
        if getattr(sae.cfg, "k", None) is not None:
            out[str(L)]["k"] = int(sae.cfg.k)
    return out


# --------------------------------------------------------------------- per layer
def evolve_layer(
    model: "HookedTransformer",
    sae: "SAE",
    acts: "LayerActivations",
    *,
    k: int = 400,
    postnorm: str = "per_partial_sum",
    method: str = "auto",
    batch_size: int | None = None,
    device=None,
    encoder: "LinearEncoder | None" = None,
) -> LayerRows:
    """All (n, step) top-k rows of one layer, from that layer's recorded activations.

    Args:
        model: the model that produced ``acts`` (for W_O, b_O and the post-norm).
        sae: the layer's SAE.
        acts: :class:`~trajectory.evolution.attention.LayerActivations` of one forward pass.
        k: features kept per step (active ones only).
        postnorm: ``"per_partial_sum"`` or ``"frozen_scale"`` (``"none"`` is used by
            itself on models without a post-attention norm).
        method: ``"feature_space"``, ``"direct"`` or ``"auto"``.
        batch_size: step rows per batch (default: ``DEFAULT_BATCH_ELEMENTS / d_sae``).
        device: where to compute (default: where ``acts`` live).
        encoder: ``LinearEncoder.from_sae(sae, device)`` made once for several prompts
            of the same layer (default: made here); ignored by ``method="direct"``.

    Returns:
        :class:`~trajectory.evolution.result.LayerRows` with ``Σ_{n=2..N} (n + 2)`` rows.
    """
    import torch

    from trajectory.evolution.attention import resolve_postnorm

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    device = torch.device(device) if device is not None else acts.resid_pre.device
    variant = resolve_postnorm(model, acts.layer, postnorm)
    batch_rows = int(batch_size or max(64, DEFAULT_BATCH_ELEMENTS // int(sae.cfg.d_sae)))
    enc = None
    if method in ("auto", "feature_space"):
        enc = encoder if encoder is not None else LinearEncoder.from_sae(sae, device)
    if method == "feature_space" and enc is None:
        raise ValueError(f"{type(sae).__name__} has no linear encoder form; use method='direct' or 'auto'")
    parts: list[tuple] = []
    if enc is not None:
        cache: dict = {}  # the layer's encoded vectors, shared by its chunks
        n_heads = int(model.blocks[acts.layer].attn.W_O.shape[0])
        always_mix = method == "feature_space"
        with torch.no_grad():
            for queries in query_chunks(acts.n_pos, batch_rows, n_heads):
                parts.append(select_chunk(model, acts, enc, variant, queries, cache, k, always_mix=always_mix))
        return _stacked_rows(parts, acts.n_pos)
    moved_from = sae.W_enc.device if sae.W_enc.device != device else None
    if moved_from is not None:
        sae.to(device)
    try:
        with torch.no_grad():
            for queries in query_chunks(acts.n_pos, batch_rows):
                x = layer_steps_direct(model, acts, variant, queries, device)
                parts.append(select_active_topk(sae.encode(x.to(sae.W_enc.dtype)), k))
    finally:
        if moved_from is not None:
            sae.to(moved_from)
    return _stacked_rows(parts, acts.n_pos)


def _stacked_rows(parts: list[tuple], N: int) -> LayerRows:
    """One layer's :class:`LayerRows` from the selections of its chunks, in order."""
    counts = np.concatenate([p[2] for p in parts])
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    assert counts.size == row_offset(N + 1), "row layout mismatch"
    return LayerRows(
        indices=np.concatenate([p[0] for p in parts]),
        values=np.concatenate([p[1] for p in parts]),
        offsets=offsets,
        n_active=np.concatenate([p[3] for p in parts]),
    )


# ------------------------------------------------------------------------ public
def evolve(
    model: "HookedTransformer",
    bank: "SAEBank",
    prompt: "str | Sequence[int] | torch.Tensor",
    *,
    k: int = 400,
    layers: Iterable[int] | None = None,
    max_tokens: int | None = 128,
    postnorm: str = "per_partial_sum",
    device=None,
    progress: bool = True,
    batch_size: int | None = None,
    method: str = "auto",
    preset: str | None = None,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    allow_other_model: bool = False,
) -> Evolution:
    """Top-k SAE features of every (prefix length, layer, step) of ``prompt``.

    Args:
        model: a TransformerLens ``HookedTransformer`` (e.g. from ``trajectory.load_model``).
        bank: the SAE bank (``bank[L]`` is layer L's sae-lens SAE).
        prompt: text (BOS prepended as the model does) or token ids ``[N]``.
        k: features kept per step, strongest first, active ones only.
        layers: layers to compute (default: all layers of the bank).
        max_tokens: refuse longer prompts (BOS included); ``None``: only ``n_ctx`` applies.
        postnorm: ``"per_partial_sum"`` (the original method: each partial sum normalised
            with its own RMS) or ``"frozen_scale"`` (exact linear split); models without
            a post-attention norm always use none.
        device: where to compute (default: the model's device). SAE weights are moved
            there one layer at a time.
        progress: show a progress bar over layers.
        batch_size: step rows per encode batch (default from the SAE width).
        method: ``"auto"`` (feature-space mixing when the SAE allows, else direct),
            ``"feature_space"`` or ``"direct"``.
        preset: preset name recorded in the result (default: ``bank.preset``).
        max_rows: refuse an evolution of more step rows than this, all layers together
            (:func:`check_work`; ``None``: no bound), checked before the model runs.
        allow_other_model: use a bank recorded for another model (:func:`check_bank_model`);
            the result names the model that ran.

    Returns:
        :class:`~trajectory.evolution.Evolution`.

    Example:
        >>> from trajectory.testing import tiny_model, tiny_bank
        >>> model = tiny_model(); bank = tiny_bank(model)
        >>> evo = evolve(model, bank, "mark gave flashlight to", k=5, progress=False)
        >>> evo.tokens, evo.steps(2)
        (['<bos>', 'mark', 'gave', 'flashlight', 'to'], ['initial', "key 0 '<bos>'", "key 1 'mark'", 'mlp'])
    """
    from tqdm.auto import tqdm

    from trajectory.evolution.attention import forward_activations

    check_options(k=k, postnorm=postnorm, method=method)
    layers = check_bank(model, bank, None if layers is None else list(layers), allow_other_model=allow_other_model)
    ids, strs = prompt_tokens(model, prompt, max_tokens)
    check_work(len(ids), layers, max_rows)
    device = device if device is not None else model.cfg.device
    all_acts = forward_activations(model, ids, layers)
    rows: dict[int, LayerRows] = {}
    for L in tqdm(layers, desc="evolve layers", disable=not progress, unit="layer"):
        rows[L] = evolve_layer(
            model, bank[L], all_acts.pop(L), k=k, postnorm=postnorm, method=method, batch_size=batch_size, device=device
        )
    settings = dict(k=k, layers=layers, max_tokens=max_tokens, postnorm=postnorm, method=method, device=str(device))
    return make_evolution(model, bank, prompt, (ids, strs), rows, settings, preset)


def make_evolution(model: "HookedTransformer", bank: "SAEBank", prompt, tokens: tuple, rows: dict[int, LayerRows],
                   settings: dict[str, Any], preset: str | None = None) -> Evolution:
    """The :class:`Evolution` of ``prompt`` from its per-layer ``rows``: ``tokens`` is what
    :func:`prompt_tokens` returned, ``settings`` the options recorded in the provenance
    (``k``, ``layers``, ``max_tokens``, ``postnorm``, ``method``, ``device``)."""
    ids, strs = tokens
    layers = list(settings["layers"])
    return Evolution(
        tokens=strs,
        token_ids=[int(t) for t in ids],
        layers=layers,
        k=int(settings["k"]),
        rows=rows,
        model_name=str(model.cfg.model_name),  # the model that ran, even with another model's bank
        preset=preset if preset is not None else getattr(bank, "preset", None),
        postnorm=recorded_postnorm(model, layers, settings["postnorm"]),
        metadata=_metadata(model, bank, layers, prompt, settings),
    )


def _metadata(model: "HookedTransformer", bank: "SAEBank", layers: list[int], prompt,
              settings: dict[str, Any]) -> dict[str, Any]:
    """The result's metadata: provenance, the SAEs (and the bank's model when it is another
    one, see ``allow_other_model``), the bank folder and the prompt text."""
    from trajectory.io import provenance

    meta = provenance(settings)
    meta["saes"] = sae_summaries(bank, layers)
    bank_model = str(getattr(bank, "model_name", "") or "")
    if bank_model and model_key(bank_model) != model_key(model.cfg.model_name):
        meta["bank_model_name"] = bank_model
    if getattr(bank, "path", None) is not None:
        # stage 3 finds the bank's own explanations (locally trained SAEs) through this
        meta["bank"] = str(Path(bank.path).resolve())
    if isinstance(prompt, str):
        meta["prompt"] = prompt
    return meta

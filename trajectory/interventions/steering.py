"""Steered and unsteered continuations side by side: :func:`steer` → :class:`SteeringResult`.

Both continuations are generated with TransformerLens's key-value cache (the hooks of
:func:`~trajectory.interventions.hooks.steered` act on every generated position too),
greedy by default, sampled with a seed when ``temperature > 0``. Each sequence (prompt +
continuation) is then scored by one plain forward pass under each model, which gives:

- the per-token log-probs of each continuation under both models;
- ``kl[i] = KL(base ‖ steered)`` of the next-token distributions at every position ``i``
  of the prompt + base continuation (``kl_on_steered``: the same along the steered one);
- the tokens the interventions promote / suppress most (log-prob difference) as the
  first generated token, i.e. at the prompt's last position ``P - 1``.

``SteeringResult.save`` writes one JSON file (``format: "trajectory.steering"``).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from trajectory.interventions.intervention import Intervention, check_interventions
from trajectory.interventions.hooks import Steering, steered

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformer_lens import HookedTransformer

    from trajectory.saes.bank import SAEBank

log = logging.getLogger(__name__)

FORMAT = "trajectory.steering"
FORMAT_VERSION = 1


@dataclass
class SteeringResult:
    """What :func:`steer` returns (every field plain JSON; see the module docstring).

    ``*_logprobs`` map ``"base"`` / ``"steered"`` (the model that scores) to the log-prob
    of each generated token; ``kl`` has one value per position of prompt + base
    continuation, ``kl_on_steered`` per position of prompt + steered continuation;
    ``promoted`` / ``suppressed`` hold ``{id, token, base_logprob, steered_logprob,
    delta}`` at position ``top_position`` (= ``P - 1``).
    """

    prompt: str | None
    prompt_ids: list[int]
    prompt_tokens: list[str]
    interventions: list[dict[str, Any]]
    base_ids: list[int]
    steered_ids: list[int]
    base_tokens: list[str]
    steered_tokens: list[str]
    base_text: str
    steered_text: str
    base_logprobs: dict[str, list[float]]
    steered_logprobs: dict[str, list[float]]
    kl: list[float]
    kl_on_steered: list[float]
    top_position: int
    promoted: list[dict[str, Any]]
    suppressed: list[dict[str, Any]]
    model_name: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON (atomically); returns the path."""
        from trajectory.io import atomic_write, jsonable

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = dict(format=FORMAT, format_version=FORMAT_VERSION, **asdict(self))
        with atomic_write(path) as fh:
            json.dump(jsonable(data, strict=True), fh, indent=1, ensure_ascii=False)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SteeringResult":
        """Read a file written by :meth:`save`."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.pop("format", None) != FORMAT:
            raise ValueError(f"{path} is not a steering result (no format {FORMAT!r}); write one with steer(...).save")
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: steering format version {version} is not supported (this code reads "
                             f"{FORMAT_VERSION})")
        return cls(**data)

    @property
    def intervention_objects(self) -> list[Intervention]:
        return [Intervention.from_dict(d) for d in self.interventions]


# ----------------------------------------------------------------------- generation
def generate(
    model: "HookedTransformer",
    prompt_ids: "torch.Tensor",
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    seed: int = 0,
    state: Steering | None = None,
    stop_at_eos: bool = True,
) -> list[int]:
    """Continue ``prompt_ids`` (``[P]``) with the key-value cache; greedy at ``temperature=0``.

    ``state`` (from an enclosing :func:`steered`) gets its ``offset`` set before each
    forward pass so that the hooks know the absolute positions of the new tokens. Only
    the last position is unembedded, by an :class:`~trajectory.model.unembed.Unembedding`
    made once per call (TransformerLens's own unembedding copies ``W_U.T`` on every
    forward pass: 670 MB per token for Gemma 3).
    Returns the generated ids (at most ``max_new_tokens``; fewer after an EOS when
    ``stop_at_eos``).
    """
    import torch
    from transformer_lens import TransformerLensKeyValueCache

    from trajectory.model.unembed import Unembedding

    device = model.cfg.device
    unembed = Unembedding(model)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, 1)
    gen = torch.Generator().manual_seed(int(seed))
    eos = getattr(model.tokenizer, "eos_token_id", None) if stop_at_eos else None
    inp, offset, out = prompt_ids[None].to(device), 0, []
    with torch.no_grad():
        for _ in range(int(max_new_tokens)):
            if state is not None:
                state.offset = offset
            final = model(inp, past_kv_cache=cache, stop_at_layer=model.cfg.n_layers)  # [1, pos, d_model]
            logits = unembed.logits(unembed.normalize(final[0, -1]))  # [d_vocab]
            offset += int(inp.shape[1])
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                nxt = int(torch.multinomial(probs, 1, generator=gen))
            else:
                nxt = int(logits.argmax())
            out.append(nxt)
            if eos is not None and nxt == eos:
                break
            inp = torch.tensor([[nxt]], device=device)
    if state is not None:
        state.offset = 0
    return out


def log_probs(model: "HookedTransformer", ids: "torch.Tensor") -> "torch.Tensor":
    """``[N, d_vocab]`` float32 next-token log-probs of one plain forward pass over ``ids [N]``."""
    import torch

    with torch.no_grad():
        return torch.log_softmax(model(ids[None].to(model.cfg.device))[0].float(), dim=-1).cpu()


def kl_per_position(base: "torch.Tensor", steered_lp: "torch.Tensor") -> list[float]:
    """``KL(base ‖ steered)`` at each row of two ``[N, d_vocab]`` log-prob tensors."""
    return (base.exp() * (base - steered_lp)).sum(-1).clamp_min(0.0).tolist()


# ----------------------------------------------------------------------------- steer
def steer(
    model: "HookedTransformer",
    bank: "SAEBank",
    prompt: "str | Sequence[int] | torch.Tensor",
    interventions: Sequence[Intervention],
    *,
    max_new_tokens: int = 30,
    temperature: float = 0.0,
    seed: int = 0,
    top_k: int = 10,
    stop_at_eos: bool = True,
) -> SteeringResult:
    """Base and steered continuations of ``prompt`` and how the interventions moved them.

    Args:
        model: a ``HookedTransformer``.
        bank: the SAE bank whose latents ``interventions`` name.
        prompt: text (BOS prepended as the model does) or token ids.
        interventions: :class:`Intervention` list, validated before the model runs.
        max_new_tokens: tokens to generate per continuation.
        temperature: 0 = greedy; above 0, sampling with ``seed`` (same seed for both).
        seed: sampling seed.
        top_k: promoted / suppressed tokens kept.
        stop_at_eos: end a continuation at the tokenizer's EOS.

    Returns:
        :class:`SteeringResult`. No hook is left on ``model``.
    """
    from trajectory.evolution.engine import prompt_tokens
    from trajectory.io import provenance

    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    ids, strs = prompt_tokens(model, prompt, max_tokens=None)
    P, total = len(ids), len(ids) + int(max_new_tokens)
    if total > int(model.cfg.n_ctx):
        raise ValueError(f"{P} prompt tokens + {max_new_tokens} new ones exceed the model's context of "
                         f"{model.cfg.n_ctx}; lower --max-new-tokens")
    interventions = check_interventions(interventions, bank, total)
    settings = dict(max_new_tokens=int(max_new_tokens), temperature=float(temperature), seed=int(seed),
                    top_k=int(top_k), stop_at_eos=bool(stop_at_eos))
    gen = dict(temperature=temperature, seed=seed, stop_at_eos=stop_at_eos)
    t0 = time.perf_counter()
    base_new = generate(model, ids, max_new_tokens, **gen)
    t1 = time.perf_counter()
    with steered(model, bank, interventions, prompt_length=P, n_positions=total) as state:
        steered_new = generate(model, ids, max_new_tokens, state=state, **gen)
    t2 = time.perf_counter()
    scores = _score(model, bank, interventions, ids, base_new, steered_new, P, total)
    settings["tokens_per_s"] = dict(base=len(base_new) / max(t1 - t0, 1e-9),
                                    steered=len(steered_new) / max(t2 - t1, 1e-9))
    log.info("steer: %d base and %d steered tokens (%.1f / %.1f tokens/s)", len(base_new), len(steered_new),
             settings["tokens_per_s"]["base"], settings["tokens_per_s"]["steered"])
    decode = _decoder(model)
    promoted, suppressed = _top_changes(scores.pop("top_base"), scores.pop("top_steered"), top_k, decode)
    return SteeringResult(
        prompt=prompt if isinstance(prompt, str) else None,
        prompt_ids=[int(t) for t in ids], prompt_tokens=strs,
        interventions=[iv.to_dict() for iv in interventions],
        base_ids=base_new, steered_ids=steered_new,
        base_tokens=[decode([t]) for t in base_new], steered_tokens=[decode([t]) for t in steered_new],
        base_text=decode(base_new), steered_text=decode(steered_new),
        top_position=P - 1, promoted=promoted, suppressed=suppressed,
        model_name=str(model.cfg.model_name), settings=settings, metadata=provenance(settings), **scores,
    )


def _score(model, bank, interventions, ids, base_new, steered_new, P, total) -> dict[str, Any]:
    """Log-probs and KL of both sequences under both models (four plain forward passes)."""
    import torch

    out: dict[str, Any] = {}
    for name, new in (("base", base_new), ("steered", steered_new)):
        seq = torch.cat([ids, torch.tensor(new, dtype=torch.long)])
        lp_base = log_probs(model, seq)
        with steered(model, bank, interventions, prompt_length=P, n_positions=total):
            lp_steered = log_probs(model, seq)
        rows, tok = torch.arange(P - 1, len(seq) - 1), seq[P:]
        out[f"{name}_logprobs"] = dict(base=lp_base[rows, tok].tolist(), steered=lp_steered[rows, tok].tolist())
        out["kl" if name == "base" else "kl_on_steered"] = kl_per_position(lp_base, lp_steered)
        if name == "base":
            out["top_base"], out["top_steered"] = lp_base[P - 1], lp_steered[P - 1]
    return out


def _top_changes(base: "torch.Tensor", steered_lp: "torch.Tensor", k: int, decode) -> tuple[list, list]:
    """The ``k`` tokens whose log-prob rose most and fell most (``[d_vocab]`` inputs)."""
    import torch

    delta = steered_lp - base
    k = min(int(k), int(delta.numel()))

    def rows(idx):
        return [dict(id=int(i), token=decode([int(i)]), base_logprob=float(base[i]),
                     steered_logprob=float(steered_lp[i]), delta=float(delta[i])) for i in idx]

    return rows(torch.topk(delta, k).indices), rows(torch.topk(-delta, k).indices)


def _decoder(model):
    """ids → text with the model's tokenizer (ids as text when it has none)."""
    tok = model.tokenizer
    if tok is None:
        return lambda ids: " ".join(str(int(i)) for i in ids)
    return lambda ids: tok.decode([int(i) for i in ids])

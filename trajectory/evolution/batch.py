"""Stage 2 over a prompt set: one evolution file per prompt, resumable after an interruption,
prompts of similar length sharing forward passes.

Folder layout (``out_dir``)::

    prompt_<sha256(prompt)[:12]>.safetensors   one evolution file per distinct prompt
    index.json                                 prompt -> file, in the prompt set's order

Files are named by a hash of the prompt text, never by position, so reordering or editing
the prompt file cannot attach a file to the wrong prompt. ``index.json`` is a JSON list
with one entry per prompt: ``{"prompt": ..., "file": "prompt_<hash>.safetensors"}``, or
``{"prompt": ..., "file": null, "error": "..."}`` for a prompt that could not be evolved
(too long, empty, ...). It is written last and atomically, after every file.

Folders written before the hash names (``prompt_0000.safetensors``, ... and an index of
positions) are read by content, never by position or by their old index: an old file
whose recorded prompt text and settings match a prompt of the set is renamed to that
prompt's hash name instead of being recomputed; the others are left alone and unused.

A run in three steps, each usable on its own (a distributed driver plans once, hands
lists of prompts to workers, and writes the index when they are done)::

    plan = plan_prompts(model, bank, prompts, out_dir, k=...)   # checks, nothing written
    take_over_positional_files(plan, out_dir)                   # mkdir + renames
    evolve_prompts(model, bank, plan.todo, out_dir, batch_size=8, **plan.options)
    write_index(out_dir, prompts, plan.failed)

Batching (:func:`evolve_batch`): the prompts to compute are sorted by token count and cut
into groups of ``batch_size``; each group runs ONE right-padded forward pass
(:func:`~trajectory.evolution.attention.batch_forward_activations`), then each prompt's
layers are evolved on its own unpadded slice, exactly as :func:`evolve` does (results
equal to float rounding). Memory: one layer's activations of the group at a time
(pattern ``[B, n_heads, N_max, N_max]`` plus ``[B, N_max, d_model]`` tensors), plus the
finished top-k rows of the group's prompts until they are saved (each prompt's
:class:`~trajectory.evolution.result.Evolution`, as one :func:`evolve` holds).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from trajectory.evolution.engine import (
    DEFAULT_MAX_ROWS,
    check_bank,
    check_options,
    check_work,
    evolve_layer,
    make_evolution,
    model_key,
    prompt_tokens,
    recorded_postnorm,
    sae_summaries,
)
from trajectory.evolution.result import Evolution
from trajectory.io import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformer_lens import HookedTransformer

    from trajectory.saes.bank import SAEBank

log = logging.getLogger(__name__)

INDEX = "index.json"
#: prompts per forward pass when ``batch_size`` is not given: enough to share the model's
#: weight reads (the forward pass's cost per prompt stops falling well before), few enough
#: that the group's finished rows (up to k features per step row per layer) stay small
DEFAULT_PROMPT_BATCH = 8
#: names of the files written before they were named by prompt hash
_POSITIONAL = re.compile(r"prompt_\d{4}\.safetensors")


def prompt_file_name(prompt: str) -> str:
    """The evolution file of ``prompt`` in a batch folder: ``prompt_<sha256[:12]>.safetensors``."""
    return f"prompt_{hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:12]}.safetensors"


@dataclass
class Plan:
    """What a run does, decided before anything is written (:func:`plan_prompts`).

    Attributes:
        ids: prompt -> token ids, for the prompts that can be evolved.
        failed: prompt -> why it cannot be evolved (listed in the index with its reason).
        todo: prompts to compute, in the prompt set's order (distinct).
        renames: prompt -> positional file of the earlier layout to take over.
        options: :func:`evolve`'s keyword arguments for this run, ``layers`` resolved.
    """

    ids: dict[str, list[int]]
    failed: dict[str, str]
    todo: list[str] = field(default_factory=list)
    renames: dict[str, Path] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


_Plan = Plan  # the name before the API was public


def evolve_many(
    model: "HookedTransformer",
    bank: "SAEBank",
    prompts: Sequence[str],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    batch_size: int | None = None,
    encode_batch_size: int | None = None,
    **kwargs: Any,
) -> list[Path]:
    """Evolve each prompt into ``out_dir/prompt_<hash>.safetensors``; resumable.

    Everything is checked before anything is written: the bank against the model, the
    options, every prompt's length and work (a prompt that fails is reported, logged and
    listed in the index with its reason; the others are done), and every existing file.
    A file that reads back and matches its prompt's tokens and every setting that shapes
    the numbers — model, SAEs (architecture, width, dtype, hook, source), ``k``,
    ``layers``, ``postnorm`` — is kept, so a rerun after an interruption does only the
    missing prompts (files are written atomically: never half-written). ``method``,
    the batch sizes and ``device`` are not compared: they change float rounding only.
    A file that differs in any of those settings raises ``ValueError`` naming the
    setting unless ``overwrite`` (then it is recomputed); an unreadable one is
    recomputed. ``out_dir/index.json`` (see the module docstring) is written last.

    Args:
        batch_size: prompts per forward pass (default :data:`DEFAULT_PROMPT_BATCH`);
            prompts of similar length are grouped (module docstring). 1: one at a time.
        encode_batch_size: step rows per SAE encode batch (:func:`evolve`'s ``batch_size``).
        kwargs: :func:`~trajectory.evolution.engine.evolve`'s other options.

    Returns the paths of the prompts that could be evolved, in the prompts' order.
    Raises ``ValueError`` when none can. The rate (prompts/min) is logged at the end.
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError("evolve_many needs a non-empty list of prompts (one evolution file each)")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size (prompts per forward pass) must be at least 1, got {batch_size}")
    out_dir = Path(out_dir)
    if encode_batch_size is not None:
        kwargs["batch_size"] = encode_batch_size
    plan = plan_prompts(model, bank, prompts, out_dir, overwrite=overwrite, **kwargs)
    take_over_positional_files(plan, out_dir)
    options = dict(plan.options)
    options.pop("batch_size", None)  # the encode batch travels as encode_batch_size
    evolve_prompts(model, bank, plan.todo, out_dir, batch_size=batch_size, encode_batch_size=encode_batch_size,
                   progress=progress, **options)
    write_index(out_dir, prompts, plan.failed)
    return [out_dir / prompt_file_name(p) for p in prompts if p not in plan.failed]


def plan_prompts(
    model: "HookedTransformer", bank: "SAEBank", prompts: Sequence[str], out_dir: str | Path, *,
    overwrite: bool = False, **options: Any,
) -> Plan:
    """Check everything and decide what a run over ``prompts`` into ``out_dir`` does;
    writes nothing. ``options`` are :func:`evolve`'s; ``plan.options`` holds them with
    ``layers`` resolved (pass those to :func:`evolve_prompts`). Raises ``ValueError``
    for a bank or option that does not fit, when no prompt can be evolved, or for files
    of other settings in ``out_dir`` (unless ``overwrite``)."""
    options = dict(options)
    options["layers"] = check_bank(model, bank, options.get("layers"),
                                   allow_other_model=bool(options.get("allow_other_model", False)))
    check_options(k=options.get("k", 400), postnorm=options.get("postnorm", "per_partial_sum"),
                  method=options.get("method", "auto"))
    plan = _tokenise_all(model, prompts, options)
    plan.options = options
    _plan_files(plan, Path(out_dir), _expected(model, bank, options), overwrite)
    return plan


def take_over_positional_files(plan: Plan, out_dir: str | Path) -> None:
    """Create ``out_dir`` and rename the earlier layout's files in ``plan.renames``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for prompt, old in plan.renames.items():
        log.info("reusing %s for %r (named by position before)", old.name, prompt)
        os.replace(old, out_dir / prompt_file_name(prompt))


def length_groups(lengths: dict[str, int], batch_size: int) -> list[list[str]]:
    """Prompts in groups of at most ``batch_size``, shortest first, so that each group
    holds prompts of similar token counts (little padding)."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size (prompts per forward pass) must be at least 1, got {batch_size}")
    ordered = sorted(lengths, key=lambda p: lengths[p])  # stable: ties keep the given order
    return [ordered[i : i + int(batch_size)] for i in range(0, len(ordered), int(batch_size))]


def evolve_prompts(
    model: "HookedTransformer", bank: "SAEBank", prompts: Sequence[str], out_dir: str | Path, *,
    batch_size: int | None = None, encode_batch_size: int | None = None, progress: bool = True, **options: Any,
) -> list[Path]:
    """Evolve ``prompts`` (distinct, already planned) in groups of similar length and save
    each to ``out_dir/prompt_<hash>.safetensors`` atomically as soon as its group is done;
    no checks of existing files (see :func:`plan_prompts`). ``batch_size``: prompts per
    forward pass; ``options``: :func:`evolve`'s. Logs prompts/min; returns the paths."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    prompts = list(dict.fromkeys(prompts))
    if not prompts:
        return []
    options = {key: value for key, value in options.items() if key != "progress"}
    if encode_batch_size is not None:
        options["batch_size"] = encode_batch_size
    lengths = {p: len(prompt_tokens(model, p, options.get("max_tokens", 128))[0]) for p in prompts}
    groups = length_groups(lengths, DEFAULT_PROMPT_BATCH if batch_size is None else batch_size)
    start = time.perf_counter()
    with tqdm(total=len(prompts), desc="prompts", disable=not progress, unit="prompt") as bar:
        for group in groups:
            for prompt, evo in zip(group, evolve_batch(model, bank, group, **options)):
                evo.save(out_dir / prompt_file_name(prompt))
            bar.update(len(group))
    minutes = (time.perf_counter() - start) / 60
    log.info("evolved %d prompt(s) in %d forward pass(es): %.1f prompts/min",
             len(prompts), len(groups), len(prompts) / minutes if minutes > 0 else float("inf"))
    return [out_dir / prompt_file_name(p) for p in prompts]


def evolve_batch(
    model: "HookedTransformer",
    bank: "SAEBank",
    prompts: Sequence["str | Sequence[int] | torch.Tensor"],
    *,
    k: int = 400,
    layers: Iterable[int] | None = None,
    max_tokens: int | None = 128,
    postnorm: str = "per_partial_sum",
    device=None,
    batch_size: int | None = None,
    method: str = "auto",
    preset: str | None = None,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    allow_other_model: bool = False,
) -> list[Evolution]:
    """:func:`~trajectory.evolution.engine.evolve` of several prompts sharing ONE forward pass.

    The options mean what they mean for :func:`evolve` (``batch_size``: step rows per
    encode batch); every prompt is checked as :func:`evolve` checks it. The prompts are
    right-padded into one batch (see
    :func:`~trajectory.evolution.attention.batch_forward_activations`); layer by layer,
    each prompt is evolved on its unpadded slice, with the layer's SAE encoder made once.
    Group prompts of similar length: padding costs forward work, nothing else.

    Returns one :class:`Evolution` per prompt, in order, equal to :func:`evolve`'s up to
    float rounding (the batched matrix products round differently).
    """
    import torch

    from trajectory.evolution.attention import batch_forward_activations
    from trajectory.evolution.encoder import LinearEncoder

    check_options(k=k, postnorm=postnorm, method=method)
    layers = check_bank(model, bank, None if layers is None else list(layers), allow_other_model=allow_other_model)
    tokens = [prompt_tokens(model, prompt, max_tokens) for prompt in prompts]
    for ids, _ in tokens:
        check_work(len(ids), layers, max_rows)
    device = device if device is not None else model.cfg.device
    rows: list[dict] = [{} for _ in prompts]
    for L, acts in batch_forward_activations(model, [ids for ids, _ in tokens], layers):
        enc = LinearEncoder.from_sae(bank[L], torch.device(device)) if method != "direct" else None
        for i, prompt_acts in enumerate(acts):
            rows[i][L] = evolve_layer(model, bank[L], prompt_acts, k=k, postnorm=postnorm, method=method,
                                      batch_size=batch_size, device=device, encoder=enc)
        del acts
    settings = dict(k=k, layers=layers, max_tokens=max_tokens, postnorm=postnorm, method=method, device=str(device))
    return [make_evolution(model, bank, prompt, tok, r, settings, preset) for prompt, tok, r in zip(prompts, tokens, rows)]


def _tokenise_all(model: "HookedTransformer", prompts: Sequence[str], kwargs: dict[str, Any]) -> Plan:
    """Token ids of every prompt that passes the length and work checks, and why the
    others fail; raises ``ValueError`` when none passes."""
    ids: dict[str, list[int]] = {}
    failed: dict[str, str] = {}
    for prompt in prompts:
        if prompt in ids or prompt in failed:
            continue
        try:
            tokens = prompt_tokens(model, prompt, kwargs.get("max_tokens", 128))[0]
            check_work(len(tokens), kwargs["layers"], kwargs.get("max_rows", DEFAULT_MAX_ROWS))
        except ValueError as exc:
            failed[prompt] = str(exc)
            log.warning("skipping prompt %r: %s", _short(prompt), exc)
            continue
        ids[prompt] = [int(t) for t in tokens]
    if not ids:
        reasons = "; ".join(f"{_short(p)!r}: {why}" for p, why in list(failed.items())[:3])
        raise ValueError(f"none of the {len(failed)} prompt(s) can be evolved ({reasons})")
    return Plan(ids=ids, failed=failed)


def _expected(model: "HookedTransformer", bank: "SAEBank", kwargs: dict[str, Any]) -> dict[str, Any]:
    """What an existing file must record to count as this run's result."""
    layers = kwargs["layers"]
    return dict(  # in the order differences are reported: the SAEs follow from the layers
        model=model_key(model.cfg.model_name),
        k=int(kwargs.get("k", 400)),
        layers=layers,
        postnorm=recorded_postnorm(model, layers, kwargs.get("postnorm", "per_partial_sum")),
        saes=sae_summaries(bank, layers),
    )


def _difference(done: Evolution, token_ids: list[int], expected: dict[str, Any]) -> str | None:
    """The first thing in which the file ``done`` differs from this run's result, or ``None``."""
    saes = done.metadata.get("saes")
    if isinstance(saes, dict) and isinstance(expected.get("saes"), dict):
        # files written before TopK SAEs recorded their own k: architecture and width decide
        saes = {L: ({**d, "k": expected["saes"][L]["k"]} if isinstance(d, dict) and "k" not in d
                    and "k" in expected["saes"].get(L, {}) else d) for L, d in saes.items()}
    found = dict(model=model_key(done.model_name), saes=saes, k=done.k, layers=done.layers, postnorm=done.postnorm)
    if done.token_ids != token_ids:
        return f"another prompt ({len(done.token_ids)} tokens: {_short(' '.join(done.tokens))!r})"
    for name, want in expected.items():
        got = found[name]
        while isinstance(got, dict) and isinstance(want, dict):  # down to the field that differs
            key = next((key for key in sorted(set(got) | set(want)) if got.get(key) != want.get(key)), None)
            if key is None:
                break
            name, got, want = f"{name}[{key!r}]", got.get(key), want.get(key)
        if got != want:
            return f"{name} {_short(json.dumps(got))} (this run: {_short(json.dumps(want))})"
    return None


def _plan_files(plan: Plan, out_dir: Path, expected: dict[str, Any], overwrite: bool) -> None:
    """Fill ``plan.todo`` and ``plan.renames`` from the files in ``out_dir``; raises
    ``ValueError`` naming the files of other settings unless ``overwrite``."""
    conflicts = []
    legacy = _positional_files(out_dir, plan.ids, expected)
    for prompt, token_ids in plan.ids.items():
        path = out_dir / prompt_file_name(prompt)
        done = _load_or_none(path)
        why = None if done is None else _difference(done, token_ids, expected)
        if done is not None and why is None:
            continue
        if why is not None and not overwrite:
            conflicts.append(f"{path.name} holds {why}")
        elif done is None and prompt in legacy:
            plan.renames[prompt] = legacy[prompt]
        else:
            plan.todo.append(prompt)
    if conflicts:
        raise ValueError(
            f"{len(conflicts)} file(s) in {out_dir} hold another prompt, model, SAE bank or other settings "
            f"({'; '.join(conflicts[:3])}); nothing was written — use another output folder or --overwrite"
        )


def _positional_files(out_dir: Path, ids: dict[str, list[int]], expected: dict[str, Any]) -> dict[str, Path]:
    """Files named by position (written before hash names) that hold one of the prompts
    ``ids``, matched by the prompt text each file records, with this run's settings."""
    found: dict[str, Path] = {}
    if not out_dir.is_dir():
        return found
    for path in sorted(out_dir.iterdir()):
        if not _POSITIONAL.fullmatch(path.name):
            continue
        done = _load_or_none(path)
        prompt = None if done is None else done.metadata.get("prompt")
        if prompt in ids and prompt not in found and _difference(done, ids[prompt], expected) is None:
            found[prompt] = path
    return found


def _load_or_none(path: Path) -> Evolution | None:
    """The evolution at ``path``; ``None`` when there is none or it is unreadable (recomputed)."""
    if not path.exists():
        return None
    try:
        return Evolution.load(path)
    except ValueError:
        log.info("%s is not a readable evolution file; it is recomputed", path)
        return None


def write_index(out_dir: str | Path, prompts: Sequence[str], failed: dict[str, str]) -> None:
    """``out_dir/index.json``, atomically: one entry per prompt, in order (module docstring);
    ``failed``: prompt -> reason (``Plan.failed``)."""
    entries = [
        dict(prompt=p, file=None, error=failed[p]) if p in failed else dict(prompt=p, file=prompt_file_name(p))
        for p in prompts
    ]
    with atomic_write(Path(out_dir) / INDEX) as fh:
        json.dump(entries, fh, indent=1)


_write_index = write_index  # the name before the API was public


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."

"""Stage 2 over a prompt set: one evolution file per prompt, resumable after an interruption.

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
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from trajectory.evolution.engine import (
    DEFAULT_MAX_ROWS,
    check_bank,
    check_options,
    check_work,
    evolve,
    model_key,
    prompt_tokens,
    recorded_postnorm,
    sae_summaries,
)
from trajectory.evolution.result import Evolution
from trajectory.io import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

    from trajectory.saes.bank import SAEBank

log = logging.getLogger(__name__)

INDEX = "index.json"
#: names of the files written before they were named by prompt hash
_POSITIONAL = re.compile(r"prompt_\d{4}\.safetensors")


def prompt_file_name(prompt: str) -> str:
    """The evolution file of ``prompt`` in a batch folder: ``prompt_<sha256[:12]>.safetensors``."""
    return f"prompt_{hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:12]}.safetensors"


@dataclass
class _Plan:
    """What a run does, decided before anything is written."""

    ids: dict[str, list[int]]  # prompt -> token ids, for the prompts that can be evolved
    failed: dict[str, str]  # prompt -> why it cannot be evolved
    todo: list[str] = field(default_factory=list)  # prompts to compute
    renames: dict[str, Path] = field(default_factory=dict)  # prompt -> positional file to take over


def evolve_many(
    model: "HookedTransformer",
    bank: "SAEBank",
    prompts: Sequence[str],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
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
    ``batch_size`` and ``device`` are not compared: they change float rounding only.
    A file that differs in any of those settings raises ``ValueError`` naming the
    setting unless ``overwrite`` (then it is recomputed); an unreadable one is
    recomputed. ``out_dir/index.json`` (see the module docstring) is written last.

    ``kwargs`` are :func:`~trajectory.evolution.engine.evolve`'s options.

    Returns the paths of the prompts that could be evolved, in the prompts' order.
    Raises ``ValueError`` when none can.
    """
    from tqdm.auto import tqdm

    if isinstance(prompts, str) or not prompts:
        raise ValueError("evolve_many needs a non-empty list of prompts (one evolution file each)")
    out_dir = Path(out_dir)
    kwargs["layers"] = check_bank(model, bank, kwargs.get("layers"),
                                  allow_other_model=bool(kwargs.get("allow_other_model", False)))
    check_options(k=kwargs.get("k", 400), postnorm=kwargs.get("postnorm", "per_partial_sum"),
                  method=kwargs.get("method", "auto"))
    plan = _tokenise_all(model, prompts, kwargs)
    _plan_files(plan, out_dir, _expected(model, bank, kwargs), overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    for prompt, old in plan.renames.items():
        log.info("reusing %s for %r (named by position before)", old.name, prompt)
        os.replace(old, out_dir / prompt_file_name(prompt))
    for prompt in tqdm(plan.todo, desc="prompts", disable=not progress, unit="prompt"):
        evolve(model, bank, prompt, progress=False, **kwargs).save(out_dir / prompt_file_name(prompt))
    _write_index(out_dir, prompts, plan.failed)
    return [out_dir / prompt_file_name(p) for p in prompts if p not in plan.failed]


def _tokenise_all(model: "HookedTransformer", prompts: Sequence[str], kwargs: dict[str, Any]) -> _Plan:
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
    return _Plan(ids=ids, failed=failed)


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


def _plan_files(plan: _Plan, out_dir: Path, expected: dict[str, Any], overwrite: bool) -> None:
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


def _write_index(out_dir: Path, prompts: Sequence[str], failed: dict[str, str]) -> None:
    """``out_dir/index.json``, atomically: one entry per prompt, in order (module docstring)."""
    entries = [
        dict(prompt=p, file=None, error=failed[p]) if p in failed else dict(prompt=p, file=prompt_file_name(p))
        for p in prompts
    ]
    with atomic_write(out_dir / INDEX) as fh:
        json.dump(entries, fh, indent=1)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."

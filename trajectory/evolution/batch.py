"""Stage 2 over a prompt set: one evolution file per prompt, resumable after an interruption."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from trajectory.evolution.engine import check_bank, evolve, prompt_tokens, sae_summaries
from trajectory.evolution.result import Evolution
from trajectory.io import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformer_lens import HookedTransformer

    from trajectory.saes.bank import SAEBank


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
    """Evolve each prompt into ``out_dir/prompt_{i:04d}.safetensors``; resumable.

    A file that already exists, reads back and matches the prompt's tokens and the
    settings (k, layers, postnorm) is kept, so a rerun after an interruption does only
    the missing prompts (files are written atomically: never half-written). A file
    from other settings raises ``ValueError`` unless ``overwrite``; an unreadable one
    is recomputed. ``out_dir/index.json`` lists prompt -> file.

    ``kwargs`` are :func:`~trajectory.evolution.engine.evolve`'s options.

    Returns the paths, one per prompt, in order.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = check_bank(model, bank, kwargs.get("layers"))
    kwargs["layers"] = layers
    expected = dict(
        k=int(kwargs.get("k", 400)),
        layers=layers,
        postnorm=kwargs.get("postnorm", "per_partial_sum"),
        model_name=str(getattr(bank, "model_name", "") or model.cfg.model_name),
        saes=sae_summaries(bank, layers),
    )
    # validate every prompt before spending time on any
    ids = [prompt_tokens(model, p, kwargs.get("max_tokens", 128))[0] for p in prompts]
    paths = [out_dir / f"prompt_{i:04d}.safetensors" for i in range(len(prompts))]
    with atomic_write(out_dir / "index.json") as fh:
        json.dump([dict(prompt=p, file=path.name) for p, path in zip(prompts, paths)], fh, indent=1)
    for prompt, tok, path in tqdm(list(zip(prompts, ids, paths)), desc="prompts", disable=not progress, unit="prompt"):
        if not overwrite and _already_done(path, tok, expected):
            continue
        evolve(model, bank, prompt, progress=False, **kwargs).save(path)
    return paths


def _already_done(path: Path, token_ids: "torch.Tensor", expected: dict[str, Any]) -> bool:
    """Whether ``path`` holds this prompt's evolution with the ``expected`` settings.

    ``False`` when the file is missing or unreadable (then it is recomputed); raises
    ``ValueError`` when it holds another prompt, model, SAE bank or settings.
    """
    if not path.exists():
        return False
    try:
        done = Evolution.load(path)
    except ValueError:
        return False  # corrupt: recompute
    same_prompt = done.token_ids == [int(t) for t in token_ids]
    same_settings = done.k == expected["k"] and done.layers == expected["layers"]
    same_settings = same_settings and done.postnorm in (expected["postnorm"], "none")
    same_saes = done.model_name == expected["model_name"] and done.metadata.get("saes") == expected["saes"]
    if same_prompt and same_settings and same_saes:
        return True
    raise ValueError(
        f"{path} holds another prompt, model, SAE bank or other settings (k={done.k}, "
        f"layers={done.layers}, postnorm={done.postnorm}, model={done.model_name!r}); "
        "use another output folder or --overwrite"
    )

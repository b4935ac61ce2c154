"""Banks from the Hugging Face hub: any sae-lens release, and the hub presets.

:func:`load_release` loads one SAE per layer with ``SAE.from_pretrained`` (from the
local Hugging Face cache when offline); :func:`load_preset` opens a preset's saved bank
when there is one and otherwise loads its release, after checking that it fits in memory.
:func:`release_converter` swaps in :func:`gemma_scope_2_loader` where sae-lens's own
loader would need the network even for cached files.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from trajectory.hooks import RESID_POST_TEMPLATE, hook_from_template
from trajectory.io import default_bank_dir
from trajectory.presets import format_layers
from trajectory.saes.bank_format import MANIFEST, read_manifest
from trajectory.saes.memory import check_memory, estimate_preset_bytes, sae_nbytes

if TYPE_CHECKING:  # pragma: no cover
    from sae_lens import SAE

    from trajectory.saes.bank import SAEBank


def load_release(
    release: str,
    sae_id_template: str,
    layers: Sequence[int],
    *,
    dtype: str = "float32",
    device: str = "cpu",
    hook_template: str = RESID_POST_TEMPLATE,
    neuronpedia_template: str | None = None,
    model_name: str | None = None,
    preset: str | None = None,
    progress: bool = True,
) -> SAEBank:
    """Load one SAE per layer of any sae-lens release via ``SAE.from_pretrained``.

    ``sae_id_template`` is formatted with ``layer`` (``"layer_{layer}/width_16k/canonical"``).
    Hook names and Neuronpedia ids come from the SAE's ``cfg.metadata`` when it has
    them, else from ``hook_template`` / ``neuronpedia_template``. After the first layer
    the bytes of the whole bank are estimated and checked against available memory.
    """
    from tqdm.auto import tqdm

    from trajectory.saes.bank import BankEntry, SAEBank

    converter = release_converter(release)
    layers = sorted({int(x) for x in layers})
    if not layers:
        raise ValueError("no layers given; pass e.g. --layers 0-17")
    entries: dict[int, BankEntry] = {}
    for i, layer in enumerate(tqdm(layers, desc=f"loading {release}", disable=not progress, unit="layer")):
        sae_id = sae_id_template.format(layer=layer)
        sae = _from_pretrained(release, sae_id, dtype=dtype, device=device, converter=converter)
        if i == 0 and len(layers) > 1:
            check_memory(sae_nbytes(sae) * len(layers), what=f"{len(layers)} layers of {release}", device=device)
        meta = sae.cfg.metadata
        np_id = getattr(meta, "neuronpedia_id", None)
        if not np_id and neuronpedia_template:
            np_id = neuronpedia_template.format(layer=layer)
        if model_name is None:
            model_name = getattr(meta, "model_name", None) or ""
        entries[layer] = BankEntry(
            layer=layer,
            sae=sae,
            hook_name=getattr(meta, "hook_name", None) or hook_from_template(hook_template, layer),
            source=f"sae-lens:{release}/{sae_id}",
            neuronpedia_id=np_id,
        )
    return SAEBank(entries, model_name=model_name or "", preset=preset,
                   metadata={"release": release, "sae_id_template": sae_id_template})


def load_preset(
    preset: str,
    *,
    layers: Sequence[int] | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    bank_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> SAEBank:
    """The bank of a preset (see :mod:`trajectory.presets`).

    A saved bank in ``bank_dir`` (default ``results/banks/<preset>``) is opened when
    it exists and has the layers. Otherwise hub presets load through sae-lens
    (:func:`load_release`); ``offline`` (locally trained SAEs) raises, telling to run
    ``trajectory preload --preset offline`` first.
    """
    from trajectory.presets import get_preset
    from trajectory.saes.bank import SAEBank

    p = get_preset(preset)
    layers = list(range(p.n_layers)) if layers is None else [p.check_layer(x) for x in layers]
    folder = Path(bank_dir) if bank_dir is not None else default_bank_dir(p.name)
    if (folder / MANIFEST).is_file():
        have = {int(k) for k in read_manifest(folder)["layers"]}
        if set(layers) <= have:
            return SAEBank.open(folder, dtype=dtype, device=device, layers=layers)
    if p.sae_release is None:
        raise FileNotFoundError(
            f"no SAE bank for preset {p.name!r} with layers {format_layers(layers)} at {folder}; its SAEs are "
            f"trained locally: run `trajectory preload --preset {p.name}` first"
        )
    estimate = estimate_preset_bytes(p, len(layers), dtype=dtype)
    if estimate is not None:
        check_memory(estimate, what=f"{len(layers)} layers of preset {p.name} in {dtype}", device=device)
    np_template = (
        f"{p.neuronpedia_model}/{p.neuronpedia_source_template}"
        if p.neuronpedia_model and p.neuronpedia_source_template else None
    )
    return load_release(
        p.sae_release, p.sae_id_template or "", layers, dtype=dtype, device=device,
        hook_template=p.hook_template, neuronpedia_template=np_template, model_name=p.model_name,
        preset=p.name, progress=progress,
    )


def _from_pretrained(release: str, sae_id: str, *, dtype: str, device: str, converter: Any) -> "SAE":
    """``SAE.from_pretrained``, with an error naming the fix when the hub is out of reach."""
    from sae_lens import SAE

    try:
        return SAE.from_pretrained(release, sae_id, device=device, dtype=dtype, converter=converter)
    except Exception as exc:
        if _is_offline_error(exc):
            raise FileNotFoundError(
                f"SAE {release} / {sae_id} is not in the local Hugging Face cache and the hub cannot be "
                f"reached ({type(exc).__name__}); run `trajectory preload` where the hub is reachable "
                "(or point HF_HOME at a cache that has it)"
            ) from exc
        raise


def _is_offline_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the hub was unreachable or the cache lacked the file."""
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    return bool(names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout"})


def gemma_scope_2_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
):
    """sae-lens's Gemma Scope 2 (``gemma_3``) loader, reading tensor shapes from the local file.

    sae-lens asks the hub for the shapes of ``params.safetensors`` with HTTP range
    requests before downloading it, which fails offline even when the file is in the
    Hugging Face cache. This converter downloads (or finds in the cache) the file first
    and reads the shapes from its header; the rest is sae-lens's own loader. Pass it as
    ``SAE.from_pretrained(..., converter=gemma_scope_2_loader)``.
    """
    from unittest import mock

    import sae_lens.loading.pretrained_sae_loaders as loaders
    from huggingface_hub import hf_hub_download
    from safetensors import safe_open

    def local_shapes(repo: str, filename: str) -> dict[str, list[int]]:
        path = hf_hub_download(repo, filename, force_download=force_download)
        with safe_open(path, framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}

    # the only network call sae-lens makes outside hf_hub_download; patched for this call only
    with mock.patch.object(loaders, "get_safetensors_tensor_shapes", local_shapes):
        return loaders.gemma_3_sae_huggingface_loader(
            repo_id, folder_name, device=device, force_download=force_download, cfg_overrides=cfg_overrides
        )


def release_converter(release: str):
    """A converter for ``SAE.from_pretrained`` where sae-lens's own needs the network; else ``None``."""
    from sae_lens.loading.pretrained_sae_loaders import get_conversion_loader_name

    try:
        name = get_conversion_loader_name(release)
    except ValueError:
        return None
    return gemma_scope_2_loader if name == "gemma_3" else None

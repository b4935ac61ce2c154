"""Stage 1 as one call: resolve the SAE of every requested layer and write a bank folder.

``trajectory preload`` runs :func:`preload_bank`: SAEs from a preset (sae-lens hub
releases, or — ``offline`` — trained locally), from any sae-lens release, or from a
local folder; layers the folder already has are kept, and concurrent runs into one
folder wait for each other and merge (the bank lock).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trajectory.hooks import RESID_POST_TEMPLATE
from trajectory.io import default_bank_dir

if TYPE_CHECKING:  # pragma: no cover
    from trajectory.saes.bank import SAEBank
    from trajectory.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class PreloadConfig:
    """Where the SAEs of a bank come from, and how they are stored.

    Exactly one source: a ``preset`` (hub SAEs through sae-lens, or — ``offline`` —
    trained locally with ``training``), a sae-lens ``release`` with ``sae_id_template``
    (``{layer}`` in it), or a local ``sae_folder`` with one SAE per layer.
    ``layers=None`` means all layers of the model (of the folder, for ``sae_folder``).
    """

    preset: str = "offline"
    layers: "list[int] | str | None" = None
    dtype: str = "float32"
    device: str | None = None
    force: bool = False
    release: str | None = None
    sae_id_template: str | None = None
    sae_folder: str | None = None
    model: str | None = None
    hook_template: str = RESID_POST_TEMPLATE
    training: "TrainConfig | None" = None

    def __post_init__(self) -> None:
        if bool(self.release) != bool(self.sae_id_template):
            raise ValueError("--release and --sae-id-template go together "
                             "(e.g. --sae-id-template 'layer_{layer}/width_16k/canonical')")
        if self.release and self.sae_folder:
            raise ValueError("pass either --release or --sae-folder, not both")

    @property
    def custom(self) -> bool:
        """SAEs from a release or folder rather than from the preset."""
        return bool(self.release or self.sae_folder)

    def source_name(self) -> str:
        """Folder name of the default bank: the preset, release or SAE folder name."""
        if self.sae_folder:
            return Path(self.sae_folder).resolve().name
        if self.release:
            return re.sub(r"[^A-Za-z0-9._-]+", "_", self.release)
        return self.preset


@dataclass
class PreloadResult:
    """What :func:`preload_bank` did: the bank folder, its manifest, the layers asked
    for, and whether anything was (re)built."""

    path: Path
    manifest: dict[str, Any]
    layers: list[int]
    rebuilt: bool


def preload_bank(config: PreloadConfig, out: str | Path | None = None, *, progress: bool = True) -> PreloadResult:
    """Stage 1: resolve the SAE of every requested layer and write a bank folder at ``out``
    (default ``results/banks/<preset or source>``).

    Layers the folder already has (in the same dtype) are kept unless ``config.force``;
    a complete bank is left as it is.
    """
    from trajectory.io import check_output_dir
    from trajectory.presets import get_preset
    from trajectory.saes.bank_format import MANIFEST, bank_lock, read_manifest

    preset = None if config.custom else get_preset(config.preset)
    out = check_output_dir(out or default_bank_dir(config.source_name()), [MANIFEST], what="bank folder")
    layers = _preload_layers(config, preset)
    # one preload at a time per bank folder: a second run waits, then sees (and keeps) the first one's layers
    with bank_lock(out):
        existing = read_manifest(out) if (out / MANIFEST).is_file() else None
        have = {int(k) for k in existing["layers"]} if existing else set()
        if existing and not config.force and layers is not None and set(layers) <= have \
                and all(existing["layers"][str(x)].get("dtype") == config.dtype for x in layers):
            return PreloadResult(out, existing, sorted(layers), rebuilt=False)
        if layers is None:  # --sae-folder without --layers: whatever the folder has
            kept: set[int] = set()
        else:
            kept = have - set(layers) if config.force else set(have)
        bank = _assemble_bank(config, preset, layers, kept, out, progress)
        if config.model and config.custom:
            from trajectory.model.load import load_model

            bank.check_model(load_model(config.model, device=config.device))
        bank.save(out, progress=progress)
        return PreloadResult(out, read_manifest(out), bank.layers, rebuilt=True)


def _preload_layers(config: PreloadConfig, preset) -> list[int] | None:
    """The layers asked for: ``config.layers`` (a list, or a spec such as ``"0-5,9"``)
    checked against the model's layer count when it is known; ``None`` = all a folder has."""
    from trajectory.presets import parse_layers

    spec = config.layers
    if isinstance(spec, (list, tuple)):
        spec = ",".join(str(int(x)) for x in spec)
    n_layers = preset.n_layers if preset is not None else _model_layers(config.model)
    if n_layers is not None:
        return parse_layers(spec, n_layers)
    if spec:
        return parse_layers(spec, 10**6)
    if config.release:
        raise ValueError("with --release, pass --layers (e.g. 0-25) or --model to know how many layers there are")
    return None


def _assemble_bank(config: PreloadConfig, preset, layers, kept: set[int], out: Path, progress: bool) -> "SAEBank":
    """The bank to save: layers ``kept`` from the existing bank at ``out``, the others resolved."""
    from trajectory.model.load import default_device
    from trajectory.saes.bank import SAEBank

    device = config.device or default_device()
    old = SAEBank.open(out, layers=sorted(kept), dtype=config.dtype) if kept else None
    todo = None if layers is None else [x for x in layers if x not in kept]
    new = _resolve_saes(config, preset, todo, out, device, progress) if todo != [] else None
    parts = [b for b in (old, new) if b is not None]
    entries = {layer: e for b in parts for layer, e in b.entries.items()}
    metadata = {key: v for b in parts for key, v in b.metadata.items()}
    model_name = next((b.model_name for b in reversed(parts) if b.model_name), preset.model_name if preset else "")
    bank = SAEBank(entries, model_name=model_name, preset=preset.name if preset else None, metadata=metadata)
    return bank.to(device="cpu")


def _resolve_saes(config: PreloadConfig, preset, todo, out: Path, device: str, progress: bool) -> "SAEBank":
    """The SAEs of layers ``todo`` (``None`` = all a folder has) from the configured source."""
    from trajectory.saes.bank import SAEBank

    if config.sae_folder:
        return SAEBank.from_folder(config.sae_folder, dtype=config.dtype, device=device, layers=todo,
                                   hook_template=config.hook_template, model_name=config.model or "",
                                   progress=progress)
    if config.release:
        return SAEBank.from_release(config.release, config.sae_id_template, todo, dtype=config.dtype,
                                    device=device, hook_template=config.hook_template, model_name=config.model,
                                    progress=progress)
    if preset.sae_release is not None:
        return SAEBank.from_preset(preset.name, layers=todo, dtype=config.dtype, device=device, bank_dir=out,
                                   progress=progress)
    # the offline preset has no published SAEs: train the missing layers locally
    from trajectory.model.load import load_model
    from trajectory.presets import format_layers
    from trajectory.training.config import TrainConfig
    from trajectory.training.train import train_bank

    training = config.training or TrainConfig()
    if training.hook != RESID_POST_TEMPLATE:
        raise ValueError(f"preload builds the {preset.name} preset's residual-stream bank ({RESID_POST_TEMPLATE}); "
                         f"train SAEs at {training.hook} with `trajectory train --hook ... --out DIR` instead")
    log.info("training SAEs for layer(s) %s of %s (bank: %s)", format_layers(todo), preset.model_name, out)
    model = load_model(preset.name, device=device)
    bank = train_bank(model, training, layers=todo, device=device, progress=progress)
    return bank.to(dtype=config.dtype)


def _model_layers(model_name: str | None) -> int | None:
    """Layer count of a TransformerLens model name (``None`` when unknown)."""
    if not model_name:
        return None
    try:
        from transformer_lens.loading_from_pretrained import get_pretrained_model_config

        return int(get_pretrained_model_config(model_name).n_layers)
    except Exception:  # noqa: BLE001 - an unknown name only means "cannot tell"
        return None

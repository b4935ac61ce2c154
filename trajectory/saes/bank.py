"""The SAE bank: one sae-lens SAE per layer, with what later stages need to know.

A bank is the output of stage 1 and an input of stages 2 and 3. In memory it is a
mapping ``layer -> sae_lens.SAE``; each layer also records its hook name, source,
Neuronpedia id and quality metrics (:class:`BankEntry`).

On disk (:meth:`SAEBank.save`, :meth:`SAEBank.open`) a bank is one folder, described in
:mod:`trajectory.saes.bank_format`. Banks also come from sae-lens releases and hub
presets (:meth:`SAEBank.from_release`, :meth:`SAEBank.from_preset`, see
:mod:`trajectory.saes.hub`) and from folders of SAE files in other formats
(:meth:`SAEBank.from_folder`, :meth:`SAEBank.from_npz`, see :mod:`trajectory.saes.formats`).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from trajectory.hooks import RESID_POST_TEMPLATE, hook_from_template
from trajectory.io import jsonable
from trajectory.presets import format_layers
from trajectory.saes import bank_format, hub
from trajectory.saes.bank_format import read_explanations, read_manifest
from trajectory.saes.memory import check_memory, sae_nbytes, tensors_bytes

if TYPE_CHECKING:  # pragma: no cover
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


@dataclass
class BankEntry:
    """One layer of a bank.

    Attributes:
        layer: transformer block index.
        sae: the sae-lens SAE (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``).
        hook_name: TransformerLens hook the SAE reads, e.g. ``blocks.6.hook_resid_post``.
        source: where it came from (``"sae-lens:<release>/<id>"``, ``"folder:<path>"``,
            ``"trained:<corpus>"``, ``"npz:<path>"``, ``"memory"``).
        neuronpedia_id: ``"<model>/<source>"`` when Neuronpedia has this SAE, else ``None``.
        metrics: quality figures (L0, explained variance, ...) when known.
        explanations: feature index -> short text, for SAEs without Neuronpedia pages
            (locally trained ones: made from the feature's top-activating corpus tokens).
    """

    layer: int
    sae: "SAE"
    hook_name: str
    source: str = "memory"
    neuronpedia_id: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    explanations: dict[int, str] = field(default_factory=dict)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def architecture(self) -> str:
        return str(self.sae.cfg.architecture())

    @property
    def dtype(self) -> str:
        return str(self.sae.W_enc.dtype).replace("torch.", "")


class SAEBank(Mapping):
    """A mapping ``layer -> SAE`` plus per-layer metadata.

    Example:
        >>> from trajectory.testing import tiny_model, tiny_bank
        >>> bank = tiny_bank(tiny_model())
        >>> bank.layers, bank.hook_name(0), bank[0].cfg.d_sae
        ([0, 1, 2], 'blocks.0.hook_resid_post', 64)
    """

    def __init__(
        self,
        entries: Mapping[int, BankEntry],
        *,
        model_name: str = "",
        preset: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.entries: dict[int, BankEntry] = {int(k): v for k, v in sorted(entries.items())}
        self.model_name = model_name
        self.preset = preset
        self.metadata = dict(metadata or {})
        #: the folder this bank was opened from (:meth:`open`), else ``None``
        self.path: Path | None = None

    @classmethod
    def from_saes(
        cls,
        saes: Mapping[int, "SAE"],
        *,
        hook_template: str = RESID_POST_TEMPLATE,
        model_name: str = "",
        preset: str | None = None,
        source: str = "memory",
        neuronpedia_ids: Mapping[int, str] | None = None,
    ) -> "SAEBank":
        """Wrap already-built sae-lens SAEs."""
        entries = {
            int(layer): BankEntry(
                layer=int(layer),
                sae=sae,
                hook_name=hook_from_template(hook_template, int(layer)),
                source=source,
                neuronpedia_id=(neuronpedia_ids or {}).get(layer),
            )
            for layer, sae in saes.items()
        }
        return cls(entries, model_name=model_name, preset=preset)

    # Mapping protocol: layer -> SAE
    def __getitem__(self, layer: int) -> "SAE":
        return self.entry(layer).sae

    def __iter__(self) -> Iterator[int]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, layer: int) -> BankEntry:
        try:
            return self.entries[int(layer)]
        except KeyError:
            raise KeyError(
                f"layer {layer} is not in this SAE bank (it has layers {self.layers}); "
                "preload it with `trajectory preload --layers ...`"
            ) from None

    @property
    def layers(self) -> list[int]:
        return list(self.entries)

    def hook_name(self, layer: int) -> str:
        return self.entry(layer).hook_name

    def neuronpedia_id(self, layer: int) -> str | None:
        return self.entry(layer).neuronpedia_id

    @property
    def nbytes(self) -> int:
        """Bytes of all SAE tensors in memory."""
        return sum(sae_nbytes(e.sae) for e in self.entries.values())

    def to(self, *, device: str | None = None, dtype: str | None = None) -> "SAEBank":
        """Move / cast every SAE in place (``cfg.dtype`` / ``cfg.device`` follow); returns ``self``."""
        import torch

        for e in self.entries.values():
            if dtype is not None:
                e.sae.to(dtype=getattr(torch, str(dtype).replace("torch.", "")))
                e.sae.cfg.dtype = str(dtype).replace("torch.", "")
            if device is not None:
                e.sae.to(device=device)
                e.sae.cfg.device = str(device)
        return self

    def check_model(self, model: "HookedTransformer") -> None:
        """Raise ``ValueError`` unless every layer's SAE fits ``model``.

        Checks that the layer exists in the model, its hook is one of ``model.hook_dict``
        and the SAE's ``d_in`` equals the hook's width.
        """
        from trajectory.saes.formats import hook_width

        n_layers = int(model.cfg.n_layers)
        name = model.cfg.model_name
        for layer, e in self.entries.items():
            if not 0 <= layer < n_layers:
                raise ValueError(
                    f"the bank has an SAE for layer {layer} but {name} has layers 0-{n_layers - 1}: "
                    "this bank was made for another model"
                )
            if e.hook_name not in model.hook_dict:
                raise ValueError(f"the SAE of layer {layer} reads {e.hook_name!r}, which {name} does not have")
            width = hook_width(model, e.hook_name)
            if e.d_in != width:
                raise ValueError(
                    f"SAE of layer {layer} has d_in {e.d_in} but {e.hook_name} of {name} has width {width}: "
                    "this bank was made for another model"
                )

    # ------------------------------------------------------------------ disk format

    def save(self, path: str | os.PathLike, *, merge: bool = False, progress: bool = False) -> Path:
        """Write the bank to folder ``path``, atomically; returns ``path``.

        Everything is written into a temporary folder beside ``path`` (the manifest
        last) which then takes ``path``'s place, so ``path`` is at any moment either
        the old complete bank, absent, or the new complete bank. Concurrent saves to
        one path take turns at that swap (:func:`~trajectory.saes.bank_format.bank_lock`);
        the last one wins.

        Args:
            merge: keep the layers of the bank at ``path`` that this bank lacks (their
                files, explanations and manifest entries; metadata keys this bank does
                not set). The whole save then holds the folder's lock, so concurrent
                merging saves of different layers all end up in the folder. Without it
                (the default) the bank at ``path`` is replaced.
            progress: show a progress bar over the layers.

        Raises:
            ValueError: ``merge`` into a bank of another model.
        """
        from tqdm.auto import tqdm

        path = Path(path)
        header = {"model_name": self.model_name, "preset": self.preset, "metadata": self.metadata}
        with bank_format.bank_lock(path) if merge else contextlib.nullcontext():
            with bank_format.atomic_folder(path) as tmp:
                records = {
                    str(layer): _write_layer(tmp, layer, e)
                    for layer, e in tqdm(self.entries.items(), desc="saving SAE bank", disable=not progress,
                                         unit="layer")
                }
                if merge:
                    records, header = bank_format.keep_layers(path, tmp, records, header)
                bank_format.write_manifest(tmp, records, **header)
        return path

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        dtype: str | None = None,
        device: str = "cpu",
        layers: Sequence[int] | None = None,
        verify: bool | str = "auto",
        explanations: bool = True,
    ) -> "SAEBank":
        """Open a bank written by :meth:`save`.

        Args:
            path: the bank folder.
            dtype: cast the SAEs to this dtype (default: as stored, no copy).
            device: where the SAEs live (``"cpu"`` keeps them memory-mapped from disk).
            layers: a subset of layers (default: all in the bank).
            verify: ``"sha256"`` checks sizes, headers and checksums; ``"size"`` only
                sizes and headers (catches truncation, not flipped bits); ``False``
                nothing beyond parsing; ``"auto"`` (default) is ``"sha256"`` for banks up
                to :data:`~trajectory.saes.bank_format.SHA256_AUTO_BYTES` and ``"size"``
                above.
            explanations: also read the per-layer explanations.

        Raises:
            FileNotFoundError: no bank there (run ``trajectory preload`` first).
            CorruptBankError: a file is missing, truncated, or fails its checksum.
            ValueError: a requested layer is not in the bank.
            BankTooLargeError: the SAEs would not fit in available memory.
        """
        path = Path(path)
        manifest = read_manifest(path)
        records = {x: manifest["layers"][str(x)] for x in bank_format.select_layers(manifest, layers, path)}
        need = sum(tensors_bytes(m["tensors"], dtype or m["dtype"]) for m in records.values())
        check_memory(need, what=f"opening {len(records)} layer(s) of the SAE bank at {path}", device=device)
        verify = bank_format.resolve_verify(records.values(), verify)
        entries = {
            x: _open_layer(path, x, m, dtype=dtype, device=device, verify=verify, explanations=explanations,
                           preset=manifest.get("preset"))
            for x, m in records.items()
        }
        bank = cls(entries, model_name=manifest.get("model_name", ""), preset=manifest.get("preset"),
                   metadata=dict(manifest.get("metadata") or {}))
        bank.path = path
        return bank

    #: every stage's output object reads back with ``load``; for a bank it is :meth:`open`
    load = open

    # ------------------------------------------------------------------ constructors

    #: one SAE per layer of any sae-lens release (:func:`trajectory.saes.hub.load_release`)
    from_release = staticmethod(hub.load_release)
    #: a preset's bank, saved or from the hub (:func:`trajectory.saes.hub.load_preset`)
    from_preset = staticmethod(hub.load_preset)

    @classmethod
    def from_folder(
        cls,
        path: str | os.PathLike,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        layers: Sequence[int] | None = None,
        hook_template: str = RESID_POST_TEMPLATE,
        model_name: str = "",
        progress: bool = True,
    ) -> "SAEBank":
        """A bank from a folder holding one SAE per layer (sub-folders or files).

        Each child in a format :func:`trajectory.saes.formats.load_sae` knows (sae-lens
        folders ``cfg.json`` + ``sae_weights.safetensors``, ``params.npz``, ...) is one
        layer; the layer comes from the SAE's ``cfg.metadata.hook_name``
        (``blocks.<L>.``) or else from the first number in the child's name.
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"SAE folder {path} does not exist")
        from trajectory.saes.formats import load_sae_folder

        found = load_sae_folder(path, dtype=dtype, device=device, layers=layers, hook_template=hook_template,
                                progress=progress)
        if not found:
            raise ValueError(
                f"no SAEs found in {path}: expected one sub-folder per layer with cfg.json + "
                "sae_weights.safetensors (sae-lens), or params.npz files"
            )
        if layers is not None:
            lost = sorted(set(int(x) for x in layers) - set(found))
            if lost:
                raise ValueError(f"layer(s) {lost} have no SAE in {path} (found layers {format_layers(found)})")
        entries = {
            layer: BankEntry(layer=layer, sae=sae, hook_name=sae.cfg.metadata.hook_name, source=f"folder:{child}")
            for layer, (child, sae) in sorted(found.items())
        }
        return cls(entries, model_name=model_name or _meta_model(entries), metadata={"folder": str(path)})

    @classmethod
    def from_npz(
        cls,
        paths: Mapping[int, str | os.PathLike],
        *,
        dtype: str = "float32",
        device: str = "cpu",
        hook_template: str = RESID_POST_TEMPLATE,
        model_name: str = "",
        neuronpedia_ids: Mapping[int, str] | None = None,
    ) -> "SAEBank":
        """A bank from Gemma Scope ``params.npz`` files, ``{layer: path}`` (JumpReLU SAEs)."""
        from trajectory.saes.formats import load_sae

        entries = {}
        for layer, p in sorted(paths.items()):
            hook = hook_from_template(hook_template, int(layer))
            sae = load_sae(p, dtype=dtype, device=device, hook_name=hook)
            entries[int(layer)] = BankEntry(
                layer=int(layer), sae=sae, hook_name=hook, source=f"npz:{p}",
                neuronpedia_id=(neuronpedia_ids or {}).get(layer),
            )
        return cls(entries, model_name=model_name)

    def __repr__(self) -> str:
        if not self.entries:
            return "SAEBank(empty)"
        e = next(iter(self.entries.values()))
        return (
            f"SAEBank(model={self.model_name!r}, preset={self.preset!r}, layers={self.layers}, "
            f"d_in={e.d_in}, d_sae={e.d_sae}, architecture={e.architecture!r}, dtype={e.dtype})"
        )


# ---------------------------------------------------------------------------- steps of save / open


def _write_layer(folder: Path, layer: int, e: BankEntry) -> dict[str, Any]:
    """Write ``layer``'s tensors (and explanations) into ``folder``; its manifest entry."""
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu").contiguous() for k, v in e.sae.state_dict().items()}
    e.sae.process_state_dict_for_saving(sd)
    file = bank_format.layer_file(layer)
    save_file(sd, str(folder / file), metadata={"layer": str(layer), "hook_name": e.hook_name})
    cfg = jsonable(e.sae.cfg.to_dict())
    cfg.pop("device", None)  # where it lived is no property of the SAE; open() takes a device
    return bank_format.layer_record(
        folder, file, {k: v.shape for k, v in sd.items()},
        source=e.source,
        hook_name=e.hook_name,
        d_in=e.d_in,
        d_sae=e.d_sae,
        architecture=e.architecture,
        dtype=e.dtype,
        cfg=cfg,
        neuronpedia_id=e.neuronpedia_id,
        metrics=jsonable(dict(e.metrics)),
        explanations=bank_format.write_explanations(folder, layer, e.explanations),
        n_explanations=len(e.explanations),
    )


def _open_layer(
    path: Path, layer: int, record: Mapping[str, Any], *, dtype: str | None, device: str,
    verify: bool | str, explanations: bool, preset: str | None = None,
) -> BankEntry:
    """``layer`` of the bank at ``path`` from its manifest entry ``record``."""
    from trajectory.saes.formats import build_sae

    tensors = bank_format.read_layer(path, record, verify=verify)
    cfg = dict(record["cfg"])
    try:
        sae = build_sae(cfg, tensors, dtype=dtype or cfg.get("dtype"), device=device)
    except ValueError as exc:  # the manifest's cfg does not describe the file's tensors
        raise bank_format.CorruptBankError(
            f"layer {layer} of the SAE bank at {path}: {path / record['file']} does not fit the manifest's cfg: "
            f"{exc}; rebuild the layer with {bank_format.rebuild_command(preset, layer)}"
        ) from None
    return BankEntry(
        layer=layer,
        sae=sae,
        hook_name=record["hook_name"],
        source=record.get("source", "memory"),
        neuronpedia_id=record.get("neuronpedia_id"),
        metrics=dict(record.get("metrics") or {}),
        explanations=read_explanations(path, layer) if explanations and record.get("explanations") else {},
    )


def _meta_model(entries: Mapping[int, BankEntry]) -> str:
    for e in entries.values():
        name = getattr(e.sae.cfg.metadata, "model_name", None)
        if name:
            return str(name)
    return ""

"""The SAE bank: one sae-lens SAE per layer, with what later stages need to know.

A bank is the output of stage 1 and an input of stages 2 and 3. In memory it is a
mapping ``layer -> sae_lens.SAE``; each layer also records its hook name, source,
Neuronpedia id and quality metrics (:class:`BankEntry`).

On disk (:meth:`SAEBank.save`, :meth:`SAEBank.open`) a bank is one folder::

    manifest.json                  format, version, model, preset, dtype, and per layer:
                                   file, sha256, bytes, tensors {name: shape},
                                   source, hook_name, d_in, d_sae, architecture,
                                   cfg (sae-lens cfg dict), neuronpedia_id, metrics,
                                   explanations file
    layer_06.safetensors           the SAE's tensors (W_enc [d_in, d_sae], W_dec
                                   [d_sae, d_in], b_enc [d_sae], b_dec [d_in], threshold ...)
    explanations/layer_06.json     {"feature index": "text"} (only layers that have some)

The folder is built under a temporary name beside the target and renamed into place
once complete (manifest written last), so an interrupted save never leaves a folder
that opens as a bank. :func:`read_manifest` and :func:`read_explanations` need no
torch (the graph stage uses them).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

BANK_FORMAT = "trajectory-sae-bank"
BANK_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Banks up to this size are sha256-checked at every :meth:`SAEBank.open` by default.
SHA256_AUTO_BYTES = 2 * 1024**3

_ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}


class CorruptBankError(ValueError):
    """A bank file is missing, truncated, fails its checksum or cannot be parsed."""


class BankTooLargeError(MemoryError):
    """The requested SAEs will not fit in the memory available."""


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
        hook_template: str = "blocks.{layer}.hook_resid_post",
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
                hook_name=hook_template.format(layer=layer),
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
        return sum(_sae_nbytes(e.sae) for e in self.entries.values())

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
        from trajectory.sae_formats import hook_width

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

    def save(self, path: str | os.PathLike, *, progress: bool = False) -> Path:
        """Write the bank to folder ``path`` (replacing one there), atomically.

        Everything is written into a temporary folder beside ``path`` (the manifest
        last) which then takes ``path``'s place, so ``path`` is at any moment either
        the old complete bank, absent, or the new complete bank. Returns ``path``.
        """
        from safetensors.torch import save_file
        from tqdm.auto import tqdm

        from trajectory.io import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            layers_meta: dict[str, Any] = {}
            dtypes = set()
            for layer, e in tqdm(self.entries.items(), desc="saving SAE bank", disable=not progress, unit="layer"):
                sd = {k: v.detach().to("cpu").contiguous() for k, v in e.sae.state_dict().items()}
                e.sae.process_state_dict_for_saving(sd)
                fname = f"layer_{layer:02d}.safetensors"
                save_file(sd, str(tmp / fname), metadata={"layer": str(layer), "hook_name": e.hook_name})
                cfg = _jsonable(e.sae.cfg.to_dict())
                cfg.pop("device", None)
                expl_file = None
                if e.explanations:
                    expl_file = f"explanations/layer_{layer:02d}.json"
                    (tmp / "explanations").mkdir(exist_ok=True)
                    with open(tmp / expl_file, "w", encoding="utf-8") as fh:
                        json.dump({str(int(k)): str(v) for k, v in sorted(e.explanations.items())}, fh, ensure_ascii=False)
                dtypes.add(e.dtype)
                layers_meta[str(layer)] = {
                    "file": fname,
                    "sha256": _sha256(tmp / fname),
                    "bytes": (tmp / fname).stat().st_size,
                    "tensors": {k: list(v.shape) for k, v in sd.items()},
                    "source": e.source,
                    "hook_name": e.hook_name,
                    "d_in": e.d_in,
                    "d_sae": e.d_sae,
                    "architecture": e.architecture,
                    "dtype": e.dtype,
                    "cfg": cfg,
                    "neuronpedia_id": e.neuronpedia_id,
                    "metrics": _jsonable(dict(e.metrics)),
                    "explanations": expl_file,
                    "n_explanations": len(e.explanations),
                }
            manifest = {
                "format": BANK_FORMAT,
                "version": BANK_FORMAT_VERSION,
                "model_name": self.model_name,
                "preset": self.preset,
                "dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "versions": _versions(),
                "metadata": _jsonable(self.metadata),
                "layers": layers_meta,
            }
            with atomic_write(tmp / MANIFEST) as fh:
                json.dump(manifest, fh, indent=1, ensure_ascii=False)
            old = None
            if path.exists():
                old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
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
                to :data:`SHA256_AUTO_BYTES` (the offline bank: a few hundred MB, hashed
                in well under a second) and ``"size"`` above (hashing the 31 GB of a 65k
                Gemma Scope bank would take a minute at every open).
            explanations: also read the per-layer explanations.

        Raises:
            FileNotFoundError: no bank there (run ``trajectory preload`` first).
            CorruptBankError: a file is missing, truncated, or fails its checksum.
            ValueError: a requested layer is not in the bank.
            BankTooLargeError: the SAEs would not fit in available memory.
        """
        from safetensors import SafetensorError, safe_open

        from trajectory.sae_formats import build_sae

        path = Path(path)
        manifest = read_manifest(path)
        have = sorted(int(k) for k in manifest["layers"])
        if layers is None:
            layers = have
        layers = sorted({int(x) for x in layers})
        missing = [x for x in layers if x not in have]
        if missing:
            raise ValueError(
                f"layer(s) {missing} are not in the SAE bank at {path} (it has layers {_span(have)}); "
                f"preload them with `trajectory preload --preset {manifest.get('preset') or '...'} --layers ...`"
            )
        need = 0
        for x in layers:
            m = manifest["layers"][str(x)]
            n_el = sum(_numel(s) for s in m["tensors"].values())
            need += n_el * _ITEMSIZE.get(str(dtype or m["dtype"]).replace("torch.", ""), 4)
        check_memory(need, what=f"opening {len(layers)} layer(s) of the SAE bank at {path}", device=device)
        if verify == "auto":
            on_disk = sum(int(manifest["layers"][str(x)].get("bytes", 0)) for x in layers)
            verify = "sha256" if on_disk <= SHA256_AUTO_BYTES else "size"

        entries: dict[int, BankEntry] = {}
        for x in layers:
            m = manifest["layers"][str(x)]
            file = path / m["file"]
            if verify:
                verify_file(file, m, check_sha256=(verify != "size"))
            elif not file.is_file():
                raise CorruptBankError(f"{file} is missing; rerun `trajectory preload` with --force")
            try:
                with safe_open(str(file), framework="pt", device="cpu") as f:
                    sd = {k: f.get_tensor(k) for k in f.keys()}
            except (SafetensorError, OSError) as exc:
                raise CorruptBankError(
                    f"{file} cannot be read as safetensors ({exc}); rerun `trajectory preload` with --force"
                ) from None
            shapes = {k: list(v.shape) for k, v in sd.items()}
            if shapes != m["tensors"]:
                raise CorruptBankError(
                    f"{file} holds tensors {shapes} but the manifest lists {m['tensors']}; "
                    "rerun `trajectory preload` with --force"
                )
            cfg = dict(m["cfg"])
            sae = build_sae(cfg, sd, dtype=dtype or cfg.get("dtype"), device=device)
            expl: dict[int, str] = {}
            if explanations and m.get("explanations"):
                expl = read_explanations(path, x)
            entries[x] = BankEntry(
                layer=x,
                sae=sae,
                hook_name=m["hook_name"],
                source=m.get("source", "memory"),
                neuronpedia_id=m.get("neuronpedia_id"),
                metrics=dict(m.get("metrics") or {}),
                explanations=expl,
            )
        bank = cls(entries, model_name=manifest.get("model_name", ""), preset=manifest.get("preset"),
                   metadata=dict(manifest.get("metadata") or {}))
        bank.path = path
        return bank

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_release(
        cls,
        release: str,
        sae_id_template: str,
        layers: Sequence[int],
        *,
        dtype: str = "float32",
        device: str = "cpu",
        hook_template: str = "blocks.{layer}.hook_resid_post",
        neuronpedia_template: str | None = None,
        model_name: str | None = None,
        preset: str | None = None,
        progress: bool = True,
    ) -> "SAEBank":
        """Load one SAE per layer of any sae-lens release via ``SAE.from_pretrained``.

        ``sae_id_template`` is formatted with ``layer`` (``"layer_{layer}/width_16k/canonical"``).
        Hook names and Neuronpedia ids come from the SAE's ``cfg.metadata`` when it has
        them, else from ``hook_template`` / ``neuronpedia_template``. After the first layer
        the bytes of the whole bank are estimated and checked against available memory.
        """
        from sae_lens import SAE
        from tqdm.auto import tqdm

        from trajectory.sae_formats import release_converter

        converter = release_converter(release)
        layers = sorted({int(x) for x in layers})
        if not layers:
            raise ValueError("no layers given; pass e.g. --layers 0-17")
        entries: dict[int, BankEntry] = {}
        for i, layer in enumerate(tqdm(layers, desc=f"loading {release}", disable=not progress, unit="layer")):
            sae_id = sae_id_template.format(layer=layer)
            try:
                sae = SAE.from_pretrained(release, sae_id, device=device, dtype=dtype, converter=converter)
            except Exception as exc:
                if _is_offline_error(exc):
                    raise FileNotFoundError(
                        f"SAE {release} / {sae_id} is not in the local Hugging Face cache and the hub cannot be "
                        f"reached ({type(exc).__name__}); run `trajectory preload` where the hub is reachable "
                        "(or point HF_HOME at a cache that has it)"
                    ) from exc
                raise
            if i == 0 and len(layers) > 1:
                per_layer = _sae_nbytes(sae)
                check_memory(per_layer * len(layers), what=f"{len(layers)} layers of {release}", device=device)
            meta = sae.cfg.metadata
            hook = getattr(meta, "hook_name", None) or hook_template.format(layer=layer)
            np_id = getattr(meta, "neuronpedia_id", None)
            if not np_id and neuronpedia_template:
                np_id = neuronpedia_template.format(layer=layer)
            if model_name is None:
                model_name = getattr(meta, "model_name", None) or ""
            entries[layer] = BankEntry(
                layer=layer, sae=sae, hook_name=hook, source=f"sae-lens:{release}/{sae_id}", neuronpedia_id=np_id
            )
        return cls(entries, model_name=model_name or "", preset=preset,
                   metadata={"release": release, "sae_id_template": sae_id_template})

    @classmethod
    def from_preset(
        cls,
        preset: str,
        *,
        layers: Sequence[int] | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        bank_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> "SAEBank":
        """The bank of a preset (see :mod:`trajectory.presets`).

        A saved bank in ``bank_dir`` (default ``results/banks/<preset>``) is opened when
        it exists and has the layers. Otherwise hub presets load through sae-lens
        (:meth:`from_release`); ``offline`` (locally trained SAEs) raises, telling to run
        ``trajectory preload --preset offline`` first.
        """
        from trajectory.io import RESULTS_DIR
        from trajectory.presets import get_preset

        p = get_preset(preset)
        layers = list(range(p.n_layers)) if layers is None else [p.check_layer(x) for x in layers]
        folder = Path(bank_dir) if bank_dir is not None else RESULTS_DIR / "banks" / p.name
        if (folder / MANIFEST).is_file():
            have = {int(k) for k in read_manifest(folder)["layers"]}
            if set(layers) <= have:
                return cls.open(folder, dtype=dtype, device=device, layers=layers)
        if p.sae_release is None:
            raise FileNotFoundError(
                f"no SAE bank for preset {p.name!r} with layers {_span(layers)} at {folder}; its SAEs are trained "
                f"locally: run `trajectory preload --preset {p.name}` first"
            )
        estimate = estimate_preset_bytes(p, len(layers), dtype=dtype)
        if estimate is not None:
            check_memory(estimate, what=f"{len(layers)} layers of preset {p.name} in {dtype}", device=device)
        np_template = (
            f"{p.neuronpedia_model}/{p.neuronpedia_source_template}"
            if p.neuronpedia_model and p.neuronpedia_source_template else None
        )
        return cls.from_release(
            p.sae_release, p.sae_id_template or "", layers, dtype=dtype, device=device,
            hook_template=p.hook_template, neuronpedia_template=np_template, model_name=p.model_name,
            preset=p.name, progress=progress,
        )

    @classmethod
    def from_folder(
        cls,
        path: str | os.PathLike,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        layers: Sequence[int] | None = None,
        hook_template: str = "blocks.{layer}.hook_resid_post",
        model_name: str = "",
        progress: bool = True,
    ) -> "SAEBank":
        """A bank from a folder holding one SAE per layer (sub-folders or files).

        Each child in a format :func:`trajectory.sae_formats.load_sae` knows (sae-lens
        folders ``cfg.json`` + ``sae_weights.safetensors``, ``params.npz``, ...) is one
        layer; the layer comes from the SAE's ``cfg.metadata.hook_name``
        (``blocks.<L>.``) or else from the first number in the child's name.
        """
        from tqdm.auto import tqdm

        from trajectory.sae_formats import detect_format, load_sae

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"SAE folder {path} does not exist")
        found: dict[int, tuple[Path, Any]] = {}
        children = sorted(c for c in path.iterdir() if not c.name.startswith("."))
        for child in tqdm(children, desc=f"loading SAEs from {path.name}", disable=not progress, unit="sae"):
            if child.name.startswith("."):
                continue
            try:
                detect_format(child)
            except ValueError:
                continue
            sae = load_sae(child, dtype=dtype, device=device)
            hook = getattr(sae.cfg.metadata, "hook_name", None)
            m = re.match(r"^blocks\.(\d+)\.", hook or "")
            n = re.search(r"(\d+)", child.stem)
            if m:
                layer = int(m.group(1))
            elif n:
                layer = int(n.group(1))
            else:
                raise ValueError(f"cannot tell the layer of {child}: name it layer_<L> or set cfg metadata hook_name")
            if layer in found:
                raise ValueError(f"two SAEs for layer {layer} in {path}: {found[layer][0].name} and {child.name}")
            if layers is not None and layer not in set(layers):
                continue
            if not hook:
                sae.cfg.metadata.hook_name = hook_template.format(layer=layer)
            found[layer] = (child, sae)
        if not found:
            raise ValueError(
                f"no SAEs found in {path}: expected one sub-folder per layer with cfg.json + "
                "sae_weights.safetensors (sae-lens), or params.npz files"
            )
        if layers is not None:
            lost = sorted(set(int(x) for x in layers) - set(found))
            if lost:
                raise ValueError(f"layer(s) {lost} have no SAE in {path} (found layers {_span(sorted(found))})")
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
        hook_template: str = "blocks.{layer}.hook_resid_post",
        model_name: str = "",
        neuronpedia_ids: Mapping[int, str] | None = None,
    ) -> "SAEBank":
        """A bank from Gemma Scope ``params.npz`` files, ``{layer: path}`` (JumpReLU SAEs)."""
        from trajectory.sae_formats import load_sae

        entries = {}
        for layer, p in sorted(paths.items()):
            hook = hook_template.format(layer=int(layer))
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


# ---------------------------------------------------------------------------- reading without torch


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the bank folder ``path`` (plain JSON; needs no torch).

    Raises ``FileNotFoundError`` (run ``trajectory preload``) when there is no bank,
    :class:`CorruptBankError` when the manifest is unreadable or of another format.
    """
    path = Path(path)
    file = path / MANIFEST
    if not path.is_dir():
        raise FileNotFoundError(
            f"no SAE bank at {path}; run `trajectory preload --preset <preset>` first "
            "(e.g. `trajectory preload --preset offline`)"
        )
    if not file.is_file():
        raise FileNotFoundError(
            f"{path} is not a complete SAE bank (no {MANIFEST}); run `trajectory preload` "
            "(with --force to rebuild) first"
        )
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptBankError(f"{file} is not valid JSON ({exc}); rerun `trajectory preload` with --force") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BANK_FORMAT:
        raise CorruptBankError(f"{file} is not a {BANK_FORMAT} manifest; rerun `trajectory preload` with --force")
    if int(manifest.get("version", 0)) > BANK_FORMAT_VERSION:
        raise CorruptBankError(
            f"{file} has format version {manifest.get('version')}, newer than this package reads "
            f"({BANK_FORMAT_VERSION}); upgrade trajectory or rerun `trajectory preload --force`"
        )
    return manifest


def read_explanations(path: str | os.PathLike, layer: int) -> dict[int, str]:
    """Feature index -> explanation text of ``layer`` in the bank at ``path`` ({} if none)."""
    path = Path(path)
    manifest = read_manifest(path)
    m = manifest["layers"].get(str(int(layer)))
    if m is None:
        raise ValueError(f"layer {layer} is not in the SAE bank at {path} (it has layers {_span(sorted(int(k) for k in manifest['layers']))})")
    if not m.get("explanations"):
        return {}
    file = path / m["explanations"]
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptBankError(f"{file} is missing; rerun `trajectory preload` with --force") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptBankError(f"{file} is not valid JSON ({exc}); rerun `trajectory preload` with --force") from None
    return {int(k): str(v) for k, v in data.items()}


def verify_file(file: Path, entry: Mapping[str, Any], *, check_sha256: bool = True) -> None:
    """Check a layer file against its manifest entry (existence, size, sha256, header)."""
    fix = "rerun `trajectory preload` with --force"
    if not file.is_file():
        raise CorruptBankError(f"{file} is missing from the SAE bank; {fix}")
    size = file.stat().st_size
    if size != int(entry["bytes"]):
        raise CorruptBankError(
            f"{file} is {size} bytes but the manifest says {entry['bytes']} (truncated or replaced); {fix}"
        )
    with open(file, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        ok = 0 < n <= size - 8
        if ok:
            try:
                json.loads(fh.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                ok = False
    if not ok:
        raise CorruptBankError(f"{file} has an unparsable safetensors header; {fix}")
    if check_sha256 and _sha256(file) != entry["sha256"]:
        raise CorruptBankError(f"{file} fails its sha256 checksum (corrupted on disk); {fix}")


# ---------------------------------------------------------------------------- memory


def available_memory_bytes(device: str = "cpu") -> int:
    """Memory available for new allocations on ``device`` (bytes).

    CPU: ``MemAvailable`` of ``/proc/meminfo`` (psutil elsewhere); CUDA: free device
    memory. Tests monkeypatch this function.
    """
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover
        return 1 << 62


def estimate_bank_bytes(
    n_layers: int, d_in: int, d_sae: int, *, dtype: str = "float32", architecture: str = "jumprelu"
) -> int:
    """Bytes of ``n_layers`` SAEs: ``W_enc + W_dec + b_enc + b_dec (+ threshold)`` per layer.

    >>> round(estimate_bank_bytes(26, 2304, 65536) / 1e9, 1)  # Gemma Scope 65k, fp32
    31.4
    """
    per = 2 * d_in * d_sae + d_sae + d_in + (d_sae if architecture == "jumprelu" else 0)
    return int(n_layers) * per * _ITEMSIZE[str(dtype).replace("torch.", "")]


def estimate_preset_bytes(preset: Any, n_layers: int, *, dtype: str = "float32") -> int | None:
    """Estimate a hub preset's bank from its SAE id (``width_16k``) and model width; ``None`` if unknown."""
    m = re.search(r"width_(\d+)([km]?)", preset.sae_id_template or "")
    if not m:
        return None
    # Gemma Scope names powers of two in round thousands: 16k = 2**14, 65k = 2**16, 1m = 2**20
    nominal = int(m.group(1)) * {"": 1, "k": 1000, "m": 1000**2}[m.group(2)]
    d_sae = 2 ** round(math.log2(nominal)) if m.group(2) else nominal
    try:
        from transformer_lens.loading_from_pretrained import get_pretrained_model_config

        d_in = int(get_pretrained_model_config(preset.model_name).d_model)
    except Exception:
        return None
    return estimate_bank_bytes(n_layers, d_in, d_sae, dtype=dtype)


def check_memory(nbytes: int, *, what: str, device: str = "cpu") -> None:
    """Raise :class:`BankTooLargeError` when ``nbytes`` exceed available memory (with the fix)."""
    avail = available_memory_bytes(device)
    if nbytes > avail:
        raise BankTooLargeError(
            f"{what} needs {format_bytes(nbytes)} but only {format_bytes(avail)} of memory is available on {device}; "
            "use `--dtype bfloat16` (halves it) or fewer layers (`--layers 0-5`)"
        )


def format_bytes(n: float) -> str:
    """``31.4 GB`` style (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


# ---------------------------------------------------------------------------- small internals


def _sae_nbytes(sae: Any) -> int:
    return sum(t.numel() * t.element_size() for t in sae.state_dict().values())


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as fh:
        while chunk := fh.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    """Plain-JSON copy of configs/metrics (tensors and numpy scalars become numbers)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("trajectory", "sae-lens", "torch", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _span(layers: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts, run = [], []
    for x in sorted(layers):
        if run and x == run[-1] + 1:
            run.append(x)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [x]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts) or "none"


def _is_offline_error(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    return bool(names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout"})


def _meta_model(entries: Mapping[int, BankEntry]) -> str:
    for e in entries.values():
        name = getattr(e.sae.cfg.metadata, "model_name", None)
        if name:
            return str(name)
    return ""

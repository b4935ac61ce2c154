"""Text explanations of SAE features, for graph hovers and plots.

Two sources: the Neuronpedia API (:class:`NeuronpediaClient`, for hub SAEs that have
Neuronpedia pages) and the explanations stored in an SAE bank folder (made by the
package for locally trained SAEs; read with :func:`trajectory.saes.bank_format.read_explanations`).
:func:`explain_features` picks the right one per layer. A missing explanation never
raises: the result simply lacks that key.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

from trajectory.explanations.neuronpedia import NeuronpediaClient

log = logging.getLogger(__name__)


def _preset(name: str | None) -> Any:
    if not name:
        return None
    from trajectory.presets import get_preset

    try:
        return get_preset(name)
    except (KeyError, ValueError):
        return None


def _bank_folder(evo: Any, bank_path: str | os.PathLike | None) -> Path | None:
    if bank_path is not None:
        return Path(bank_path)
    meta = getattr(evo, "metadata", None) or {}
    for key in ("bank", "bank_path"):
        if isinstance(meta.get(key), str) and Path(meta[key]).is_dir():
            return Path(meta[key])
    if getattr(evo, "preset", None):
        from trajectory.io import default_bank_dir

        folder = default_bank_dir(str(evo.preset))
        if folder.is_dir():
            return folder
    return None


def explain_features(
    evo: Any,
    features: Iterable[tuple[int, int]],
    *,
    offline: bool = False,
    neuronpedia_url: str | None = None,
    bank_path: str | os.PathLike | None = None,
    client: NeuronpediaClient | None = None,
    progress: bool = True,
) -> dict[tuple[int, int], str]:
    """Explanations of ``(layer, feature_index)`` pairs of an evolution's SAEs.

    Per layer: the bank's stored explanation when it has one; else Neuronpedia when
    the evolution's preset (``preset.neuronpedia_model`` / ``neuronpedia_source(layer)``)
    or the bank's manifest (``neuronpedia_id = "<model>/<source>"``) names the SAE.
    ``offline`` uses only the Neuronpedia cache. Failures are warnings, never errors.

    Parameters
    ----------
    evo : a :class:`trajectory.evolution.Evolution` (its ``preset`` and ``metadata`` are used).
    features : ``(layer, feature_index)`` pairs.
    neuronpedia_url : the Neuronpedia server; default ``$NEURONPEDIA_URL``, else
        https://www.neuronpedia.org (ignored when ``client`` is given).
    bank_path : the bank folder; default ``metadata["bank"]`` or ``results/banks/<preset>``.
    client : a Neuronpedia client to use (one is made otherwise).

    Returns
    -------
    ``{(layer, feature_index): text}`` for the features that have an explanation.
    """
    wanted = sorted({(int(layer), int(f)) for layer, f in features})
    if not wanted:
        return {}
    folder = _bank_folder(evo, bank_path)
    manifest_layers = _manifest_layers(folder)
    out = _stored_explanations(folder, manifest_layers, wanted)
    ids = _neuronpedia_ids(evo, manifest_layers, sorted({layer for layer, _ in wanted}))
    todo = [(layer, f) for layer, f in wanted if (layer, f) not in out and layer in ids]
    if todo:
        if client is None:
            client = NeuronpediaClient(neuronpedia_url, offline=offline)
        elif offline and not client.offline:
            client = _offline_view(client)
        try:
            got = client.explanations([(*ids[layer], f) for layer, f in todo], progress=progress)
        except Exception as exc:  # noqa: BLE001 -- a graph must render without explanations
            log.warning("Neuronpedia explanations failed (%s); continuing without them", type(exc).__name__)
            got = {}
        out.update({(layer, f): got[(*ids[layer], f)] for layer, f in todo if got.get((*ids[layer], f))})
    return out


def _manifest_layers(folder: Path | None) -> dict[str, Any]:
    """The bank manifest's per-layer records (``{}`` without a readable bank)."""
    if folder is None:
        return {}
    from trajectory.saes.bank_format import read_manifest

    try:
        return read_manifest(folder).get("layers", {}) or {}
    except (OSError, ValueError) as exc:
        log.warning("cannot read the SAE bank at %s (%s); no stored explanations", folder, exc)
        return {}


def _stored_explanations(folder: Path | None, manifest_layers: dict[str, Any],
                         wanted: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """Explanations stored in the bank folder (locally trained SAEs)."""
    from trajectory.saes.bank_format import read_explanations

    out: dict[tuple[int, int], str] = {}
    for layer in sorted({layer for layer, _ in wanted}):
        if folder is None or str(layer) not in manifest_layers:
            continue
        try:
            stored = read_explanations(folder, layer)
        except (OSError, ValueError) as exc:
            log.warning("cannot read the explanations of layer %d in %s (%s)", layer, folder, exc)
            continue
        out.update({(layer, f): stored[f] for lay, f in wanted if lay == layer and stored.get(f)})
    return out


def _neuronpedia_ids(evo: Any, manifest_layers: dict[str, Any], layers: list[int]) -> dict[int, tuple[str, str]]:
    """``{layer: (model id, source)}`` for the layers whose SAE has Neuronpedia pages:
    named by the bank's manifest, else by the evolution's preset."""
    preset = _preset(getattr(evo, "preset", None))
    ids: dict[int, tuple[str, str]] = {}
    for layer in layers:
        np_id = (manifest_layers.get(str(layer)) or {}).get("neuronpedia_id")
        if isinstance(np_id, str) and "/" in np_id:
            model_id, source = np_id.split("/", 1)
            ids[layer] = (model_id, source)
        elif preset is not None and getattr(preset, "neuronpedia_model", None):
            source = preset.neuronpedia_source(layer)
            if source:
                ids[layer] = (preset.neuronpedia_model, source)
    return ids


def _offline_view(client: NeuronpediaClient) -> NeuronpediaClient:
    """A copy of ``client`` that reads only its cache."""
    import copy

    view = copy.copy(client)
    view.offline = True
    return view

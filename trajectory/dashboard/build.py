"""``trajectory dashboard`` as one call: open the model and SAEs, collect, write the pages.

:func:`build_dashboard` takes a :class:`DashboardRequest` (where the SAEs come from: a
preset's bank, a bank folder, or a single SAE file of any supported format), checks
everything it can before the corpus pass (feature ids against each SAE's width, layers
against the bank, the output folder), runs :func:`~trajectory.dashboard.collection.collect`
and writes ``<name>.json`` + ``<name>.html`` per SAE and ``index.html``
(:func:`~trajectory.dashboard.page.write_pages`). Nothing is written when a check fails.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trajectory.dashboard.collection import DashboardConfig, DashboardTarget, collect
from trajectory.hooks import layer_of
from trajectory.io import RESULTS_DIR

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

    from trajectory.dashboard.data import LayerDashboard


@dataclass
class DashboardRequest:
    """What to build: ``features`` (``"0-2047"``; ``None``: all of each SAE) of the SAEs
    of ``layers`` (``None``: all of the bank) from ``bank`` (default: the preset's), or
    of the single SAE at ``sae`` (reading ``hook``, default its own) on ``model``
    (default: the preset's); ``out``: default ``results/dashboard/<preset or model>``."""

    preset: str = "offline"
    layers: list[int] | None = None
    features: str | None = None
    bank: str | None = None
    sae: str | None = None
    model: str | None = None
    hook: str | None = None
    device: str | None = None
    dtype: str | None = None
    corpus: str | None = None
    out: str | None = None
    config: DashboardConfig = field(default_factory=DashboardConfig)


@dataclass
class DashboardResult:
    """The dashboards built and where they went."""

    dashboards: list["LayerDashboard"]
    out: Path
    written: list[Path]


def target_name(hook: str) -> str:
    """Page name of the SAE reading ``hook``: ``layer_06`` for a block's hook, else the hook."""
    layer = layer_of(hook)
    return f"layer_{layer:02d}" if layer is not None else hook.replace(".", "_")


def build_dashboard(request: DashboardRequest, *, progress: bool = True) -> DashboardResult:
    """Build and write the dashboards of ``request``; see :class:`DashboardRequest`."""
    from trajectory.dashboard.page import write_pages
    from trajectory.features.spec import parse_features
    from trajectory.io import check_output_dir

    if request.features is not None:
        parse_features(request.features)  # a bad spec fails before any model loads
    out = Path(request.out or RESULTS_DIR / "dashboard" / _default_name(request))
    check_output_dir(out)
    model, targets = open_targets(request)
    check_output_dir(out, [n for t in targets for n in (f"{t.name}.json", f"{t.name}.html")] + ["index.html"])
    # feature ids beyond an SAE's width and an empty corpus fail inside collect, before the pass
    dashboards = collect(model, targets, request.features, request.corpus, config=request.config, progress=progress)
    return DashboardResult(dashboards, out, write_pages(dashboards, out))


def open_targets(request: DashboardRequest) -> tuple["HookedTransformer", list[DashboardTarget]]:
    """The model and the :class:`DashboardTarget` of every SAE ``request`` names."""
    from trajectory.model.load import default_device, load_model
    from trajectory.presets import get_preset

    preset = get_preset(request.preset)
    device = request.device or default_device()
    if request.sae:
        from trajectory.features.analyse import open_feature_sae

        layer = request.layers[0] if request.layers else None
        if request.layers and len(request.layers) > 1:
            raise ValueError("--sae is one SAE: pass at most one --layers value (or --hook)")
        one = open_feature_sae(preset=request.preset, layer=layer, model=request.model, sae=request.sae,
                               hook=request.hook, device=device, dtype=request.dtype)
        return one.model, [DashboardTarget(target_name(one.hook), one.sae, one.hook, layer_of(one.hook))]
    from trajectory.pipeline import open_bank

    for layer in request.layers or []:
        preset.check_layer(layer, "--layers")
    bank = open_bank(preset.name, request.bank, layers=request.layers, device=device, dtype=request.dtype)
    model = load_model(request.model or preset.name, device=device)
    targets = [DashboardTarget(target_name(bank.hook_name(x)), bank[x], bank.hook_name(x), x,
                               dict(bank.entry(x).explanations)) for x in bank.layers]
    return model, targets


def _default_name(request: DashboardRequest) -> str:
    return request.preset if request.model is None else Path(str(request.model)).name.replace("/", "_")

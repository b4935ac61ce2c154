"""The three stages as plain functions — what the ``trajectory`` command runs.

::

    preload_bank(PreloadConfig)            stage 1: an SAE bank folder (trained, hub or local SAEs;
                                           in :mod:`trajectory.saes.preload`)
    open_bank(preset, folder) ─► SAEBank
    run_evolve(EvolveConfig, prompt(s))    stage 2: one evolution file per prompt
    write_graph_outputs(evo, out, GraphConfig)
                                           stage 3: graph files, pictures, evolution plots

The feature analyses' orchestration (one SAE, real / synthetic / compare) is in
:mod:`trajectory.features.analyse`.

Each function takes explicit paths and settings and returns what it wrote; the CLI
modules only parse arguments, call these and print. Defaults under ``results/`` come
from :mod:`trajectory.io` and are applied here, at the edge, never deeper.
"""
from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from trajectory.io import RESULTS_DIR, default_bank_dir

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

    from trajectory.evolution.distributed import RayOptions
    from trajectory.evolution.result import Evolution
    from trajectory.saes.bank import SAEBank

log = logging.getLogger(__name__)

#: The sentence the original research code used (and the README's main command).
ORIGINAL_PROMPT = (
    "The final correct answer: Max, Mark and Smith are in the empty dark room. Smith left. Mark gave flashlight to"
)
#: Every graph output format, in the order they are made.
GRAPH_FORMATS = ("png", "html", "graphml", "gexf", "json")


# ----------------------------------------------------------------------------- stage 1
def open_bank(preset_name: str, bank_dir: str | Path | None = None, *, layers=None, device=None, dtype=None
              ) -> "SAEBank":
    """The SAE bank for ``preset_name``: the preloaded folder (``bank_dir``, default
    ``results/banks/<preset>``), else — hub presets — straight from sae-lens.

    Raises ``FileNotFoundError`` telling to run ``trajectory preload`` when neither works.
    """
    from trajectory.presets import get_preset
    from trajectory.saes.bank import SAEBank

    preset = get_preset(preset_name)
    folder = Path(bank_dir) if bank_dir else default_bank_dir(preset.name)
    if folder.exists():
        kwargs = {k: v for k, v in dict(device=device, dtype=dtype).items() if v is not None}
        return SAEBank.open(folder, layers=layers, **kwargs)
    if bank_dir is None and preset.sae_release:
        return SAEBank.from_preset(preset.name, layers=layers)
    raise FileNotFoundError(
        f"no SAE bank at {folder}; run `trajectory preload --preset {preset.name}` first"
        + ("" if bank_dir is None else " (or pass the folder it wrote with --bank)")
    )


# ----------------------------------------------------------------------------- stage 2
@dataclass
class EvolveConfig:
    """Settings of stage 2 (see :func:`trajectory.evolution.engine.evolve` for the method ones).

    ``batch_size``: prompts per forward pass for a prompt set (:func:`evolve_many`);
    ``encode_batch_size``: step rows per SAE-encode batch (``evolve``'s ``batch_size``).
    """

    preset: str = "offline"
    bank: str | None = None
    dtype: str | None = None
    device: str | None = None
    k: int = 400
    layers: list[int] | None = None
    max_tokens: int | None = 128
    postnorm: str = "per_partial_sum"
    method: str = "auto"
    batch_size: int | None = None
    encode_batch_size: int | None = None
    max_rows: int | None = 1_000_000
    allow_other_model: bool = False

    def engine_options(self, device: str) -> dict[str, Any]:
        """The keyword arguments of ``evolve`` / ``evolve_many``."""
        return dict(k=self.k, layers=self.layers, max_tokens=self.max_tokens, postnorm=self.postnorm,
                    device=device, batch_size=self.encode_batch_size, method=self.method, preset=self.preset,
                    max_rows=self.max_rows, allow_other_model=self.allow_other_model)


@dataclass
class EvolveResult:
    """Files written by :func:`run_evolve`; ``evolution`` for a single prompt."""

    paths: list[Path]
    out: Path
    evolution: "Evolution | None" = None
    index: Path | None = None


def prompt_slug(prompt: str, *, words: int = 6, length: int = 40) -> str:
    """A folder name for a prompt: its first words (letters, digits, ``-``) and a short
    hash of the whole text, e.g. ``mark-gave-flashlight-to-3f2a9c1e``."""
    import hashlib

    text = re.sub(r"[^a-z0-9]+", "-", " ".join(prompt.lower().split()[:words])).strip("-")[:length].strip("-")
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8]
    return f"{text}-{digest}" if text else digest


def default_evolve_out(preset: str, prompt: str | None = None) -> Path:
    """``results/<preset>/<prompt slug>/evolution.safetensors`` for one prompt (so a new
    prompt never replaces another's file or leaves it a stale graph), or
    ``results/<preset>/evolutions/`` for a prompt file (``prompt=None``)."""
    if prompt is None:
        return RESULTS_DIR / preset / "evolutions"
    return RESULTS_DIR / preset / prompt_slug(prompt) / "evolution.safetensors"


def _check_replace(path: Path, prompt: str, overwrite: bool) -> None:
    """Refuse to replace the evolution of another prompt at ``path`` unless ``overwrite``."""
    if overwrite or not path.is_file():
        return
    from trajectory.evolution.result import Evolution

    try:
        old = Evolution.load(path).metadata.get("prompt")
    except (OSError, ValueError):
        old = None  # unreadable: not an evolution we would lose
    if old is not None and old != prompt:
        raise ValueError(f"{path} holds the evolution of another prompt ({old[:60]!r}); pass --overwrite to "
                         "replace it, or another --out (by default each prompt gets its own folder)")


def read_prompts(path: str | Path) -> list[str]:
    """Non-empty lines of a prompt file; a clear error when there are none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} has no non-empty lines")
    return prompts


def load_stage_inputs(config: EvolveConfig) -> tuple["HookedTransformer", "SAEBank", str]:
    """The model, the SAE bank and the device for stage 2 (the bank first: it fails fast)."""
    from trajectory.model.load import default_device, load_model

    device = config.device or default_device()
    bank = open_bank(config.preset, config.bank, layers=config.layers, dtype=config.dtype)
    return load_model(config.preset, device=device), bank, device


def run_evolve(config: EvolveConfig, *, prompt: str | None = None, prompts: Sequence[str] | None = None,
               out: str | Path | None = None, overwrite: bool = False, progress: bool = True,
               inputs: tuple | None = None, ray: "RayOptions | None" = None) -> EvolveResult:
    """Stage 2 for one ``prompt`` (one file at ``out``) or many ``prompts`` (a folder with
    one file per prompt and ``index.json``; reruns skip finished prompts).

    ``inputs``: an already loaded ``(model, bank, device)`` (see :func:`load_stage_inputs`).
    ``ray``: evolve the prompts on a Ray cluster (:mod:`trajectory.evolution.distributed`;
    the driver loads no model, ``inputs`` is not used).
    """
    from trajectory.presets import get_preset

    from trajectory.io import check_output_dir, check_output_file, clean_stale_temp_files

    get_preset(config.preset)  # an unknown preset fails before anything loads
    if prompt is not None and prompts is not None:
        raise ValueError("pass either --prompt or --prompt-file, not both")
    if ray is not None and prompts is None:
        raise ValueError("--ray runs a prompt set: pass --prompt-file")
    if prompts is not None:
        target = check_output_dir(out or default_evolve_out(config.preset), ["index.json"])
    else:
        prompt = ORIGINAL_PROMPT if prompt is None else prompt
        target = check_output_file(out or default_evolve_out(config.preset, prompt), "evolution file")
        _check_replace(target, prompt, overwrite)
    clean_stale_temp_files(target if prompts is not None else target.parent)
    if ray is not None:
        from trajectory.evolution.distributed import WorkerSpec, evolve_many_ray

        paths = evolve_many_ray(WorkerSpec(config), list(prompts), target, options=ray, batch_size=config.batch_size,
                                overwrite=overwrite, progress=progress)
        return EvolveResult([Path(p) for p in paths], target, index=target / "index.json")
    model, bank, device = inputs or load_stage_inputs(config)
    options = config.engine_options(device)
    if prompts is not None:
        from trajectory.evolution.batch import evolve_many

        options["encode_batch_size"] = options.pop("batch_size")
        paths = evolve_many(model, bank, list(prompts), target, overwrite=overwrite, progress=progress,
                            batch_size=config.batch_size, **options)
        return EvolveResult([Path(p) for p in paths], target, index=target / "index.json")
    from trajectory.evolution.engine import evolve

    evo = evolve(model, bank, prompt, progress=progress, **options)
    evo.save(target)
    return EvolveResult([target], target, evolution=evo)


# ----------------------------------------------------------------------------- stage 3
@dataclass
class GraphConfig:
    """Settings of stage 3: which newcomers (``T``, ``through``), which outputs, which explanations.

    ``dashboard``: a feature dashboard folder (``trajectory dashboard --out``); the HTML
    pages' click panels then link every feature id to its card there (relative links,
    :mod:`trajectory.render.feature_links`); ``None``: no links."""

    formats: Sequence[str] = GRAPH_FORMATS
    T: int = 22
    through: str = "attention"
    include_bos: bool = False
    explanations: bool = True
    offline: bool = False
    neuronpedia_url: str | None = None
    bank: str | Path | None = None
    evolution_plots: bool = False
    name: str = "graph"
    plotly_js: str = "directory"
    causal: bool = False
    min_kl: float | None = None
    edge_width: str = "trajectories"
    device: str | None = None
    dashboard: str | Path | None = None

    def __post_init__(self) -> None:
        self.formats = parse_formats(self.formats)


@dataclass
class GraphOutputs:
    """What :func:`write_graph_outputs` made: the graph, how many features got an
    explanation, the path of each format, and the evolution plots."""

    graph: Any
    explained: int
    paths: dict[str, Path] = field(default_factory=dict)
    evolution_plots: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def parse_formats(formats: str | Sequence[str]) -> list[str]:
    """``"png, json"`` (or a list) -> ``["png", "json"]``; a clear error for unknown formats."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    parsed = [f.strip().lower().lstrip(".") for f in items if f.strip()]
    bad = [f for f in parsed if f not in GRAPH_FORMATS]
    if bad or not parsed:
        raise ValueError(f"unknown output format(s) {bad or formats!r}; choose among {','.join(GRAPH_FORMATS)}")
    return list(dict.fromkeys(parsed))


def latest_evolution(root: str | Path = RESULTS_DIR) -> Path:
    """The most recently written ``evolution.safetensors`` below ``root`` (what ``trajectory
    graph`` draws when no file is named); a clear error when there is none."""
    found = sorted(Path(root).glob("*/**/evolution.safetensors"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no evolution file under {root}/; run `trajectory evolve` first, or name the file: "
                                "`trajectory graph FILE`")
    return found[-1]


def default_graph_out(evolution_path: str | Path) -> Path:
    """The ``graph`` folder beside an evolution file."""
    return Path(evolution_path).resolve().parent / "graph"


def graph_explanations(evo: "Evolution", features, *, offline: bool, bank_path=None, neuronpedia_url=None
                       ) -> dict[tuple[int, int], str]:
    """Explanations of ``(layer, feature)`` pairs; ``{}`` with a warning when they cannot
    be had (network down, no bank, ...): a graph always renders."""
    features = list(features)
    if not features:
        return {}
    try:
        from trajectory.explanations.lookup import explain_features

        return dict(explain_features(evo, features, offline=offline, bank_path=bank_path,
                                     neuronpedia_url=neuronpedia_url) or {})
    except Exception as exc:  # noqa: BLE001 - any failure here must not stop the graph
        warnings.warn(f"no feature explanations ({type(exc).__name__}: {exc}); rendering without them", stacklevel=2)
        return {}


def write_graph_outputs(evo: "Evolution", out: str | Path, config: GraphConfig | None = None) -> GraphOutputs:
    """Stage 3: build, explain, export and render the trajectory graph of ``evo`` into ``out``."""
    from trajectory.graph.build import attach_explanations, graph_features, trajectory_graph
    from trajectory.graph.export import export_graph

    from trajectory.io import check_output_dir, clean_stale_temp_files

    config = config or GraphConfig()
    out = check_output_dir(out, [f"{config.name}.{fmt}" for fmt in config.formats])
    for folder in (out, out / "evolution"):
        clean_stale_temp_files(folder)
    _dashboard_links(config, None, evo)  # a missing dashboard folder fails before any work
    g = trajectory_graph(evo, T=config.T, through=config.through, include_bos=config.include_bos)
    if config.causal:
        causal_edges(evo, g, bank=config.bank, device=config.device, min_kl=config.min_kl)
    if config.edge_width != "trajectories":
        if config.edge_width != "knockout_kl" or not config.causal:
            raise ValueError(f"edge width {config.edge_width!r}: use 'trajectories', or 'knockout_kl' with --causal")
        g.graph["edge_width"] = "knockout_kl"  # read by the renderers
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = {}
        if config.explanations:
            texts = graph_explanations(evo, graph_features(g), offline=config.offline, bank_path=config.bank,
                                       neuronpedia_url=config.neuronpedia_url)
            attach_explanations(g, texts)
    result = GraphOutputs(g, sum(1 for v in texts.values() if v), warnings=[str(w.message) for w in caught])
    links = _dashboard_links(config, g, evo)
    for fmt in config.formats:
        path = out / f"{config.name}.{fmt}"
        if fmt == "png":
            from trajectory.render import render_png

            result.paths[fmt] = render_png(g, path)
        elif fmt == "html":
            from trajectory.render import render_html

            result.paths[fmt] = render_html(g, path, plotly_js=config.plotly_js, dashboard=links)
        else:
            result.paths[fmt] = export_graph(g, path)
    if config.evolution_plots:
        result.evolution_plots = _evolution_plots(evo, out / "evolution", config, texts, links)
    return result


def _dashboard_links(config: GraphConfig, g, evo: "Evolution"):
    """``config.dashboard`` opened once for the graph page and the evolution pages
    (``None`` without a dashboard or an HTML format): only checks the folder when ``g`` is
    ``None``; with ``g``, looks for the pages of the layers they show and warns (log)
    about missing pages and cards."""
    if config.dashboard is None or "html" not in config.formats:
        return None
    from trajectory.render.feature_links import DashboardLinks, graph_feature_layers

    if g is None:
        return DashboardLinks.open(config.dashboard, [])
    wanted = graph_feature_layers(g)
    links = DashboardLinks.open(config.dashboard, set(wanted) | (set(evo.layers) if config.evolution_plots else set()))
    links.warn_unlinked(wanted)
    return links


def causal_edges(evo: "Evolution", g, *, bank=None, device: str | None = None, min_kl: float | None = None):
    """Annotate every edge of ``g`` with its knock-out and ablation effects
    (:func:`trajectory.interventions.edge_effects`; loads the evolution's model and bank),
    then drop the edges whose ``knockout_kl`` is below ``min_kl``. Returns ``g``."""
    from trajectory.interventions.knockout import edge_effects
    from trajectory.model.load import default_device, load_model

    if not evo.preset:
        raise ValueError("--causal needs the evolution's preset to load its model; this file records none")
    folder = bank or (evo.metadata.get("bank") if isinstance(evo.metadata.get("bank"), str) else None)
    saes = open_bank(evo.preset, folder, layers=evo.layers)
    edge_effects(load_model(evo.preset, device=device or default_device()), saes, evo, g, progress=True)
    if min_kl is not None:
        g.remove_edges_from([(u, v) for u, v, d in g.edges(data=True) if d.get("knockout_kl", 0.0) < min_kl])
    return g


def _evolution_plots(evo: "Evolution", folder: Path, config: GraphConfig, texts, links=None) -> list[Path]:
    """The evolution plot of the full prompt at every layer, PNG and/or HTML per the formats."""
    from tqdm.auto import tqdm

    kinds = [f for f in ("png", "html") if f in config.formats]
    if not kinds:
        return []
    from trajectory.render import evolution_plot_html, evolution_plot_png

    # the evolution pages share the graph folder's copy of plotly.js
    page = dict(plotly_js=folder.parent / "plotly.min.js" if config.plotly_js == "directory" else config.plotly_js,
                dashboard=links)
    paths = []
    for layer in tqdm(evo.layers, desc="evolution plots", unit="layer"):
        by_feature = {f: t for (L, f), t in texts.items() if L == layer and t}
        for kind in kinds:
            draw = evolution_plot_png if kind == "png" else evolution_plot_html
            paths.append(draw(evo, layer, evo.n_tokens, folder / f"layer_{layer:02d}.{kind}", T=config.T,
                              through=config.through, explanations=by_feature, **(page if kind == "html" else {})))
    return paths

"""The three stages as plain functions — what the ``trajectory`` command runs.

::

    preload_bank(PreloadConfig)            stage 1: an SAE bank folder (trained, hub or local SAEs)
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

from trajectory.hooks import RESID_POST_TEMPLATE
from trajectory.io import RESULTS_DIR, default_bank_dir

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

    from trajectory.evolution.result import Evolution
    from trajectory.saes.bank import SAEBank
    from trajectory.training.config import TrainConfig

log = logging.getLogger(__name__)

#: The sentence the original research code used (and the README's main command).
ORIGINAL_PROMPT = (
    "The final correct answer: Max, Mark and Smith are in the empty dark room. Smith left. Mark gave flashlight to"
)
#: Every graph output format, in the order they are made.
GRAPH_FORMATS = ("png", "html", "graphml", "gexf", "json")


# ----------------------------------------------------------------------------- stage 1
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

    log.info("training SAEs for layer(s) %s of %s (bank: %s)", format_layers(todo), preset.model_name, out)
    model = load_model(preset.name, device=device)
    bank = train_bank(model, config.training or TrainConfig(), layers=todo, device=device, progress=progress)
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
    """Settings of stage 2 (see :func:`trajectory.evolution.engine.evolve` for the method ones)."""

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
    max_rows: int | None = 1_000_000
    allow_other_model: bool = False

    def engine_options(self, device: str) -> dict[str, Any]:
        """The keyword arguments of ``evolve`` / ``evolve_many``."""
        return dict(k=self.k, layers=self.layers, max_tokens=self.max_tokens, postnorm=self.postnorm,
                    device=device, batch_size=self.batch_size, method=self.method, preset=self.preset,
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
               inputs: tuple | None = None) -> EvolveResult:
    """Stage 2 for one ``prompt`` (one file at ``out``) or many ``prompts`` (a folder with
    one file per prompt and ``index.json``; reruns skip finished prompts).

    ``inputs``: an already loaded ``(model, bank, device)`` (see :func:`load_stage_inputs`).
    """
    from trajectory.presets import get_preset

    from trajectory.io import check_output_dir, check_output_file, clean_stale_temp_files

    get_preset(config.preset)  # an unknown preset fails before anything loads
    if prompt is not None and prompts is not None:
        raise ValueError("pass either --prompt or --prompt-file, not both")
    if prompts is not None:
        target = check_output_dir(out or default_evolve_out(config.preset), ["index.json"])
    else:
        prompt = ORIGINAL_PROMPT if prompt is None else prompt
        target = check_output_file(out or default_evolve_out(config.preset, prompt), "evolution file")
        _check_replace(target, prompt, overwrite)
    clean_stale_temp_files(target if prompts is not None else target.parent)
    model, bank, device = inputs or load_stage_inputs(config)
    options = config.engine_options(device)
    if prompts is not None:
        from trajectory.evolution.batch import evolve_many

        paths = evolve_many(model, bank, list(prompts), target, overwrite=overwrite, progress=progress, **options)
        return EvolveResult([Path(p) for p in paths], target, index=target / "index.json")
    from trajectory.evolution.engine import evolve

    evo = evolve(model, bank, prompt, progress=progress, **options)
    evo.save(target)
    return EvolveResult([target], target, evolution=evo)


# ----------------------------------------------------------------------------- stage 3
@dataclass
class GraphConfig:
    """Settings of stage 3: which newcomers (``T``, ``through``), which outputs, which explanations."""

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
    g = trajectory_graph(evo, T=config.T, through=config.through, include_bos=config.include_bos)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = {}
        if config.explanations:
            texts = graph_explanations(evo, graph_features(g), offline=config.offline, bank_path=config.bank,
                                       neuronpedia_url=config.neuronpedia_url)
            attach_explanations(g, texts)
    result = GraphOutputs(g, sum(1 for v in texts.values() if v), warnings=[str(w.message) for w in caught])
    for fmt in config.formats:
        path = out / f"{config.name}.{fmt}"
        if fmt == "png":
            from trajectory.render import render_png

            result.paths[fmt] = render_png(g, path)
        elif fmt == "html":
            from trajectory.render import render_html

            result.paths[fmt] = render_html(g, path, plotly_js=config.plotly_js)
        else:
            result.paths[fmt] = export_graph(g, path)
    if config.evolution_plots:
        result.evolution_plots = _evolution_plots(evo, out / "evolution", config, texts)
    return result


def _evolution_plots(evo: "Evolution", folder: Path, config: GraphConfig, texts) -> list[Path]:
    """The evolution plot of the full prompt at every layer, PNG and/or HTML per the formats."""
    from tqdm.auto import tqdm

    kinds = [f for f in ("png", "html") if f in config.formats]
    if not kinds:
        return []
    from trajectory.render import evolution_plot_html, evolution_plot_png

    # the evolution pages share the graph folder's copy of plotly.js
    page = dict(plotly_js=folder.parent / "plotly.min.js" if config.plotly_js == "directory" else config.plotly_js)
    paths = []
    for layer in tqdm(evo.layers, desc="evolution plots", unit="layer"):
        by_feature = {f: t for (L, f), t in texts.items() if L == layer and t}
        for kind in kinds:
            draw = evolution_plot_png if kind == "png" else evolution_plot_html
            paths.append(draw(evo, layer, evo.n_tokens, folder / f"layer_{layer:02d}.{kind}", T=config.T,
                              through=config.through, explanations=by_feature, **(page if kind == "html" else {})))
    return paths

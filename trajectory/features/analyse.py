"""The feature analyses as one call: ``trajectory real | synthetic | compare``.

:func:`open_feature_sae` resolves the model and the one SAE (a bank layer or a single
SAE file); :func:`analyse_features` runs the real and/or synthetic analysis, compares
them and writes the JSON reports and PNGs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trajectory.hooks import layer_of
from trajectory.io import RESULTS_DIR, default_bank_dir

if TYPE_CHECKING:  # pragma: no cover
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


@dataclass
class FeatureSAE:
    """The model and the one SAE a feature analysis runs on, the hook it reads, and the
    default output folder ``results/analysis/<preset or model>/layer_<L>``."""

    model: "HookedTransformer"
    sae: "SAE"
    hook: str
    default_out: Path


def open_feature_sae(*, preset: str = "offline", layer: int | None = None, model: str | None = None,
                     sae: str | None = None, hook: str | None = None, bank: str | None = None,
                     device: str | None = None, dtype: str | None = None) -> FeatureSAE:
    """Model + SAE for ``trajectory real|synthetic|compare``: a single SAE file/folder
    (``sae``) or layer ``layer`` of the preset's bank; the preset's model unless ``model``."""
    from trajectory.model.load import default_device, load_model
    from trajectory.presets import get_preset
    from trajectory.saes.formats import check_sae_fits

    p = get_preset(preset)
    device = device or default_device()
    if layer is not None and model is None:
        p.check_layer(layer, "--layer")
    if sae is None and layer is None:
        raise ValueError("pass --layer (which layer's SAE to analyse), or a single SAE with --sae")
    lm = load_model(model or p.name, device=device)
    if sae:
        the_sae, hook = _single_sae(sae, hook, p, layer, model, device, dtype)
        what = f"the SAE in {sae}"
    else:
        folder = Path(bank) if bank else default_bank_dir(p.name)
        if not folder.exists() and not (bank is None and p.sae_release):
            raise FileNotFoundError(
                f"no SAE bank at {folder}; run `trajectory preload --preset {p.name} --layers {layer}` first, "
                "or pass --bank FOLDER or a single SAE with --sae PATH")
        from trajectory.pipeline import open_bank

        saes = open_bank(p.name, bank, layers=[layer], device=device, dtype=dtype)
        the_sae, hook = saes[layer], hook or saes.hook_name(layer)
        what = f"the bank's SAE of layer {layer}"
    check_sae_fits(the_sae, lm, hook, what=what)
    at = layer_of(hook)
    where = f"layer_{at}" if at is not None else hook.replace(".", "_")
    name = p.name if model is None else Path(str(model)).name.replace("/", "_")
    return FeatureSAE(lm, the_sae, hook, RESULTS_DIR / "analysis" / name / where)


def _single_sae(path: str, hook: str | None, preset, layer: int | None, model: str | None, device: str,
                dtype: str | None):
    """(sae, hook) for ``--sae PATH``: the hook from ``--hook``, the preset, ``--layer`` or the file."""
    from trajectory.hooks import resid_post
    from trajectory.saes.formats import load_sae

    if hook is None and layer is not None:
        hook = preset.hook_name(layer) if model is None else resid_post(layer)
    sae = load_sae(path, dtype=dtype or "float32", device=device, hook_name=hook)
    hook = hook or getattr(sae.cfg.metadata, "hook_name", None)
    if not hook:
        raise ValueError(f"{path} does not say which hook it reads; pass --hook (e.g. blocks.6.hook_resid_post) "
                         "or --layer")
    return sae, hook


@dataclass
class FeatureRequest:
    """What ``trajectory real|synthetic|compare`` asks for: the mode, the feature set
    (``"0-10,50"``), the options of :func:`trajectory.features.real` / ``synthetic``
    (``real_options`` holds ``corpus`` too), reports to reuse instead of recomputing,
    and ``vocab_from_corpus`` (search only tokens of that corpus; ``"default"`` = the
    offline corpus)."""

    mode: str
    features: str
    plots: bool = True
    real_report: str | None = None
    synthetic_report: str | None = None
    real_options: dict[str, Any] = field(default_factory=dict)
    synthetic_options: dict[str, Any] = field(default_factory=dict)
    vocab_from_corpus: str | None = None


@dataclass
class FeatureAnalysis:
    """Reports made (or reused) by :func:`analyse_features` and the files written."""

    written: list[Path] = field(default_factory=list)
    real: Any = None
    synthetic: Any = None
    comparison: Any = None


def corpus_vocabulary(model: "HookedTransformer", spec: str) -> list[int]:
    """Token ids that occur in a corpus (``"default"`` = the offline corpus), specials left out."""
    from trajectory.features.real_activations import corpus_tokens

    special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    ids = corpus_tokens(model, None if spec == "default" else spec, context_length=32)[1].unique().tolist()
    return [i for i in ids if i not in special]


def analyse_features(target: FeatureSAE, request: FeatureRequest, out: str | Path, *, progress: bool = True
                     ) -> FeatureAnalysis:
    """The real and/or synthetic analysis of ``request.features`` on ``target``, their
    comparison (mode ``compare``), JSON reports and PNGs in ``out``."""
    from trajectory.features import FeatureReport, compare, real, render_comparison, render_real, render_synthetic
    from trajectory.features import synthetic

    from trajectory.io import check_output_dir

    out = check_output_dir(out, ["real_report.json", "synthetic_report.json", "comparison.json"])
    done = FeatureAnalysis()
    model, sae, hook = target.model, target.sae, target.hook
    if request.mode in ("real", "compare"):
        if request.real_report and request.mode == "compare":
            done.real = FeatureReport.load(request.real_report)
        else:
            options = dict(request.real_options)
            corpus = options.pop("corpus", None)
            done.real = real(model, sae, request.features, corpus, hook_name=hook, progress=progress, **options)
            done.written.append(done.real.save(out / "real_report.json"))
        if request.plots:
            done.written += render_real(done.real, out)
    if request.mode in ("synthetic", "compare"):
        if request.synthetic_report:
            done.synthetic = FeatureReport.load(request.synthetic_report)
        else:
            vocab = corpus_vocabulary(model, request.vocab_from_corpus) if request.vocab_from_corpus else None
            best = done.real or (FeatureReport.load(request.real_report) if request.real_report else None)
            done.synthetic = synthetic(model, sae, request.features, hook_name=hook, vocab=vocab, best_real=best,
                                       progress=progress, **request.synthetic_options)
            done.written.append(done.synthetic.save(out / "synthetic_report.json"))
        if request.plots:
            done.written += render_synthetic(done.synthetic, out)
    if request.mode == "compare":
        done.comparison = compare(done.real, done.synthetic)
        done.written.append(done.comparison.save(out / "comparison.json"))
        if request.plots:
            done.written += render_comparison(done.comparison, out)
    return done

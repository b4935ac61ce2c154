"""``trajectory real | synthetic | compare``: characterise single SAE features.

Examples::

    trajectory real --preset offline --layer 6 --features 0-10,50-60
    trajectory real --preset offline --layer 6 --features 0-10 --corpus my.txt --max-examples 30
    trajectory synthetic --preset offline --layer 6 --features 0,1,2 --n-steps 300
    trajectory compare --preset offline --layer 6 --features 0-10
    trajectory real --model gpt2 --sae path/to/params.npz --hook blocks.6.hook_resid_post --features 0-5

Outputs (default ``results/analysis/<preset or model>/layer_<L>/``): ``real_report.json``,
``synthetic_report.json``, ``comparison.json`` and the PNGs of
:mod:`trajectory.analysis.visualize`.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, help="features, e.g. 0,5,10 or 0-20 or 0-10,50-60")
    p.add_argument("--preset", default="offline", help="model + SAE preset (default: offline; see `trajectory presets`)")
    p.add_argument("--layer", type=int, default=None, help="layer whose SAE is analysed (required unless --sae names its hook)")
    p.add_argument("--model", default=None, help="TransformerLens model name or local folder instead of the preset's model")
    p.add_argument("--sae", default=None, help="a single SAE file/folder of any supported format instead of the preset's bank")
    p.add_argument("--hook", default=None, help="hook the SAE reads (default: the SAE's own, else the preset's for --layer)")
    p.add_argument("--bank", default=None, help="SAE bank folder (default: results/banks/<preset>)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="SAE dtype, e.g. float32 (default: as stored)")
    p.add_argument("--output", default=None, help="output folder (default: results/analysis/<preset or model>/layer_<L>)")
    p.add_argument("--no-plots", action="store_true", help="write the JSON reports only")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _real_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", default=None, help="text file, folder of .txt/.md, or hf:<dataset> (default: the offline stdlib-docs corpus)")
    p.add_argument("--max-examples", type=int, default=20, help="top-activating contexts kept per feature (default: 20)")
    p.add_argument("--batch-size", type=int, default=16, help="chunks per forward pass (default: 16)")
    p.add_argument("--context-length", type=int, default=128, help="tokens per chunk, BOS included (default: 128)")
    p.add_argument("--max-tokens", type=int, default=None, help="scan at most this many corpus tokens (default: all)")
    p.add_argument("--include-bos", action="store_true", help="count BOS positions too (default: excluded)")


def _synthetic_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-steps", type=int, default=150, help="optimisation steps per feature (default: 150)")
    p.add_argument("--seq-len", type=int, default=8, help="optimised tokens per sequence, after BOS (default: 8)")
    p.add_argument("--learning-rate", type=float, default=0.1, help="Adam step size on the vocabulary logits (default: 0.1)")
    p.add_argument("--restarts", type=int, default=3, help="random restarts, optimised as one batch (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--vocab-from-corpus", default=None, metavar="CORPUS",
                   help="search only tokens that occur in this corpus ('default' = the offline corpus); "
                   "much faster with large vocabularies such as Gemma's 262k (default: all non-special tokens)")


def register(sub) -> None:
    p = sub.add_parser("real", help="features on real text: top contexts, density, histogram, logit effects",
                       description="Scan a corpus through the model and one layer's SAE; per feature: top-activating "
                       "contexts, density, mean/max, histogram, decoder norm, logit effects; PNGs + real_report.json.")
    _common(p)
    _real_args(p)
    p.set_defaults(func=run, analysis_mode="real")

    p = sub.add_parser("synthetic", help="features on optimised inputs: token sequences that maximise them",
                       description="Gradient search in embedding space (softmax relaxation over the vocabulary, "
                       "annealed, projected to real tokens); reports the projected sequence's real activation.")
    _common(p)
    _synthetic_args(p)
    p.add_argument("--real-report", default=None, help="a real_report.json to compare each feature with its best real activation")
    p.set_defaults(func=run, analysis_mode="synthetic")

    p = sub.add_parser("compare", help="real vs synthetic activations per feature and in summary",
                       description="Run (or reuse) the real and synthetic analyses of the same features and compare "
                       "the synthetic activation with the best real one.")
    _common(p)
    _real_args(p)
    _synthetic_args(p)
    p.add_argument("--real-report", default=None, help="reuse this real_report.json instead of scanning")
    p.add_argument("--synthetic-report", default=None, help="reuse this synthetic_report.json instead of optimising")
    p.set_defaults(func=run, analysis_mode="compare")


def _resolve(args):
    """(model, sae, hook_name, output folder) from the arguments."""
    import torch

    from trajectory.io import RESULTS_DIR
    from trajectory.models import load_model
    from trajectory.presets import get_preset

    preset = get_preset(args.preset)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.layer is not None and args.model is None:
        preset.check_layer(args.layer)
    model = load_model(args.model or preset.name, device=device)
    if args.sae:
        from trajectory.sae_formats import check_sae_fits, load_sae

        hook = args.hook or (preset.hook_name(args.layer) if args.layer is not None and args.model is None else None)
        if hook is None and args.layer is not None:
            hook = f"blocks.{args.layer}.hook_resid_post"
        sae = load_sae(args.sae, dtype=args.dtype or "float32", device=device, hook_name=hook)
        hook = hook or getattr(sae.cfg.metadata, "hook_name", None)
        if not hook:
            raise ValueError(f"{args.sae} does not say which hook it reads; pass --hook (e.g. blocks.6.hook_resid_post) or --layer")
        check_sae_fits(sae, model, hook, what=f"the SAE in {args.sae}")
    else:
        if args.layer is None:
            raise ValueError("pass --layer (which layer's SAE to analyse), or a single SAE with --sae")
        from trajectory.sae_bank import SAEBank

        folder = Path(args.bank) if args.bank else RESULTS_DIR / "banks" / preset.name
        kwargs = {"layers": [args.layer], "device": device}
        if args.dtype:
            kwargs["dtype"] = args.dtype
        if folder.exists():
            bank = SAEBank.open(folder, **kwargs)
        elif args.bank is None and preset.sae_release and hasattr(SAEBank, "from_preset"):
            bank = SAEBank.from_preset(preset.name, layers=[args.layer])
        else:
            raise FileNotFoundError(
                f"no SAE bank at {folder}; run `trajectory preload --preset {preset.name} --layers {args.layer}` first, "
                "or pass --bank FOLDER or a single SAE with --sae PATH"
            )
        sae, hook = bank[args.layer], args.hook or bank.hook_name(args.layer)
        from trajectory.sae_formats import check_sae_fits

        check_sae_fits(sae, model, hook, what=f"the bank's SAE of layer {args.layer}")
    m = re.match(r"^blocks\.(\d+)\.", hook)
    where = f"layer_{m.group(1)}" if m else hook.replace(".", "_")
    name = preset.name if args.model is None else Path(str(args.model)).name.replace("/", "_")
    out = Path(args.output) if args.output else RESULTS_DIR / "analysis" / name / where
    return model, sae, hook, out


def run(args) -> int:
    from trajectory.analysis import FeatureReport, compare, parse_features, real, synthetic
    from trajectory.analysis import render_comparison, render_real, render_synthetic

    parse_features(args.features)  # a bad spec fails before any model is loaded
    model, sae, hook, out = _resolve(args)
    progress = not args.no_progress
    mode = args.analysis_mode
    written = []
    real_report = synth_report = None
    if mode in ("real", "compare"):
        if getattr(args, "real_report", None) and mode == "compare":
            real_report = FeatureReport.load(args.real_report)
        else:
            real_report = real(model, sae, args.features, args.corpus, hook_name=hook, max_examples=args.max_examples,
                               batch_size=args.batch_size, context_length=args.context_length, max_tokens=args.max_tokens,
                               include_bos=args.include_bos, progress=progress)
            written.append(real_report.save(out / "real_report.json"))
        if not args.no_plots:
            written += render_real(real_report, out)
    if mode in ("synthetic", "compare"):
        if getattr(args, "synthetic_report", None):
            synth_report = FeatureReport.load(args.synthetic_report)
        else:
            vocab = None
            if args.vocab_from_corpus:
                from trajectory.analysis.real_activations import corpus_tokens

                spec = None if args.vocab_from_corpus == "default" else args.vocab_from_corpus
                special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
                vocab = [i for i in corpus_tokens(model, spec, context_length=32)[1].unique().tolist() if i not in special]
            best = real_report if real_report is not None else (FeatureReport.load(args.real_report) if args.real_report else None)
            synth_report = synthetic(model, sae, args.features, hook_name=hook, seq_len=args.seq_len, n_steps=args.n_steps,
                                     learning_rate=args.learning_rate, restarts=args.restarts, seed=args.seed,
                                     vocab=vocab, best_real=best, progress=progress)
            written.append(synth_report.save(out / "synthetic_report.json"))
        if not args.no_plots:
            written += render_synthetic(synth_report, out)
    if mode == "compare":
        comparison = compare(real_report, synth_report)
        written.append(comparison.save(out / "comparison.json"))
        if not args.no_plots:
            written += render_comparison(comparison, out)
        sm = comparison.summary
        never = len(sm["never_fired"])
        print(f"synthetic >= best real for {sm['n_exceeds']}/{sm['n_fired_real']} features that fired on the corpus"
              + (f" ({sm['share_exceeds']:.0%})" if sm["share_exceeds"] is not None else "")
              + f"; median ratio {sm['median_ratio'] if sm['median_ratio'] is None else round(sm['median_ratio'], 3)}"
              + (f"; {never} never fired on the corpus ({len(sm['only_synthetic_fires'])} of them fire on "
                 "synthetic input)" if never else ""))
    print(f"wrote {len(written)} file(s) to {out}/")
    return 0

"""``trajectory real | synthetic | compare``: characterise single SAE features.

Examples::

    trajectory real --preset offline --layer 6 --features 0-10,50-60
    trajectory real --preset offline --layer 6 --features 0-10 --corpus my.txt --max-examples 30
    trajectory synthetic --preset offline --layer 6 --features 0,1,2 --n-steps 300
    trajectory compare --preset offline --layer 6 --features 0-10
    trajectory real --model gpt2 --sae path/to/params.npz --hook blocks.6.hook_resid_post --features 0-5

Outputs (default ``results/analysis/<preset or model>/layer_<L>/``): ``real_report.json``,
``synthetic_report.json``, ``comparison.json`` and the PNGs of
:mod:`trajectory.features.plots`.
"""
from __future__ import annotations

import argparse

from trajectory.cli import options


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, help="features, e.g. 0,5,10 or 0-20 or 0-10,50-60")
    options.add_preset(p)
    p.add_argument("--layer", type=int, default=None, help="layer whose SAE is analysed (required unless --sae names its hook)")
    p.add_argument("--model", default=None, help="TransformerLens model name or local folder instead of the preset's model")
    p.add_argument("--sae", default=None, help="a single SAE file/folder of any supported format instead of the preset's bank")
    p.add_argument("--hook", default=None, help="hook the SAE reads (default: the SAE's own, else the preset's for --layer)")
    options.add_bank(p)
    options.add_device(p)
    options.add_dtype(p, "SAE dtype, e.g. float32 (default: as stored)")
    options.add_out(p, "output folder (default: results/analysis/<preset or model>/layer_<L>)")
    p.add_argument("--no-plots", action="store_true", help="write the JSON reports only")
    options.add_progress(p)


def _real_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", default=None, help="text file, folder of .txt/.md, or hf:<dataset> (default: the mixed corpus, English prose + Python docs; also: english, python-docs)")
    p.add_argument("--max-examples", type=int, default=20, help="top-activating contexts kept per feature (default: 20)")
    p.add_argument("--batch-size", type=int, default=16, help="chunks per forward pass (default: 16)")
    p.add_argument("--context-length", type=int, default=128, help="tokens per chunk, BOS included (default: 128)")
    p.add_argument("--scan-tokens", dest="max_tokens", type=int, default=None,
                   help="scan at most this many corpus tokens (default: all)")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, help=argparse.SUPPRESS)  # the old spelling
    p.add_argument("--count-bos", dest="include_bos", action="store_true",
                   help="count BOS positions in the statistics too (default: excluded)")
    p.add_argument("--include-bos", dest="include_bos", action="store_true", help=argparse.SUPPRESS)  # old spelling


def _synthetic_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-steps", type=int, default=150, help="optimisation steps per feature (default: 150)")
    p.add_argument("--seq-len", type=int, default=8, help="optimised tokens per sequence, after BOS (default: 8)")
    p.add_argument("--learning-rate", type=float, default=0.1, help="Adam step size on the vocabulary logits (default: 0.1)")
    p.add_argument("--restarts", type=int, default=3, help="random restarts, optimised as one batch (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--vocab-from-corpus", default=None, metavar="CORPUS",
                   help="search only tokens that occur in this corpus ('default' = the offline corpus); "
                   "much faster with large vocabularies such as Gemma's 262k (default: all non-special tokens)")


#: sub-command -> (help, description, option groups, report options)
_COMMANDS = {
    "real": ("features on real text: top contexts, density, histogram, logit effects",
             "Scan a corpus through the model and one layer's SAE; per feature: top-activating contexts, density, "
             "mean/max, histogram, decoder norm, logit effects; PNGs + real_report.json.",
             (_real_args,), ()),
    "synthetic": ("features on optimised inputs: token sequences that maximise them",
                  "Gradient search in embedding space (softmax relaxation over the vocabulary, annealed, projected "
                  "to real tokens); reports the projected sequence's real activation.",
                  (_synthetic_args,),
                  (("--real-report", "a real_report.json to compare each feature with its best real activation"),)),
    "compare": ("real vs synthetic activations per feature and in summary",
                "Run (or reuse) the real and synthetic analyses of the same features and compare the synthetic "
                "activation with the best real one.",
                (_real_args, _synthetic_args),
                (("--real-report", "reuse this real_report.json instead of scanning"),
                 ("--synthetic-report", "reuse this synthetic_report.json instead of optimising"))),
}


def register(sub) -> None:
    for mode, (help_text, description, groups, reports) in _COMMANDS.items():
        p = options.add_parser(sub, mode, help=help_text, description=description)
        _common(p)
        for add in groups:
            add(p)
        for flag, text in reports:
            p.add_argument(flag, default=None, help=text)
        p.set_defaults(func=run, analysis_mode=mode)


def run(args) -> int:
    from trajectory.features import parse_features
    from trajectory.features.analyse import FeatureRequest, analyse_features, open_feature_sae

    parse_features(args.features)  # a bad spec or output folder fails before any model is loaded
    if args.out:
        from trajectory.io import check_output_dir

        check_output_dir(args.out)
    target = open_feature_sae(preset=args.preset, layer=args.layer, model=args.model, sae=args.sae, hook=args.hook,
                              bank=args.bank, device=args.device, dtype=args.dtype)
    mode = args.analysis_mode
    request = FeatureRequest(
        mode=mode, features=args.features, plots=not args.no_plots,
        real_report=getattr(args, "real_report", None), synthetic_report=getattr(args, "synthetic_report", None),
        real_options=_options(args, _REAL_OPTIONS) if mode != "synthetic" else {},
        synthetic_options=_options(args, _SYNTHETIC_OPTIONS) if mode != "real" else {},
        vocab_from_corpus=getattr(args, "vocab_from_corpus", None),
    )
    out = args.out or target.default_out
    result = analyse_features(target, request, out, progress=not args.no_progress)
    from trajectory.features import feature_summary_lines

    for report in (result.real, result.synthetic):
        if report is not None and mode != "compare":
            print("\n".join(feature_summary_lines(report, limit=20)))
    if result.comparison is not None:
        sm = result.comparison.summary
        never = len(sm["never_fired"])
        median = sm["median_ratio"] if sm["median_ratio"] is None else round(sm["median_ratio"], 3)
        print(f"synthetic >= best real for {sm['n_exceeds']}/{sm['n_fired_real']} features that fired on the corpus"
              + (f" ({sm['share_exceeds']:.0%})" if sm["share_exceeds"] is not None else "")
              + f"; median ratio {median}"
              + (f"; {never} never fired on the corpus ({len(sm['only_synthetic_fires'])} of them fire on "
                 "synthetic input)" if never else ""))
    print(f"wrote {len(result.written)} file(s) to {out}/")
    return 0


_REAL_OPTIONS = ("corpus", "max_examples", "batch_size", "context_length", "max_tokens", "include_bos")
_SYNTHETIC_OPTIONS = ("seq_len", "n_steps", "learning_rate", "restarts", "seed")


def _options(args, names) -> dict:
    return {name: getattr(args, name) for name in names if hasattr(args, name)}

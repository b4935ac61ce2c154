"""``trajectory dashboard``: offline HTML feature dashboards, one page per SAE layer.

Examples::

    trajectory dashboard --preset offline --layers 6 --features 0-2047
    trajectory dashboard --bank results/banks/offline --layers 0-17 --max-tokens 100000 --out results/dashboard/offline
    trajectory dashboard --model gpt2 --sae path/to/sae --hook blocks.6.hook_resid_post --features 0-99

Outputs (default ``results/dashboard/<preset or model>/``): ``layer_XX.html`` and
``layer_XX.json`` per layer, ``index.html``. ``layer_XX.html#fN`` opens feature N.
"""
from __future__ import annotations

from trajectory.cli import options


def register(sub) -> None:
    p = options.add_parser(
        sub, "dashboard",
        help="offline HTML feature dashboards: top and quantile examples, histograms, logit effects",
        description=(
            "One pass over a corpus through the model (up to the last requested layer) and the SAEs of all "
            "requested layers; per feature: top-activating contexts, examples from activation bands, histogram, "
            "density, max/mean, logit effects, nearest features by decoder cosine. Writes layer_XX.html + "
            "layer_XX.json per layer and index.html; open them offline in a browser."
        ),
    )
    options.add_preset(p)
    options.add_layers(p, "all layers of the bank")
    p.add_argument("--features", default=None, help="features, e.g. 0-2047 or 0-10,50 (default: all of each SAE)")
    options.add_bank(p)
    p.add_argument("--sae", default=None, help="a single SAE file/folder of any supported format instead of a bank")
    p.add_argument("--model", default=None, help="TransformerLens model name or local folder instead of the preset's")
    p.add_argument("--hook", default=None, help="hook the --sae SAE reads (default: its own, else the preset's for --layers)")
    p.add_argument("--corpus", default=None,
                   help="text file, folder of .txt/.md, or hf:<dataset> (default: the mixed corpus, English prose + Python docs; also: english, python-docs)")
    p.add_argument("--max-tokens", type=int, default=None, help="read at most this many corpus tokens (default: all)")
    p.add_argument("--max-examples", type=int, default=10, help="top-activating contexts per feature (default: 10)")
    p.add_argument("--bands", type=int, default=5, help="activation bands with sampled examples (default: 5)")
    p.add_argument("--batch-size", type=int, default=16, help="chunks per forward pass (default: 16)")
    p.add_argument("--context-length", type=int, default=128, help="tokens per chunk, BOS included (default: 128)")
    options.add_device(p)
    options.add_dtype(p, "SAE dtype, e.g. float32 (default: as stored)")
    options.add_out(p, "output folder (default: results/dashboard/<preset or model>)")
    options.add_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from trajectory.dashboard import DashboardConfig, DashboardRequest, build_dashboard
    from trajectory.presets import get_preset

    config = DashboardConfig(max_examples=args.max_examples, n_bands=args.bands, batch_size=args.batch_size,
                             context_length=args.context_length, max_tokens=args.max_tokens)
    layers = options.layer_list(args.layers, get_preset(args.preset).n_layers)
    request = DashboardRequest(
        preset=args.preset, layers=layers, features=args.features, bank=args.bank, sae=args.sae, model=args.model,
        hook=args.hook, device=args.device, dtype=args.dtype, corpus=args.corpus, out=args.out, config=config,
    )
    result = build_dashboard(request, progress=not args.no_progress)
    n = sum(len(d.features) for d in result.dashboards)
    print(f"wrote dashboards of {n} features on {len(result.dashboards)} page(s) "
          f"({result.dashboards[0].n_tokens} tokens) to {result.out}/")
    print(f"open {result.out / 'index.html'}")
    return 0

#!/usr/bin/env python
"""How often a bank's local explanations relate to an ordinary English prompt.

    python benchmarks/explanation_relevance.py --bank before=results/banks/offline \\
        --bank after=results/banks/offline-mixed [--prompts benchmarks/english_prompts.txt]

For each prompt of the file (10 ordinary English sentences by default) and each bank:
evolve the prompt with the ``offline`` preset's model and that bank (the defaults of
``trajectory evolve``), build the trajectory graph (``T = 22``, newcomers through
attention, as ``trajectory graph``), and look at every **newcomer feature** of the graph:
each distinct ``(layer, feature)`` named by a node's ``newcomers``.

*Top activation* of such a feature: the graph node ``(q, layer)`` where it arrived with
the highest activation (ties: the earliest ``q``). *Context window*: the prompt's tokens
``q - W .. q`` (``W = 4`` by default, BOS left out): the peak token and the ``W`` tokens
before it, the same backward window the local explanations use for their contexts.

A feature is **relevant** when its explanation shares at least one word with its context
window. Words on both sides are :func:`trajectory.explanations.local.words_of`: runs of
two or more ASCII letters, lower-cased, English function words (``STOPWORDS``) left out
— otherwise "the" alone would make almost every label relevant — and the label's own
scaffolding (``(max 12.3)``, ``| context:``) is no word of it. Reported per bank: the
share over all (prompt, feature) pairs, the share per prompt, and — so that the corpus
and the label format can be told apart — the share when only the label's token part
(the quoted top tokens, what every bank's labels have) is matched. A crude measure: a
shared word is no proof that the explanation is right, and a right explanation may
share none; it only says whether the hover names something of what the reader sees.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROMPTS = ROOT / "benchmarks" / "english_prompts.txt"
_QUOTED = re.compile(r"'([^']*)'")
_SCAFFOLD = re.compile(r"\(max [^)]*\)|\| context:")


@dataclass
class PromptRelevance:
    """One prompt on one bank: newcomer features, how many relevant, examples."""

    prompt: str
    n_tokens: int
    n_features: int
    relevant: int
    relevant_tokens_only: int
    unexplained: int
    examples: list[dict] = field(default_factory=list)
    misses: list[dict] = field(default_factory=list)


def label_words(label: str) -> set[str]:
    """The words of a label, its own scaffolding (``(max 12.3)``, ``context:``) left out."""
    from trajectory.explanations.local import words_of

    return set(words_of(_SCAFFOLD.sub(" ", label)))


def token_part(label: str) -> str:
    """The quoted top tokens at the start of a local explanation (before ``(max``)."""
    head = label.split("(max", 1)[0]
    return " ".join(_QUOTED.findall(head))


def newcomer_peaks(g) -> dict[tuple[int, int], tuple[int, float]]:
    """``(layer, feature) -> (q, activation)`` of each newcomer's strongest node in ``g``."""
    peaks: dict[tuple[int, int], tuple[int, float]] = {}
    for node, d in g.nodes(data=True):
        q, layer = int(d.get("token_index", node[0])), int(d.get("layer", node[1]))
        for f in d.get("newcomers") or []:
            key, act = (layer, int(f["feature"])), float(f["activation"])
            old = peaks.get(key)
            if old is None or act > old[1] or (act == old[1] and q < old[0]):
                peaks[key] = (q, act)
    return peaks


def prompt_relevance(evo, g, explanations: dict[int, dict[int, str]], window: int, n_examples: int = 3
                     ) -> PromptRelevance:
    """The relevance counts of one evolved prompt's trajectory graph ``g``."""
    from trajectory.explanations.local import words_of

    tokens = list(g.graph["tokens"])
    relevant = relevant_tok = unexplained = 0
    examples, misses = [], []
    peaks = newcomer_peaks(g)
    for (layer, feature), (q, act) in sorted(peaks.items()):
        ctx = "".join(tokens[max(1, q - window): q + 1])
        ctx_words = set(words_of(ctx))
        label = explanations.get(layer, {}).get(feature)
        if not label:
            unexplained += 1
            continue
        hit = ctx_words & label_words(label)
        hit_tok = ctx_words & label_words(token_part(label))
        relevant += bool(hit)
        relevant_tok += bool(hit_tok)
        seen = examples if hit else misses
        if len(seen) < n_examples:
            seen.append(dict(layer=layer, feature=feature, context=ctx, explanation=label, shared=sorted(hit)))
    return PromptRelevance(evo.metadata.get("prompt", ""), len(tokens), len(peaks), relevant, relevant_tok,
                           unexplained, examples, misses)


def run(banks: dict[str, str], prompts: list[str], *, T: int = 22, window: int = 4, device: str = "cpu",
        layers: list[int] | None = None, model=None) -> dict[str, list[PromptRelevance]]:
    """Evolve every prompt with every bank and measure; ``{bank name: [per prompt]}``.

    ``layers``: only these layers of every bank (the same for all, so that they compare);
    ``model``: an already loaded offline model."""
    from trajectory.evolution.engine import evolve
    from trajectory.graph.build import trajectory_graph
    from trajectory.model.load import load_model
    from trajectory.pipeline import EvolveConfig, open_bank

    model = model if model is not None else load_model("offline", device=device)
    options = EvolveConfig(preset="offline", layers=layers).engine_options(device)
    out: dict[str, list[PromptRelevance]] = {}
    for name, folder in banks.items():
        bank = open_bank("offline", folder, layers=layers)
        explanations = {layer: dict(bank.entry(layer).explanations) for layer in bank.layers}
        rows = []
        for prompt in prompts:
            t0 = time.perf_counter()
            evo = evolve(model, bank, prompt, progress=False, **options)
            g = trajectory_graph(evo, T=T)
            row = prompt_relevance(evo, g, explanations, window)
            row.prompt = prompt
            rows.append(row)
            print(f"[{name}] {row.relevant}/{row.n_features - row.unexplained} relevant "
                  f"({time.perf_counter() - t0:.0f}s): {prompt[:60]}", flush=True)
        out[name] = rows
    return out


def summary(rows: list[PromptRelevance]) -> dict:
    """Pooled shares of one bank."""
    explained = sum(r.n_features - r.unexplained for r in rows)
    return dict(prompts=len(rows), features=sum(r.n_features for r in rows), explained=explained,
                relevant=sum(r.relevant for r in rows),
                share=sum(r.relevant for r in rows) / max(explained, 1),
                share_tokens_only=sum(r.relevant_tokens_only for r in rows) / max(explained, 1),
                per_prompt=[round(r.relevant / max(r.n_features - r.unexplained, 1), 3) for r in rows])


def write_report(results, banks, prompts, *, T, window, layers) -> dict:
    """Print the table of ``results`` and return it as a JSON-able dict."""
    print(f"\nnewcomer features (T={T}, layers {layers or 'all'}) whose explanation shares a word with the "
          f"window q-{window}..q around their peak:")
    print(f"{'bank':<12}{'features':>9}{'explained':>10}{'relevant':>9}{'share':>7}{'tokens only':>12}")
    report = {"T": T, "window": window, "layers": layers, "prompts": prompts, "banks": {}}
    for name, rows in results.items():
        s = summary(rows)
        print(f"{name:<12}{s['features']:>9}{s['explained']:>10}{s['relevant']:>9}{s['share']:>7.1%}"
              f"{s['share_tokens_only']:>12.1%}")
        report["banks"][name] = dict(folder=banks[name], summary=s, rows=[asdict(r) for r in rows])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", action="append", required=True, metavar="NAME=FOLDER",
                        help="a bank to measure (repeat: e.g. before=results/banks/offline after=...)")
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="prompt file, one per line")
    parser.add_argument("--T", type=int, default=22, help="final-rank cut-off of newcomers (default 22)")
    parser.add_argument("--window", type=int, default=4, help="tokens before the peak in the context window")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    parser.add_argument("--layers", default=None, help="only these layers of every bank, e.g. 0-5 (default: all)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    banks = {}
    for spec in args.bank:
        name, _, folder = spec.partition("=")
        if not folder:
            name, folder = Path(spec).name, spec
        if not Path(folder, "manifest.json").is_file():
            parser.error(f"--bank {spec}: {folder} holds no manifest.json; run `trajectory preload` first")
        banks[name] = folder
    from trajectory.pipeline import read_prompts

    prompts = read_prompts(args.prompts)[: args.limit]
    from trajectory.presets import parse_layers

    layers = parse_layers(args.layers, 18) if args.layers else None  # Gemma 3 270M: 18 layers
    results = run(banks, prompts, T=args.T, window=args.window, layers=layers)
    report = write_report(results, banks, prompts, T=args.T, window=args.window, layers=layers)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

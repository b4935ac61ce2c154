#!/usr/bin/env python
"""Dashboard collection throughput versus the bare model forward to the same layer, page
size per feature, peak memory and the page's time to first paint in headless Chromium.

    python benchmarks/dashboard.py                                  # offline Gemma 3 270M, layer 6, all features
    python benchmarks/dashboard.py --tokens 100000 --paint          # + first paint of the page in Chromium
    python benchmarks/dashboard.py --layers 0-17 --tokens 100000    # every layer in one pass
    python benchmarks/dashboard.py --model tiny                     # the tiny test fixture
    python benchmarks/dashboard.py --paint-only results/dashboard/offline/layer_06.html

Both runs see the same token chunks and batch size. "bare" is
``model(batch, stop_at_layer=last + 1)`` with nothing else; "pass" is the corpus pass of
:func:`trajectory.dashboard.collect` (hooks, SAE encodes, running top-k, sample,
histograms); "total" adds the one-off per-feature work after it (logit effects,
decoder cosines, building the cards). The SAEs are the preset's bank when
``results/banks/<model>`` exists, else random TopK SAEs of ``--d-sae`` features
(speed does not depend on the weights). Pages go to ``--out`` (default a temporary
folder); their size is divided by the number of features (target <= 25 KB per feature).

Peak RSS: the process's high-water mark (``VmHWM``) reset just before the dashboard
call (Linux ``/proc/self/clear_refs``), so it covers collection + cards, not loading.
Load averages (``os.getloadavg``) are printed beside each figure: on a shared machine the
ratio of two runs made at different loads means little. ``--save-tokens FILE`` writes the
token ids (``torch.save``, ``[n_chunks, 128]`` long) and the settings, so another tool
(``benchmarks/dashboard_vs_saedashboard.py``) can run on exactly the same tokens.
``--json FILE`` writes every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="offline", help="'offline' (Gemma 3 270M) or 'tiny' (test fixture)")
    p.add_argument("--layers", default="6", help="layers, e.g. 6 or 0-17 (default 6)")
    p.add_argument("--d-sae", type=int, default=2048, help="width of the random SAEs when there is no bank (default 2048)")
    p.add_argument("--tokens", type=int, default=8192, help="corpus tokens (default 8192)")
    p.add_argument("--features", help="feature spec, e.g. 0-255 (default: all of each SAE)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--pass-only", action="store_true",
                   help="stop after the corpus pass: no cards or pages (for many layers on a slow machine)")
    p.add_argument("--out", help="keep the pages in this folder (default: a temporary folder)")
    p.add_argument("--paint", action="store_true", help="time the (largest) page's first paint in headless Chromium")
    p.add_argument("--paint-only", metavar="PAGE", help="only time this page in headless Chromium")
    p.add_argument("--paint-runs", type=int, default=3, help="page loads to time (default 3; the median is shown)")
    p.add_argument("--save-tokens", metavar="FILE", help="torch.save the token ids and settings here")
    p.add_argument("--json", metavar="FILE", help="write the figures here")
    return p.parse_args(argv)


def load() -> str:
    """The 1/5/15-minute load averages, as printed beside each figure."""
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def rss_mb(field: str = "VmRSS") -> float:
    """``field`` of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MB; else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset the process's ``VmHWM`` to its current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def setup(args: argparse.Namespace):
    """``(model, targets, tokens [n_chunks, 128], what the SAEs are)``."""
    from trajectory.dashboard.build import target_name
    from trajectory.dashboard.collection import DashboardTarget
    from trajectory.features.real_activations import corpus_tokens
    from trajectory.presets import parse_layers
    from trajectory.testing import CORPUS_SENTENCES, random_sae

    if args.model == "tiny":
        from trajectory.testing import tiny_model

        model, docs = tiny_model(), CORPUS_SENTENCES * 200
    else:
        from trajectory.model.load import load_model

        model, docs = load_model(args.model, device=args.device), None
    layers = parse_layers(args.layers, model.cfg.n_layers)
    bank_dir = Path("results", "banks", args.model)
    if bank_dir.is_dir():
        from trajectory.saes.bank import SAEBank

        bank = SAEBank.open(bank_dir, layers=layers, device=args.device)
        targets = [DashboardTarget(target_name(bank.hook_name(x)), bank[x], bank.hook_name(x), x) for x in layers]
        source = f"bank {bank_dir}"
    else:
        d = model.cfg.d_model
        targets = []
        for x in layers:
            hook = f"blocks.{x}.hook_resid_post"
            sae = random_sae(d, args.d_sae, architecture="topk", k=32, seed=x, hook_name=hook, device=args.device)
            targets.append(DashboardTarget(target_name(hook), sae, hook, x))
        source = f"random TopK SAEs {d}x{args.d_sae}"
    _, tokens = corpus_tokens(model, docs, context_length=128, max_tokens=args.tokens)
    return model, targets, tokens, source


def paint_times(page: str | Path, runs: int = 3) -> dict:
    """Median over ``runs`` fresh loads of ``page`` in headless Chromium (ms from navigation
    start): ``first_contentful_paint``, ``dom_content_loaded``, ``load``, ``rows`` (the
    feature list has its first rows), and ``card_open`` (ms to open ``#f<last feature>``
    after load); plus ``console_errors`` and ``requests`` other than the page itself."""
    from statistics import median

    from playwright.sync_api import sync_playwright

    url = Path(page).resolve().as_uri()
    keys = ("first_contentful_paint", "dom_content_loaded", "load", "rows", "card_open")
    seen: dict[str, list[float]] = {k: [] for k in keys}
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(runs):
            ctx = browser.new_context()
            # records when the first feature row exists, from navigation start
            ctx.add_init_script("""new MutationObserver((m, o) => { if (document.querySelector('#list .row')) {
                window.__rows = performance.now(); o.disconnect(); } }).observe(document, {childList: true, subtree: true});""")
            pg = ctx.new_page()
            pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.on("request", lambda r: requests.append(r.url) if r.url != url else None)
            pg.goto(url, wait_until="load")
            pg.wait_for_function("window.__rows !== undefined")
            t = pg.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
                const fcp = performance.getEntriesByName('first-contentful-paint')[0];
                return {first_contentful_paint: fcp ? fcp.startTime : null, dom_content_loaded: n.domContentLoadedEventEnd,
                        load: n.loadEventEnd, rows: window.__rows}; }""")
            last = pg.evaluate("D.features[D.features.length - 1].feature")
            t["card_open"] = pg.evaluate("""(f) => { const t0 = performance.now(); location.hash = 'f' + f;
                window.dispatchEvent(new HashChangeEvent('hashchange'));
                return new Promise(r => requestAnimationFrame(() => r(performance.now() - t0))); }""", last)
            for k in keys:
                if t.get(k) is not None:
                    seen[k].append(float(t[k]))
            ctx.close()
        browser.close()
    out = {k: round(median(v), 1) if v else None for k, v in seen.items()}
    return {**out, "runs": runs, "page_bytes": Path(page).stat().st_size, "console_errors": errors,
            "requests": sorted(set(requests))}


def print_paint(page: str | Path, t: dict) -> None:
    print(f"first paint of {page} ({t['page_bytes'] / 1e6:.2f} MB), median of {t['runs']} loads, ms from navigation: "
          f"FCP {t['first_contentful_paint']}, DOMContentLoaded {t['dom_content_loaded']}, load {t['load']}, "
          f"first rows {t['rows']}; open a card {t['card_open']} ms; console errors {len(t['console_errors'])}, "
          f"other requests {len(t['requests'])} [{load()}]")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.paint_only:
        t = paint_times(args.paint_only, args.paint_runs)
        print_paint(args.paint_only, t)
        if args.json:
            Path(args.json).write_text(json.dumps({"paint": t, "load_avg": os.getloadavg()}, indent=1))
        return 0

    import torch

    from trajectory.dashboard import DashboardConfig, collect, collection, write_pages
    from trajectory.features.corpus_scan import stop_layer

    torch.manual_seed(0)
    model, targets, tokens, source = setup(args)
    n, stop = tokens.numel(), max(stop_layer(t.hook) for t in targets)
    fig: dict = {"model": str(model.cfg.model_name), "layers": [t.layer for t in targets], "sae_source": source,
                 "tokens": n, "chunks": int(tokens.shape[0]), "batch_size": args.batch_size,
                 "torch_threads": torch.get_num_threads(), "load_start": os.getloadavg()}
    print(f"model {model.cfg.model_name}, {len(targets)} layer(s), SAEs: {source}; {tokens.shape[0]} chunks x "
          f"{tokens.shape[1]} = {n} tokens, batch {args.batch_size}, torch threads {torch.get_num_threads()} [{load()}]")
    if args.save_tokens:
        cfg = DashboardConfig(batch_size=args.batch_size)
        torch.save({"tokens": tokens, "layers": [t.layer for t in targets], "hooks": [t.hook for t in targets],
                    "batch_size": args.batch_size, "max_examples": cfg.max_examples, "window": list(cfg.window),
                    "n_logits": cfg.n_logits, "features": args.features, "model": str(model.cfg.model_name)}, args.save_tokens)
        print(f"token ids -> {args.save_tokens}")

    def bare(limit: int | None = None) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, tokens.shape[0] if limit is None else min(limit, tokens.shape[0]), args.batch_size):
                model(tokens[i : i + args.batch_size].to(args.device), stop_at_layer=stop)
        return time.perf_counter() - start

    finish = collection._layer_dashboard
    marks: list[float] = []

    class PassDone(Exception):
        """Raised at the end of the pass under --pass-only."""

    def timed_finish(*a, **k):  # the pass ends when the first dashboard is assembled
        marks.append(time.perf_counter())
        if args.pass_only:
            raise PassDone
        return finish(*a, **k)

    collection._layer_dashboard = timed_finish
    bare(2 * args.batch_size)  # warm-up: two batches
    tb = bare()
    fig.update(bare_s=tb, bare_tok_s=n / tb, load_after_bare=os.getloadavg())
    print(f"bare forward to block {stop - 1}: {n / tb:,.0f} tokens/s ({tb:.2f} s) [{load()}]")
    rss_before, peak_reset = rss_mb(), reset_peak_rss()
    start = time.perf_counter()
    try:
        dashboards = collect(model, targets, args.features, tokens,
                             config=DashboardConfig(batch_size=args.batch_size), progress=False)
    except PassDone:
        dashboards = []
    total = time.perf_counter() - start
    tp = marks[0] - start
    peak = rss_mb("VmHWM") if peak_reset else rss_mb("ru_maxrss")
    n_features = sum(len(d.features) for d in dashboards) or sum(len(_features(args.features, t)) for t in targets)
    fig.update(features=n_features, pass_s=tp, pass_tok_s=n / tp, ratio_pass_bare=tb / tp, total_s=total,
               cards_s=total - tp, load_after_pass=os.getloadavg(), rss_before_mb=rss_before, peak_rss_mb=peak,
               peak_is_collect_only=peak_reset)
    print(f"dashboard pass ({n_features} features): {n / tp:,.0f} tokens/s ({tp:.2f} s); ratio pass / bare "
          f"{tb / tp:.3f} (target >= 0.8) [{load()}]")
    print(f"RSS before collect {rss_before:,.0f} MB, peak during collect {peak:,.0f} MB"
          + ("" if peak_reset else " (process peak: could not reset the high-water mark)"))
    if args.pass_only:
        return _finish(args, fig)
    print(f"dashboard total incl. logit effects, cosines, cards: {total:.2f} s (after the pass {total - tp:.2f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        t0 = time.perf_counter()
        write_pages(dashboards, out)
        tw = time.perf_counter() - t0
        pages = [out / f"{d.name}.html" for d in dashboards]
        html = sum(p.stat().st_size for p in pages)
        js = sum((out / f"{d.name}.json").stat().st_size for d in dashboards)
        fig.update(write_s=tw, html_bytes=html, html_bytes_per_feature=html / n_features, json_bytes=js,
                   largest_page_bytes=max(p.stat().st_size for p in pages))
        print(f"writing pages {tw:.2f} s; pages: {html / 1e6:.2f} MB, {html / n_features / 1e3:.1f} KB per feature "
              f"(target <= 25 KB), largest page {fig['largest_page_bytes'] / 1e6:.2f} MB; JSON {js / 1e6:.2f} MB")
        if args.paint:
            page = max(pages, key=lambda p: p.stat().st_size)
            fig["paint"] = paint_times(page, args.paint_runs)
            print_paint(page, fig["paint"])
    return _finish(args, fig)


def _features(spec: str | None, target) -> list[int]:
    from trajectory.features.spec import parse_features

    d_sae = int(target.sae.cfg.d_sae)
    return list(range(d_sae)) if spec is None else parse_features(spec, d_sae=d_sae)


def _finish(args: argparse.Namespace, fig: dict) -> int:
    fig["load_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1))
        print(f"figures -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

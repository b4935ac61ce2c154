#!/usr/bin/env python
"""SAEDashboard (``sae-dashboard`` on PyPI) on the same SAE, features and tokens as
``benchmarks/dashboard.py``, for the side-by-side figures of the dashboard benchmark.

Runs with the python of a THROW-AWAY virtual environment, never the project's:
SAEDashboard pins ``transformer-lens<3`` and ``transformers<4.57``, which the project's
own environment must not get. This script imports nothing from ``trajectory``::

    python -m venv /tmp/venv-saed
    /tmp/venv-saed/bin/pip install torch==2.13.0      # first: the local CPU wheel
    /tmp/venv-saed/bin/pip install sae-dashboard
    # 1. our side, saving its token ids (and timing itself on the same features):
    python benchmarks/dashboard.py --layers 6 --tokens 4096 --features 0-255 --save-tokens /tmp/tok.pt
    # 2. SAEDashboard on exactly those tokens:
    /tmp/venv-saed/bin/python benchmarks/dashboard_vs_saedashboard.py --tokens /tmp/tok.pt --features 0-255

The SAE is read from the bank folder (``manifest.json`` + ``layer_XX.safetensors``, see
``trajectory/saes/bank_format.py``) by writing sae-lens's own on-disk layout (``cfg.json``
from the manifest's cfg + ``sae_weights.safetensors``) into a temporary folder and calling
``SAE.load_from_disk``. The model is the offline Gemma 3 270M cache folder (a plain
Hugging Face model, see ``trajectory/model/offline_gguf.py``) wrapped by SAEDashboard's
transformer-lens as ``HookedSAETransformer`` without weight processing, like ours.
Settings mirror ours where SAEDashboard has one: its default feature-centric layout
(top + quantile example groups, activation and logit histograms, logit tables, feature
tables), ``minibatch_size_tokens`` = our batch size. Prints the wall time (run and HTML
separately), tokens/s, page size per feature and peak RSS, with load averages.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_MODEL_DIR = Path(os.environ.get("TRAJECTORY_CACHE", Path.home() / ".cache" / "trajectory"),
                         "models", "gemma-3-270m")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", required=True, help="token file written by benchmarks/dashboard.py --save-tokens")
    p.add_argument("--bank", default="results/banks/offline", help="SAE bank folder (default results/banks/offline)")
    p.add_argument("--layer", type=int, help="bank layer (default: the token file's first layer)")
    p.add_argument("--features", default=None, help="e.g. 0-255 (default: all of the SAE)")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR), help="Hugging Face folder of the model")
    p.add_argument("--tl-name", default="google/gemma-3-270m", help="transformer-lens name of its architecture")
    p.add_argument("--minibatch-features", type=int, default=256, help="SAEDashboard minibatch_size_features")
    p.add_argument("--cache-acts", action="store_true",
                   help="let SAEDashboard cache model activations on disk (one forward per token batch, "
                        "not one per feature batch); default: its default (no cache)")
    p.add_argument("--skip-fold", action="store_true",
                   help="make the SAE's fold_W_dec_norm a no-op: SaeVisRunner.run calls it, and sae-lens 6.54 refuses "
                        "it for TopK SAEs with rescale_acts_by_decoder_norm=False (NotImplementedError); the "
                        "activations are then the SAE's own, as on our side")
    p.add_argument("--out", help="keep the HTML here (default: a temporary folder)")
    p.add_argument("--json", help="write the figures here")
    return p.parse_args(argv)


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def parse_features(spec: str | None, d_sae: int) -> list[int]:
    if spec is None:
        return list(range(d_sae))
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    if max(out) >= d_sae:
        raise ValueError(f"feature {max(out)} is beyond the SAE's d_sae={d_sae}")
    return out


def bank_sae(bank: Path, layer: int, folder: Path):
    """The bank's SAE of ``layer`` through sae-lens's ``SAE.load_from_disk``."""
    from sae_lens import SAE

    manifest = json.loads((bank / "manifest.json").read_text())
    record = manifest["layers"][str(layer)]
    (folder / "cfg.json").write_text(json.dumps(record["cfg"]))
    shutil.copyfile(bank / record["file"], folder / "sae_weights.safetensors")
    sae = SAE.load_from_disk(str(folder), device="cpu", dtype="float32")
    return sae, record["hook_name"]


def load_model(model_dir: str, tl_name: str):
    import torch
    from sae_lens import HookedSAETransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    return HookedSAETransformer.from_pretrained_no_processing(tl_name, hf_model=hf, tokenizer=tok, device="cpu",
                                                              dtype=torch.float32)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from sae_dashboard.data_writing_fns import save_feature_centric_vis
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    saved = torch.load(args.tokens)
    tokens = saved["tokens"]
    layer = args.layer if args.layer is not None else saved["layers"][0]
    fig = {"tokens": int(tokens.numel()), "layer": layer, "load_start": os.getloadavg(),
           "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "sae_lens")}}
    from importlib.metadata import version

    fig["versions"].update({m: version(m) for m in ("sae-dashboard", "transformer-lens")})
    print(f"versions {fig['versions']}")
    t0 = time.perf_counter()
    model = load_model(args.model_dir, args.tl_name)
    print(f"model loaded in {time.perf_counter() - t0:.1f} s [{load()}]")
    with tempfile.TemporaryDirectory() as tmp:
        sae, hook = bank_sae(Path(args.bank), layer, Path(tmp))
        feats = parse_features(args.features, int(sae.cfg.d_sae))
        if args.skip_fold:
            norms = sae.W_dec.norm(dim=-1)
            print(f"fold_W_dec_norm skipped (decoder row norms {float(norms.min()):.4f}..{float(norms.max()):.4f})")
            sae.fold_W_dec_norm = lambda: None
        cfg = SaeVisConfig(hook_point=hook, features=feats, minibatch_size_features=args.minibatch_features,
                           minibatch_size_tokens=int(saved.get("batch_size", 16)), device="cpu", dtype="float32",
                           cache_dir=Path(tmp, "acts") if args.cache_acts else None, verbose=False)
        print(f"SAEDashboard on {hook}: {len(feats)} features, {tokens.shape[0]} x {tokens.shape[1]} = "
              f"{tokens.numel()} tokens, torch threads {torch.get_num_threads()} [{load()}]")
        t0 = time.perf_counter()
        data = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)
        t_run = time.perf_counter() - t0
        fig.update(features=len(feats), run_s=t_run, load_after_run=os.getloadavg())
        print(f"SaeVisRunner.run: {t_run:.2f} s, {tokens.numel() / t_run:,.0f} tokens/s [{load()}]")
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        page = out / "saedashboard.html"
        t0 = time.perf_counter()
        save_feature_centric_vis(sae_vis_data=data, filename=str(page))
        t_html = time.perf_counter() - t0
        size = page.stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fig.update(html_s=t_html, total_s=t_run + t_html, html_bytes=size, html_bytes_per_feature=size / len(feats),
               peak_rss_mb=peak, load_end=os.getloadavg())
    print(f"HTML: {t_html:.2f} s; total {t_run + t_html:.2f} s; page {size / 1e6:.2f} MB, "
          f"{size / len(feats) / 1e3:.1f} KB per feature; process peak RSS {peak:,.0f} MB [{load()}]")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

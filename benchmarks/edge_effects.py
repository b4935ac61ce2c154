"""``edge_effects`` against the brute-force loop (one full forward pass per edge with a hook
on ``blocks.L.attn.hook_pattern``, one per ablated feature), same run, same graph; plus
``steer`` tokens/s with and without interventions.

    python benchmarks/edge_effects.py            # tiny model; the offline model too when
                                                 # results/banks/offline exists

On the offline model the brute force over every edge takes tens of minutes on a 2-core
CPU, so it times the passes of about 40 edges spread over the graph and extrapolates by
the number of forward passes (printed with the figure).
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

from trajectory.evolution.engine import evolve
from trajectory.graph.build import trajectory_graph
from trajectory.interventions import Intervention, edge_effects, steer
from trajectory.io import default_bank_dir
from trajectory.pipeline import ORIGINAL_PROMPT

TINY_PROMPT = "the final correct answer : max , mark and smith are in the empty dark room . smith left . mark gave flashlight to"


def brute_force(model, bank, evo, g, sample: int | None = None) -> tuple[float, str]:
    """Seconds for one forward per edge (knock-out) and one per newcomer feature (ablation).

    With ``sample``, only every n-th edge (about ``sample`` edges, spread over the layers)
    is run and the time is extrapolated by the number of forward passes; the returned
    note says so."""
    ids = torch.tensor(evo.token_ids, device=model.cfg.device)[None]
    edges = [e for *_, e in g.edges(data=True)]
    step = max(1, len(edges) // sample) if sample else 1
    picked = edges[::step]
    t0 = time.perf_counter()
    with torch.no_grad():
        for e in picked:
            L, q, t = e["layer"], e["target_token"], e["source_token"]

            def zero(pattern, hook, q=q, t=t):
                pattern[:, :, q, t] = 0.0
                return pattern

            model.run_with_hooks(ids, fwd_hooks=[(f"blocks.{L}.attn.hook_pattern", zero)])
            for f in e["features"]:
                sae = bank[L]

                def ablate(x, hook, q=q, f=f["feature"], sae=sae):
                    x = x.clone()
                    x[0, q] -= sae.encode(x[0, q].to(sae.W_enc.dtype))[f].to(x.dtype) * sae.W_dec[f].to(x.dtype)
                    return x

                model.run_with_hooks(ids, fwd_hooks=[(bank.hook_name(L), ablate)])
    seconds = time.perf_counter() - t0
    if step == 1:
        return seconds, "all passes run"
    runs = lambda es: sum(1 + len(e["features"]) for e in es)  # noqa: E731
    return seconds * runs(edges) / runs(picked), f"{runs(picked)} of {runs(edges)} passes run, extrapolated"


def run(name, model, bank, prompt, *, k, T, steer_layer, steer_feature, sample=None) -> None:
    evo = evolve(model, bank, prompt, k=k, progress=False)
    g = trajectory_graph(evo, T=T)
    n_feat = sum(len(e["features"]) for *_, e in g.edges(data=True))
    t0 = time.perf_counter()
    edge_effects(model, bank, evo, g)
    fast = time.perf_counter() - t0
    slow, how = brute_force(model, bank, evo, g, sample)
    kl = [e["knockout_kl"] for *_, e in g.edges(data=True)]
    lost = [e["newcomers_lost"] for *_, e in g.edges(data=True)]
    abl = [f["ablation_kl"] for *_, e in g.edges(data=True) for f in e["features"]]
    print(f"[{name}] {len(evo.tokens)} tokens, {g.number_of_edges()} edges, {n_feat} newcomer features")
    print(f"  edge_effects {fast:.2f} s, brute force {slow:.2f} s ({how}): {slow / fast:.1f}x")
    if kl:
        print(f"  knockout_kl median {statistics.median(kl):.3g}, max {max(kl):.3g}; edges with KL > 0.01: "
              f"{sum(v > 0.01 for v in kl)}, > 0.1: {sum(v > 0.1 for v in kl)}")
        print(f"  newcomers_lost: all lost {sum(v == 1 for v in lost)}, some {sum(0 < v < 1 for v in lost)}, "
              f"none {sum(v == 0 for v in lost)}; mean {statistics.mean(lost):.2f}")
        print(f"  ablation_kl median {statistics.median(abl):.3g}, > 0.01: {sum(v > 0.01 for v in abl)} of {len(abl)}")
    ivs = [Intervention(steer_layer, steer_feature, "add", 8.0)]
    res = steer(model, bank, prompt, ivs, max_new_tokens=30, stop_at_eos=False)
    tps = res.settings["tokens_per_s"]
    print(f"  steer 30 tokens: {tps['base']:.1f} tokens/s base, {tps['steered']:.1f} tokens/s steered")


def main(argv: list[str] | None = None) -> int:
    """``argv`` is accepted for ``trajectory bench edge_effects`` (there are no options)."""
    from trajectory.testing import tiny_bank, tiny_model

    model = tiny_model()
    run("tiny", model, tiny_bank(model), TINY_PROMPT, k=64, T=22, steer_layer=1, steer_feature=7)
    folder = default_bank_dir("offline")
    if not folder.exists():
        print(f"[offline] skipped: no bank at {folder} (run `trajectory preload --preset offline`)")
        return 0
    from trajectory.model.load import load_model
    from trajectory.pipeline import open_bank

    run("offline", load_model("offline"), open_bank("offline"), ORIGINAL_PROMPT, k=400, T=22, steer_layer=6,
        steer_feature=123, sample=40)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Dashboard collection against brute force on the tiny fixtures: one forward pass per
chunk, the full activation matrix, and every figure of every card computed from it
independently (top examples, density, max/mean, histogram, bands, logit effects through
``W_dec @ W_U``, decoder-cosine neighbours); two layers from one pass; the JSON round-trip."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trajectory.dashboard import DashboardConfig, DashboardTarget, LayerDashboard, collect
from trajectory.testing import random_sae

LAYERS = (0, 2)
N_CHUNKS, P, D_SAE = 14, 10, 48
WINDOW = (3, 2)


@pytest.fixture(scope="module")
def setup(tiny_model):
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(4, tiny_model.cfg.d_vocab, (N_CHUNKS, P), generator=g)
    tokens[:, 0] = tiny_model.tokenizer.bos_token_id
    targets = [DashboardTarget(f"layer_{x:02d}", random_sae(32, D_SAE, seed=10 + x, hook_name=f"blocks.{x}.hook_resid_post"),
                               f"blocks.{x}.hook_resid_post", x, {3: "explained"}) for x in LAYERS]
    # sample_size >= every feature's active count: the sample is all of them, so every band fills up
    cfg = DashboardConfig(max_examples=4, n_bands=4, band_examples=2, sample_size=N_CHUNKS * P, batch_size=3,
                          window=WINDOW, n_logits=5, n_neighbours=3, final_norm="ignore", feature_chunk=7)
    calls = []
    original = tiny_model.run_with_hooks

    def counting(*args, **kwargs):
        calls.append(kwargs.get("stop_at_layer"))
        return original(*args, **kwargs)

    tiny_model.run_with_hooks = counting
    try:
        dashboards = collect(tiny_model, targets, "0-47", tokens, config=cfg, progress=False)
    finally:
        del tiny_model.run_with_hooks
    return tiny_model, tokens, targets, cfg, dashboards, calls


def brute_force(model, sae, hook, tokens):
    """``[n_chunks, P, d_sae]`` activations, one forward per chunk, BOS positions zeroed."""
    rows = []
    with torch.no_grad():
        for chunk in tokens:
            _, cache = model.run_with_cache(chunk[None], names_filter=hook)
            rows.append(sae.encode(cache[hook])[0])
    acts = torch.stack(rows)
    acts[:, 0] = 0
    return acts


def window_of(tokens, c, p):
    lo, hi = max(p - WINDOW[0], 0), min(p + WINDOW[1] + 1, P)
    return tokens[c, lo:hi].tolist(), p - lo


def close(a, b):
    return math.isclose(a, b, rel_tol=2e-3, abs_tol=1e-6)


def test_one_pass_for_all_layers(setup):
    _, _, _, cfg, dashboards, calls = setup
    assert len(calls) == math.ceil(N_CHUNKS / cfg.batch_size)  # one forward per batch, not per layer
    assert set(calls) == {max(LAYERS) + 1}  # stopping after the last requested layer
    assert [d.name for d in dashboards] == ["layer_00", "layer_02"]


@pytest.mark.parametrize("which", [0, 1])
def test_cards_equal_brute_force(setup, which):
    model, tokens, targets, cfg, dashboards, _ = setup
    t, dash = targets[which], dashboards[which]
    A = brute_force(model, t.sae, t.hook, tokens)
    n_counted = N_CHUNKS * (P - 1)
    assert dash.n_tokens == n_counted and dash.hook_name == t.hook and dash[3].explanation == "explained"
    for f in range(D_SAE):
        card, col = dash[f], A[..., f]
        nz = col[col != 0]
        assert card.n_active == len(nz) and close(card.density, len(nz) / n_counted)
        assert close(card.max_activation, float(nz.max()) if len(nz) else 0.0)
        assert close(card.mean_activation, float(col.sum()) / n_counted)
        # top examples: the largest activations, each with its window and per-token values
        want = sorted(nz.tolist(), reverse=True)[: cfg.max_examples]
        assert len(card.examples) == len(want)
        for ex, value in zip(card.examples, want):
            assert close(ex.activation, value)
            ids, peak = window_of(tokens, ex.chunk, ex.position)
            assert ex.token_ids == ids and ex.peak == peak
            assert close(ex.activation, float(A[ex.chunk, ex.position, f]))
            lo = ex.position - peak
            assert all(close(a, float(A[ex.chunk, lo + i, f])) for i, a in enumerate(ex.activations))
        # histogram: 20 log-spaced bins per decade from 1e-4, clamped at both ends
        bins = np.clip(np.floor(20 * (np.log10(nz.numpy()) + 4)), 0, 159).astype(int)
        counts = np.bincount(bins, minlength=160)
        got = np.zeros(160, dtype=int)
        got[card.hist_start : card.hist_start + len(card.histogram)] = card.histogram
        assert (got == counts).all()
        # bands: equal-width intervals of (0, max]; every example in its band and true to the corpus
        top = float(nz.max()) if len(nz) else 0.0
        assert len(card.bands) == cfg.n_bands
        for b, band in enumerate(card.bands):
            lo_edge, hi_edge = top * b / cfg.n_bands, top * (b + 1) / cfg.n_bands
            assert close(band.low, lo_edge) and close(band.high, hi_edge)
            in_band = int(((nz > lo_edge) & (nz <= hi_edge)).sum())
            assert len(band.examples) == min(in_band, cfg.band_examples)
            for ex in band.examples:
                assert lo_edge * (1 - 2e-3) <= ex.activation <= hi_edge * (1 + 2e-3)
                assert close(ex.activation, float(A[ex.chunk, ex.position, f]))
                assert ex.token_ids == window_of(tokens, ex.chunk, ex.position)[0]


@pytest.mark.parametrize("which", [0, 1])
def test_logit_effects_and_neighbours(setup, which):
    model, _, targets, cfg, dashboards, _ = setup
    sae, dash = targets[which].sae, dashboards[which]
    effects = (sae.W_dec.detach() @ model.W_U.detach()).numpy()  # [d_sae, d_vocab], final norm ignored
    W = sae.W_dec.detach().numpy()
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    cos = W @ W.T
    np.fill_diagonal(cos, -np.inf)
    for f in range(D_SAE):
        order = np.argsort(-effects[f], kind="stable")
        top = [(model.tokenizer.decode([int(i)]), float(effects[f, i])) for i in order[: cfg.n_logits]]
        assert [v for _, v in dash[f].top_logits] == pytest.approx([v for _, v in top], rel=2e-3)
        assert [s for s, _ in dash[f].top_logits] == [s for s, _ in top]
        bottom = sorted(effects[f])[: cfg.n_logits]
        assert [v for _, v in dash[f].bottom_logits] == pytest.approx(bottom, rel=2e-3)
        near = np.argsort(-cos[f], kind="stable")[: cfg.n_neighbours]
        assert [g for g, _ in dash[f].neighbours] == near.tolist()
        assert [c for _, c in dash[f].neighbours] == pytest.approx(cos[f, near].tolist(), rel=2e-3)


def test_json_round_trip(setup, tmp_path):
    dash = setup[4][1]
    path = dash.save(tmp_path / "layer_02.json")
    back = LayerDashboard.load(path)
    assert back == dash
    assert back.tokens and all(isinstance(i, int) for i in back.tokens)
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a feature dashboard file"):
        LayerDashboard.load(tmp_path / "other.json")


def test_bad_features_fail_before_the_pass(tiny_model):
    t = DashboardTarget("layer_01", random_sae(32, 16, hook_name="blocks.1.hook_resid_post"), "blocks.1.hook_resid_post", 1)
    with pytest.raises(ValueError, match="16"):
        collect(tiny_model, [t], "0-99", ["some text"], progress=False)
    with pytest.raises(ValueError, match="empty"):
        collect(tiny_model, [t], "0-3", ["  ", ""], progress=False)
    with pytest.raises(ValueError, match="band_examples"):
        DashboardConfig(band_examples=0)


def test_to_dict_equals_asdict(setup):
    """The hand-built JSON object is exactly what ``dataclasses.asdict`` gives (the old way)."""
    import dataclasses
    import json

    for dash in setup[4]:
        ref = dataclasses.asdict(dash)
        ref["tokens"] = {str(i): s for i, s in dash.tokens.items()}
        ref = {"format": "trajectory-feature-dashboard", "format_version": 1, **ref}
        got = dash.to_dict()
        assert got == ref and list(got) == list(ref)
        assert list(got["features"][3]) == list(ref["features"][3])
        assert dash.to_json() == json.dumps(ref, ensure_ascii=False, separators=(",", ":"))


def test_bands_take_the_first_sampled_windows_in_key_order(tiny_model, monkeypatch):
    """With a sample smaller than the active counts, each band holds the first
    ``band_examples`` sampled windows (in the sample's row order) whose activation falls
    in it: checked against the scan's tensors read one element at a time."""
    from trajectory.dashboard import collection
    from trajectory.dashboard.data import round_sig

    scans = []
    finish = collection._layer_dashboard
    monkeypatch.setattr(collection, "_layer_dashboard", lambda m, scan, *a: (scans.append(scan), finish(m, scan, *a))[1])
    g = torch.Generator().manual_seed(9)
    tokens = torch.randint(4, tiny_model.cfg.d_vocab, (N_CHUNKS, P), generator=g)
    tokens[:, 0] = tiny_model.tokenizer.bos_token_id
    t = DashboardTarget("layer_01", random_sae(32, D_SAE, seed=3, hook_name="blocks.1.hook_resid_post"),
                        "blocks.1.hook_resid_post", 1)
    cfg = DashboardConfig(max_examples=3, n_bands=3, band_examples=2, sample_size=9, batch_size=4, window=WINDOW,
                          n_neighbours=0, feature_chunk=5)
    dash = collect(tiny_model, [t], None, tokens, config=cfg, progress=False)[0]
    s, checked = scans[0].sample, 0
    for j, card in enumerate(dash.features):
        want: list[list[tuple[int, int]]] = [[] for _ in range(cfg.n_bands)]
        for r in range(s.values.shape[0]):
            if not math.isfinite(float(s.values[r, j])):
                continue
            a = round_sig(float(s.acts[r, j, s.before]))
            b = min(max(math.ceil(a / scans[0].max_activation(j) * cfg.n_bands) - 1, 0), cfg.n_bands - 1)
            if len(want[b]) < cfg.band_examples:
                want[b].append((int(s.chunk[r, j]), int(s.position[r, j])))
        got = [[(e.chunk, e.position) for e in band.examples] for band in card.bands]
        assert got == want, card.feature
        for band in card.bands:
            assert all(band.low * (1 - 2e-3) < e.activation <= band.high * (1 + 2e-3) for e in band.examples)
        checked += sum(map(len, got))
    assert checked > D_SAE  # the bands hold examples

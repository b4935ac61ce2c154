"""Real analysis on the tiny fixture, checked against brute force over the same corpus."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trajectory.features import real
from trajectory.training.corpus import tokenize_chunks
from trajectory.testing import CORPUS_SENTENCES, random_sae

LAYER = 1
HOOK = f"blocks.{LAYER}.hook_resid_post"
FEATURES = [0, 3, 7, 20, 41]


@pytest.fixture(scope="module")
def tokens(tiny_model):
    return tokenize_chunks(tiny_model, CORPUS_SENTENCES * 2, context_length=10)  # [n, 10], 1 BOS each


def brute_force(model, sae, tokens, feature, max_examples, window, include_bos=False):
    """Each chunk alone, full forward pass, the SAE's encode; every counted position listed
    (BOS positions only with ``include_bos``)."""
    bos = None if include_bos else model.tokenizer.bos_token_id
    rows, per_chunk = [], []
    for c in range(tokens.shape[0]):
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens[c : c + 1])
            acts = sae.encode(cache[HOOK][0])[:, feature]  # [pos]
        per_chunk.append(acts)
        for p in range(tokens.shape[1]):
            if tokens[c, p] != bos:
                rows.append((float(acts[p]), c, p))
    nonzero = [r for r in rows if r[0] != 0]
    top = sorted(nonzero, key=lambda r: (-r[0], r[1], r[2]))[:max_examples]
    windows = []
    for v, c, p in top:
        lo, hi = max(0, p - window[0]), min(tokens.shape[1], p + window[1] + 1)
        ids = tokens[c, lo:hi].tolist()
        acts = [0.0 if i == bos else float(a) for i, a in zip(ids, per_chunk[c][lo:hi])]  # BOS excluded -> shown as 0
        windows.append((ids, acts, p - lo))
    return rows, top, windows


def check_log_histogram(s, live, n_bins):
    """``s``'s histogram against numpy's over the same non-zero values ``live``: edges on
    the grid 10**(-4 + i/20), at most ``n_bins`` bins of equal log width, the first and
    last non-empty, counts equal to ``np.histogram`` (values clipped into the range, as
    the scan counts values below 1e-4 in the first bin and above 1e4 in the last)."""
    edges = np.array(s.histogram_edges)
    assert 0 < len(s.histogram_counts) <= n_bins and len(edges) == len(s.histogram_counts) + 1
    grid = 20 * (np.log10(edges) + 4)
    assert np.allclose(grid, np.round(grid), atol=1e-6) and len(set(np.round(np.diff(grid), 6)[:-1])) <= 1
    assert s.histogram_counts[0] > 0 and s.histogram_counts[-1] > 0
    assert edges[0] <= max(live.min(), 1e-4) * (1 + 1e-6) and live.max() < edges[-1] * (1 + 1e-6)
    # (the batched scan and one forward pass per chunk differ in the last bits; values
    # within 1e-5 of an edge would be ambiguous, and there are none here)
    assert np.abs(np.log10(live[live > 0])[:, None] - np.log10(edges)[None]).min() > 1e-5
    want = np.histogram(live.clip(edges[0], edges[-1] * (1 - 1e-9)), bins=edges)[0]
    assert s.histogram_counts == want.tolist()


@pytest.mark.parametrize("architecture", ["jumprelu", "topk"])
def test_top_contexts_and_density_match_brute_force(tiny_model, tokens, architecture):
    sae = random_sae(32, 64, architecture=architecture, k=8, seed=3, hook_name=HOOK)
    rep = real(tiny_model, sae, FEATURES, tokens, max_examples=6, batch_size=3, window=(3, 2), progress=False)
    assert rep.n_tokens == tokens.numel() - tokens.shape[0]  # BOS excluded
    for f in FEATURES:
        rows, top, windows = brute_force(tiny_model, sae, tokens, f, 6, (3, 2))
        s = rep[f]
        vals = torch.tensor([r[0] for r in rows])
        assert s.n_tokens == len(rows)
        assert s.n_active == int((vals != 0).sum())
        assert s.density == pytest.approx(float((vals != 0).float().mean()))
        assert s.mean_activation == pytest.approx(float(vals.mean()), rel=1e-5, abs=1e-7)
        assert s.max_activation == pytest.approx(float(vals.max()), rel=1e-5)
        assert sum(s.histogram_counts) == s.n_active
        check_log_histogram(s, vals.numpy()[vals.numpy() != 0], n_bins=40)
        assert [e.activation for e in s.examples] == pytest.approx([t[0] for t in top], rel=1e-5)
        assert [(e.context, e.position) for e in s.examples] == [(t[1], t[2]) for t in top]
        for e, (ids, acts, peak) in zip(s.examples, windows):
            assert e.token_ids == ids and e.peak == peak
            assert e.activations == pytest.approx(acts, rel=1e-5, abs=1e-6)
            assert e.tokens == [tiny_model.tokenizer.decode([i]) for i in ids]
        assert s.decoder_norm == pytest.approx(float(sae.W_dec.detach()[f].norm()))
        cos = torch.nn.functional.cosine_similarity(sae.W_dec.detach()[f][None], sae.W_dec.detach(), dim=-1)
        cos[f] = -2.0
        assert (s.decoder_neighbour, s.decoder_neighbour_cosine) == (int(cos.argmax()), pytest.approx(float(cos.max()), abs=1e-5))


def test_some_features_fire_and_some_do_not_everywhere(tiny_model, tokens):
    """Guards the brute-force test against a degenerate SAE (all zero or all active)."""
    sae = random_sae(32, 64, architecture="jumprelu", seed=3, hook_name=HOOK)
    rep = real(tiny_model, sae, FEATURES, tokens, progress=False)
    dens = [rep[f].density for f in FEATURES]
    assert any(0 < d < 1 for d in dens)


def test_include_bos_statistics_count_every_position(tiny_model, tokens):
    """With ``include_bos`` the statistics are those of all positions, BOS included, and
    differ from the default ones (the random SAE fires on BOS for some features)."""
    sae = random_sae(32, 64, seed=3, hook_name=HOOK)
    with_bos = real(tiny_model, sae, FEATURES, tokens, include_bos=True, max_examples=6, window=(3, 2), progress=False)
    without = real(tiny_model, sae, FEATURES, tokens, max_examples=6, window=(3, 2), progress=False)
    assert with_bos.n_tokens == tokens.numel()
    bos_fires = []
    for f in FEATURES:
        rows, top, windows = brute_force(tiny_model, sae, tokens, f, 6, (3, 2), include_bos=True)
        vals = np.array([r[0] for r in rows])
        live = vals[vals != 0]
        s = with_bos[f]
        assert len(rows) == tokens.numel() and s.n_tokens == len(rows)
        assert s.n_active == len(live)
        assert s.density == pytest.approx(len(live) / len(rows))
        assert s.mean_activation == pytest.approx(vals.mean(), rel=1e-5, abs=1e-7)
        assert s.mean_active == pytest.approx(live.mean(), rel=1e-5)
        assert s.max_activation == pytest.approx(vals.max(), rel=1e-5)
        # the histogram holds exactly the non-zero values of all positions: log-spaced bins
        # (20 per decade from 1e-4) merged into at most n_bins, spanning the values
        check_log_histogram(s, live, n_bins=40)
        assert [(e.context, e.position) for e in s.examples] == [(t[1], t[2]) for t in top]
        for e, (ids, acts, peak) in zip(s.examples, windows):  # BOS shows its own activation
            assert e.token_ids == ids and e.activations == pytest.approx(acts, rel=1e-5, abs=1e-6)
        bos_fires.append(any(v != 0 for v, c, p in rows if p == 0))
        if bos_fires[-1]:
            assert (s.n_active, s.histogram_counts) != (without[f].n_active, without[f].histogram_counts)
    assert any(bos_fires), "the test needs a feature that fires on BOS"


def test_corpus_as_documents_and_bad_features(tiny_model):
    sae = random_sae(32, 64, seed=3, hook_name=HOOK)
    rep = real(tiny_model, sae, "0-2", CORPUS_SENTENCES, context_length=8, progress=False)
    assert rep.feature_ids == [0, 1, 2] and rep.n_tokens > 0 and rep.corpus == "documents"
    with pytest.raises(ValueError, match="64 features"):
        real(tiny_model, sae, "60-70", CORPUS_SENTENCES, progress=False)


def test_sae_of_another_width_is_a_clear_error_in_the_python_api(tiny_model):
    from trajectory.features import synthetic

    wrong = random_sae(48, 16, seed=1, hook_name=HOOK)  # the tiny model's residual stream is 32 wide
    with pytest.raises(ValueError, match=r"d_in 48 .*width 32.*another model"):
        real(tiny_model, wrong, "0-2", CORPUS_SENTENCES, progress=False)
    with pytest.raises(ValueError, match=r"d_in 48 .*width 32.*another model"):
        synthetic(tiny_model, wrong, "0", n_steps=2, progress=False)


def test_scan_statistics_and_merged_histogram_without_a_model():
    """:class:`FeatureScan` over two hand-made batches against numpy over all values at
    once; ``n_bins=3`` merges the fine log bins (exact counts, edges on the grid)."""
    from trajectory.features.corpus_scan import FeatureScan, coarse_histogram

    rng = np.random.default_rng(0)
    vals = np.where(rng.random((2, 3, 5, 2)) < 0.6, np.exp(rng.normal(0, 1.5, (2, 3, 5, 2))), 0.0).astype(np.float32)
    vals[0, 0, 0, 0] = 2e-5  # below the first edge: counted in the first bin
    mask = np.ones((2, 3, 5), dtype=bool)
    mask[:, :, 0] = False  # "BOS": not counted
    scan = FeatureScan(2, max_examples=3, window=(1, 1))
    for b in range(2):
        m = torch.from_numpy(mask[b])
        sel = torch.from_numpy(vals[b]) * m[..., None]
        scan.add(sel, m, torch.arange(15).reshape(3, 5), start=3 * b)
    counted = vals[mask]  # [n, 2]
    assert scan.n_tokens == mask.sum()
    for j in range(2):
        live = counted[:, j][counted[:, j] != 0]
        assert int(scan.n_active[j]) == len(live) and scan.max_activation(j) == pytest.approx(live.max())
        assert float(scan.act_sum[j]) == pytest.approx(float(live.sum(dtype=np.float64)), rel=1e-6)
        edges, counts = coarse_histogram(*scan.histogram(j), 3)
        assert len(counts) <= 3 and sum(counts) == len(live)
        want = np.histogram(live.clip(edges[0], edges[-1] * (1 - 1e-9)), bins=np.array(edges))[0]
        assert counts == want.tolist()
        assert [e.activation for e in scan.top.examples(j, str)] == pytest.approx(sorted(live)[::-1][:3])

"""The evolution engine against an independent reference: one forward pass per prefix,
contributions head by head, the SAE's own ``encode`` on every step vector, and a
plain sort for the top-k among active features."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trajectory.engine import evolve, evolve_many, select_active_topk

PROMPT = "the final correct answer : max , mark and smith are in the empty dark room"
K = 12


# ------------------------------------------------------------------ reference
def ref_topk(acts: np.ndarray, k: int):
    """Active features (> 0), by activation descending then index ascending, first k."""
    idx = np.flatnonzero(acts > 0)
    order = np.lexsort((idx, -acts[idx]))
    idx = idx[order][:k]
    return idx, acts[idx], int((acts > 0).sum())


def ref_evolution(model, bank, prompt, k, postnorm):
    """{(n, L): [(indices, activations, n_active) per step]} with one forward pass per prefix."""
    toks = model.to_tokens(prompt)[0]
    N = toks.shape[0]
    out = {}
    for n in range(2, N + 1):
        with torch.no_grad():
            _, cache = model.run_with_cache(toks[None, :n])
        q = n - 1
        for L in bank.layers:
            pattern = cache[f"blocks.{L}.attn.hook_pattern"][0, :, q]  # [h, k]
            v = cache[f"blocks.{L}.attn.hook_v"][0]  # [k, kv, dh]
            W_O, b_O = model.blocks[L].attn.W_O, model.blocks[L].attn.b_O
            H, n_kv = W_O.shape[0], v.shape[1]
            c = torch.stack([sum(pattern[h, j] * v[j, h // (H // n_kv)] @ W_O[h] for h in range(H)) for j in range(n)])
            pre = cache[f"blocks.{L}.hook_resid_pre"][0, q]
            vecs = [pre]
            for j in range(n):
                s = c[: j + 1].sum(0) + b_O
                if hasattr(model.blocks[L], "ln1_post"):
                    norm = model.blocks[L].ln1_post
                    if postnorm == "per_partial_sum":
                        rms = (s.pow(2).mean() + norm.eps).sqrt()
                    else:
                        rms = cache[f"blocks.{L}.ln1_post.hook_scale"][0, q, 0]
                    s = s / rms * norm.w
                vecs.append(pre + s)
            vecs.append(cache[f"blocks.{L}.hook_resid_post"][0, q])
            with torch.no_grad():
                acts = [bank[L].encode(x[None])[0].float().numpy() for x in vecs]  # one call per step vector
            out[(n, L)] = [ref_topk(a, k) for a in acts]
    return out


def assert_matches_reference(evo, ref, atol=1e-4):
    checked = 0
    for (n, L), steps in ref.items():
        assert len(steps) == len(evo.steps(n))
        for s, (idx, val, n_act) in enumerate(steps):
            got_idx, got_val = evo.topk(n, L, s)
            np.testing.assert_array_equal(got_idx, idx, err_msg=f"n={n} L={L} step={s}")
            np.testing.assert_allclose(got_val, val, atol=atol, rtol=1e-4, err_msg=f"n={n} L={L} step={s}")
            assert evo.n_active(n, L, s) == n_act
            checked += 1
    assert checked > 50


@pytest.fixture(scope="module")
def reference(tiny_model, tiny_bank):
    return ref_evolution(tiny_model, tiny_bank, PROMPT, K, "per_partial_sum")


# ------------------------------------------------------------- equivalences
@pytest.mark.parametrize("method", ["feature_space", "direct"])
def test_one_pass_equals_separate_passes_per_prefix(tiny_model, tiny_bank, reference, method):
    evo = evolve(tiny_model, tiny_bank, PROMPT, k=K, method=method, batch_size=40, progress=False)
    assert evo.layers == [0, 1, 2] and evo.tokens[0] == "<bos>" and evo.postnorm == "per_partial_sum"
    assert_matches_reference(evo, reference)


def test_frozen_scale_variant_matches_reference(tiny_model, tiny_bank):
    ref = ref_evolution(tiny_model, tiny_bank, "mark gave flashlight to max and smith left", K, "frozen_scale")
    evo = evolve(tiny_model, tiny_bank, "mark gave flashlight to max and smith left", k=K, postnorm="frozen_scale", progress=False)
    assert evo.postnorm == "frozen_scale"
    assert_matches_reference(evo, ref)


@pytest.mark.parametrize("architecture", ["topk", "standard"])
def test_other_architectures_match_reference(tiny_model, architecture):
    from trajectory.testing import tiny_bank

    bank = tiny_bank(tiny_model, architecture=architecture, d_sae=48, k=8)
    prompt = "smith left . mark gave flashlight to"
    evo = evolve(tiny_model, bank, prompt, k=K, progress=False)
    assert_matches_reference(evo, ref_evolution(tiny_model, bank, prompt, K, "per_partial_sum"))


def test_gpt2_style_model_b_O_in_every_partial_sum(tiny_model):
    from trajectory.testing import tiny_bank, tiny_gpt2_model

    model = tiny_gpt2_model()
    bank = tiny_bank(model, d_sae=48)
    prompt = "the cat sat on the table"
    evo = evolve(model, bank, prompt, k=K, progress=False)
    assert evo.postnorm == "none"
    assert_matches_reference(evo, ref_evolution(model, bank, prompt, K, "per_partial_sum"))


def _encode_topk(sae, x, k):
    with torch.no_grad():
        return ref_topk(sae.encode(x[None])[0].float().numpy(), k)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_last_attention_step_is_resid_mid_and_mlp_is_resid_post(tiny_model, tiny_bank, layer):
    evo = evolve(tiny_model, tiny_bank, PROMPT, k=K, layers=[layer], progress=False)
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tiny_model.to_tokens(PROMPT))
    sae = tiny_bank[layer]
    for n in evo.prefix_lengths:
        q = n - 1
        for step, hook in (("last_attention", "hook_resid_mid"), ("mlp", "hook_resid_post"), ("initial", "hook_resid_pre")):
            idx, val, _ = _encode_topk(sae, cache[f"blocks.{layer}.{hook}"][0, q], K)
            got_idx, got_val = evo.topk(n, layer, step)
            np.testing.assert_array_equal(got_idx, idx)
            np.testing.assert_allclose(got_val, val, atol=1e-4)


def test_bf16_bank_runs_and_agrees(tiny_model):
    from trajectory.testing import tiny_bank

    bank32 = tiny_bank(tiny_model)
    bank16 = tiny_bank(tiny_model, dtype="bfloat16")
    assert bank16[0].W_enc.dtype == torch.bfloat16
    fast = evolve(tiny_model, bank16, PROMPT, k=K, progress=False)
    direct = evolve(tiny_model, bank16, PROMPT, k=K, method="direct", progress=False)
    exact = evolve(tiny_model, bank32, PROMPT, k=K, progress=False)
    assert fast.metadata["saes"]["0"]["dtype"] == "bfloat16"
    for other in (direct, exact):  # bf16 rounding moves features at the margins only
        same = total = 0
        for L in fast.layers:
            for n in fast.prefix_lengths:
                for s in range(n + 2):
                    a, b = fast.topk(n, L, s)[0][:3], other.topk(n, L, s)[0][:3]
                    same += len(set(a) & set(b))
                    total += max(len(a), 1)
        assert same / total > 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(tiny_model, tiny_bank):  # pragma: no cover - needs a GPU
    cpu = evolve(tiny_model, tiny_bank, PROMPT, k=K, progress=False)
    gpu = evolve(tiny_model, tiny_bank, PROMPT, k=K, device="cuda", progress=False)
    for L in cpu.layers:
        np.testing.assert_allclose(cpu.rows[L].values, gpu.rows[L].values, atol=1e-4)


# -------------------------------------------------------------- top-k rules
@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_select_active_topk_ties_zeros_and_fewer_than_k(k):
    acts = torch.tensor(
        [
            [0.0, 2.0, -1.0, 2.0, 0.5, 0.0, 2.0, 3.0],  # ties at 2.0, negatives and zeros never ranked
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # nothing active
            [0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # one active
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # all tied
        ]
    )
    idx, val, counts, n_active = select_active_topk(acts, k)
    np.testing.assert_array_equal(n_active, [5, 0, 1, 8])
    expected = [ref_topk(a, k) for a in acts.numpy()]
    np.testing.assert_array_equal(counts, [len(e[0]) for e in expected])
    np.testing.assert_array_equal(idx, np.concatenate([e[0] for e in expected]))
    np.testing.assert_array_equal(val, np.concatenate([e[1] for e in expected]))
    if k == 3:  # spelled out: 3.0 first, then the tied 2.0s by index
        assert idx[:3].tolist() == [7, 1, 3]


def test_select_active_topk_dense_and_sparse_paths_agree():
    g = torch.Generator().manual_seed(0)
    acts = torch.randint(-3, 4, (40, 300), generator=g).float() / 2  # many ties, many active
    for k in (2, 50, 400):  # k=2: dense path (active ≫ 4k); 400: sparse path
        idx, val, counts, _ = select_active_topk(acts, k)
        expected = [ref_topk(a, k) for a in acts.numpy()]
        np.testing.assert_array_equal(idx, np.concatenate([e[0] for e in expected]))
        np.testing.assert_array_equal(counts, [len(e[0]) for e in expected])


def test_select_active_topk_with_a_mask_that_marks_non_positive_values():
    # a given mask is authoritative (e.g. a JumpReLU threshold below zero): ranking
    # still goes by value descending, ties by index
    g = torch.Generator().manual_seed(1)
    acts = torch.randint(-2, 3, (6, 20), generator=g).float()
    active = torch.rand(6, 20, generator=g) < 0.5
    for k in (5, 400):  # the sparse path (active entries ≤ 4·rows·k)
        idx, val, counts, n_active = select_active_topk(acts, k, active)
        want = []
        for a, m in zip(acts.tolist(), active.tolist()):
            ranked = sorted((j for j in range(len(a)) if m[j]), key=lambda j: (-a[j], j))[:k]
            want.append(ranked)
        np.testing.assert_array_equal(n_active, active.sum(-1).numpy())
        np.testing.assert_array_equal(counts, [len(w) for w in want])
        np.testing.assert_array_equal(idx, [j for w in want for j in w])


def test_candidate_lists_rank_like_the_dense_matrix():
    """A TopK SAE's own top-c lists (any order, ties, zeros and negatives among them) give
    what select_active_topk gives on the dense activation matrix they scatter into."""
    from trajectory.engine import select_candidates_topk

    g = torch.Generator().manual_seed(2)
    R, f, c = 30, 50, 12
    idx = torch.stack([torch.randperm(f, generator=g)[:c] for _ in range(R)])  # distinct, unordered
    vals = torch.randint(-2, 5, (R, c), generator=g).float() / 2  # many ties
    dense = torch.zeros(R, f).scatter_(1, idx, vals.relu())
    for k in (1, 3, 400):
        got = select_candidates_topk(vals.relu(), idx, k)
        want = select_active_topk(dense, k)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_fewer_active_than_k_in_evolution(tiny_model, tiny_bank):
    evo = evolve(tiny_model, tiny_bank, "the dark room", k=400, layers=[0], progress=False)
    for n in evo.prefix_lengths:
        for s in range(n + 2):
            idx, val = evo.topk(n, 0, s)
            assert len(idx) == evo.n_active(n, 0, s) < 64
            assert np.all(val > 0) and np.all(np.diff(val) <= 0)


# ------------------------------------------------------------------ bad input
def test_bad_inputs_give_clear_errors(tiny_model, tiny_bank):
    from trajectory.sae_bank import SAEBank
    from trajectory.testing import random_sae, tiny_bank as make_bank

    with pytest.raises(ValueError, match="prompt is empty"):
        evolve(tiny_model, tiny_bank, "   ", progress=False)
    with pytest.raises(ValueError, match="at least 2"):
        evolve(tiny_model, tiny_bank, [2], progress=False)
    with pytest.raises(ValueError, match="more than max_tokens=4.*--max-tokens"):
        evolve(tiny_model, tiny_bank, "the final correct answer", max_tokens=4, progress=False)
    with pytest.raises(ValueError, match="model's context of 128"):
        evolve(tiny_model, tiny_bank, [2] + [10] * 140, max_tokens=None, progress=False)
    with pytest.raises(ValueError, match=r"layer\(s\) \[5\] out of range"):
        evolve(tiny_model, tiny_bank, PROMPT, layers=[0, 5], progress=False)
    partial = SAEBank({1: tiny_bank.entry(1)}, model_name="tiny-gemma2")
    with pytest.raises(ValueError, match=r"layer\(s\) \[0\] are not in the SAE bank.*trajectory preload"):
        evolve(tiny_model, partial, PROMPT, layers=[0, 1], progress=False)
    narrow = SAEBank.from_saes({0: random_sae(16, 32)})
    with pytest.raises(ValueError, match=r"d_in[= ]16.*(d_model=32|width 32)"):
        evolve(tiny_model, narrow, PROMPT, progress=False)
    wrong_hook = make_bank(tiny_model, hook_template="blocks.{layer}.hook_attn_out")
    with pytest.raises(ValueError, match="reads 'blocks.0.hook_attn_out'"):
        evolve(tiny_model, wrong_hook, PROMPT, progress=False)
    shifted = SAEBank.from_saes({1: tiny_bank[0]}, hook_template="blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="SAE of layer 1 reads 'blocks.0.hook_resid_post'"):
        evolve(tiny_model, shifted, PROMPT, progress=False)
    with pytest.raises(ValueError, match="unknown postnorm"):
        evolve(tiny_model, tiny_bank, PROMPT, postnorm="half", progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        evolve(tiny_model, tiny_bank, PROMPT, method="fast", progress=False)


# ------------------------------------------------------------ batch + resume
def test_evolve_many_resumes_after_interruption(tiny_model, tiny_bank, tmp_path, monkeypatch):
    import trajectory.engine as engine
    from trajectory.evolution import Evolution

    prompts = ["the dark room", "mark gave flashlight to", "smith left ."]
    real = engine.evolve
    calls = []

    def crashing(model, bank, prompt, **kw):
        calls.append(prompt)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, bank, prompt, **kw)

    monkeypatch.setattr(engine, "evolve", crashing)
    with pytest.raises(KeyboardInterrupt):
        evolve_many(tiny_model, tiny_bank, prompts, tmp_path, k=5, progress=False)
    first = tmp_path / "prompt_0000.safetensors"
    assert first.exists() and not (tmp_path / "prompt_0001.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written files
    mtime = first.stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(engine, "evolve", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    paths = evolve_many(tiny_model, tiny_bank, prompts, tmp_path, k=5, progress=False)
    assert len(calls) == 2  # only the two missing prompts
    assert first.stat().st_mtime_ns == mtime
    evos = [Evolution.load(p) for p in paths]
    assert [e.tokens[1:] for e in evos] == [p.split() for p in prompts]
    assert [e.metadata["prompt"] for e in evos] == prompts
    fresh = real(tiny_model, tiny_bank, prompts[1], k=5, progress=False)
    for L in fresh.layers:
        np.testing.assert_array_equal(evos[1].rows[L].indices, fresh.rows[L].indices)

    calls.clear()
    evolve_many(tiny_model, tiny_bank, prompts, tmp_path, k=5, progress=False)
    assert calls == []  # all done: nothing recomputed
    paths[2].write_bytes(b"garbage")  # a corrupt file is recomputed
    evolve_many(tiny_model, tiny_bank, prompts, tmp_path, k=5, progress=False)
    assert len(calls) == 1 and Evolution.load(paths[2]).k == 5
    with pytest.raises(ValueError, match="other settings.*--overwrite"):
        evolve_many(tiny_model, tiny_bank, prompts, tmp_path, k=7, progress=False)
    # same prompts and settings, other SAEs: the old files are not silently kept
    from trajectory.testing import tiny_bank as make_bank

    other = make_bank(tiny_model, seed=7, d_sae=32)
    with pytest.raises(ValueError, match="SAE bank.*--overwrite"):
        evolve_many(tiny_model, other, prompts, tmp_path, k=5, progress=False)
    calls.clear()
    evolve_many(tiny_model, other, prompts, tmp_path, k=5, progress=False, overwrite=True)
    assert len(calls) == 3 and Evolution.load(paths[0]).metadata["saes"]["0"]["d_sae"] == 32


# ------------------------------------------------------------------------- CLI
def test_cli_evolve_prompt_and_prompt_file(tiny_model, tiny_bank, tmp_path, monkeypatch, capsys):
    import trajectory.cli.evolve as cli_evolve
    from trajectory.cli import main
    from trajectory.evolution import Evolution

    monkeypatch.setattr(cli_evolve, "load_model", lambda name, device=None: tiny_model)
    monkeypatch.setattr(cli_evolve, "open_bank", lambda *a, **kw: tiny_bank)
    common = ["evolve", "--preset", "offline", "--k", "5", "--layers", "0-1", "--device", "cpu", "--no-progress"]
    out = tmp_path / "one" / "evo.safetensors"
    assert main(common + ["--prompt", "mark gave flashlight to", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    evo = Evolution.load(out)
    assert (evo.layers, evo.k, evo.preset, evo.tokens[1:]) == ([0, 1], 5, "offline", ["mark", "gave", "flashlight", "to"])

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the dark room\n\nsmith left .\n")
    folder = tmp_path / "many"
    assert main(common + ["--prompt-file", str(prompts), "--out", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["index.json", "prompt_0000.safetensors", "prompt_0001.safetensors"]
    assert "wrote 2 evolution file(s)" in capsys.readouterr().out

    assert main(common + ["--prompt", " ", "--out", str(out)]) == 1
    assert "prompt is empty" in capsys.readouterr().err
    assert main(common + ["--prompt", "the final correct answer", "--max-tokens", "3", "--out", str(out)]) == 1
    assert "--max-tokens" in capsys.readouterr().err
    assert main(["evolve", "--layers", "0-30", "--prompt", "the room", "--no-progress"]) == 1
    assert "out of range" in capsys.readouterr().err


def test_cli_missing_bank_says_run_preload(tmp_path):
    from trajectory.cli.evolve import open_bank

    with pytest.raises(FileNotFoundError, match=r"run `trajectory preload --preset offline` first"):
        open_bank("offline", tmp_path / "no-bank")


@pytest.mark.parametrize("piece_elements", [0, 2**30])
def test_feature_space_blocks_and_chunks_agree_with_direct(tiny_model, tiny_bank, monkeypatch, piece_elements):
    """Many key blocks (partial last ones) and query chunks: still the direct result.
    ``_PIECE_ELEMENTS`` 0 keeps blocks at 3 keys; 2**30 grows them as narrow SAEs do."""
    import trajectory.engine as engine

    monkeypatch.setattr(engine, "_KEY_BLOCK", 3)
    monkeypatch.setattr(engine, "_PIECE_ELEMENTS", piece_elements)
    prompt = PROMPT + " . smith left . mark gave flashlight to max"
    for postnorm in ("per_partial_sum", "frozen_scale"):
        fast = evolve(tiny_model, tiny_bank, prompt, k=K, postnorm=postnorm, method="feature_space", batch_size=50, progress=False)
        slow = evolve(tiny_model, tiny_bank, prompt, k=K, postnorm=postnorm, method="direct", progress=False)
        for L in fast.layers:
            np.testing.assert_array_equal(fast.rows[L].indices, slow.rows[L].indices)
            np.testing.assert_array_equal(fast.rows[L].n_active, slow.rows[L].n_active)
            np.testing.assert_allclose(fast.rows[L].values, slow.rows[L].values, atol=1e-4)


# ------------------------------------------------------------- real model
@pytest.mark.integration
def test_offline_gemma3_one_pass_equals_per_prefix_reference(offline_model):
    """Gemma 3 270M (q/k norms, 1 KV head, sliding windows): same results as the reference."""
    from trajectory.attention import attn_contributions
    from trajectory.sae_bank import SAEBank
    from trajectory.testing import random_sae

    model = offline_model
    layers = [0, 5]
    bank = SAEBank.from_saes(
        {L: random_sae(model.cfg.d_model, 256, seed=L, hook_name=f"blocks.{L}.hook_resid_post") for L in layers},
        model_name=model.cfg.model_name,
    )
    prompt = "Mark gave the flashlight to"
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(prompt))
    for L in layers:
        c = attn_contributions(model, cache, L, postnorm="frozen_scale")
        torch.testing.assert_close(c.sum(1), cache[f"blocks.{L}.hook_attn_out"][0], atol=1e-3, rtol=1e-4)
    evo = evolve(model, bank, prompt, k=K, layers=layers, progress=False)
    assert_matches_reference(evo, ref_evolution(model, bank, prompt, K, "per_partial_sum"), atol=1e-3)


# ---------------------------------------------------------- benchmark baselines
def test_benchmark_baselines_compute_the_same_evolution(tiny_model, tiny_bank, tmp_path):
    """The benchmark's re-implementation of the original loop ranks the same features
    (its zero-activation tail aside), and the floor encodes every step vector."""
    from trajectory.bench import _disk_copies, naive_floor, original_loop, prompt_of_length

    tokens = prompt_of_length(tiny_model, 10)
    evo = evolve(tiny_model, tiny_bank, tokens, k=K, progress=False)
    dirs = _disk_copies(tiny_bank, [0, 1, 2], tmp_path)
    orig = original_loop(tiny_model, dirs, tokens, [0, 1, 2], k=K)
    for (n, L), top in orig.items():
        for s in range(n + 2):
            idx, _ = evo.topk(n, L, s)
            assert set(top[s, : len(idx)].tolist()) == set(idx.tolist())
    assert naive_floor(tiny_model, tiny_bank, tokens, [0, 1, 2]) == 3 * sum(n + 2 for n in range(2, 11))

"""The activation store: what collect_activations writes equals the model's own hooks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.training.conftest import CTX, hook_acts
from trajectory.training.corpus import load_corpus, tokenize_chunks
from trajectory.training.store import ActivationStore, collect_activations


def test_store_equals_model_hooks_bos_excluded(tiny_model, corpus_file, tmp_path):
    _, docs = load_corpus(corpus_file)
    chunks = tokenize_chunks(tiny_model, docs, CTX)[:10]
    store = collect_activations(tiny_model, chunks, tmp_path / "s", layers=[0, 2], dtype="float32",
                                batch_size=3, progress=False)
    again = ActivationStore.open(tmp_path / "s")
    assert again == store and store.n_tokens == 10 * (CTX - 1)
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["format_version"] == 1
    assert (store.tokens == chunks[:, 1:].reshape(-1).numpy()).all()
    assert (store.index[:, 1] > 0).all()  # position 0 (BOS) never stored
    for layer in (0, 2):
        ref = hook_acts(tiny_model, chunks, layer)
        got = torch.from_numpy(np.array(store.activations(f"blocks.{layer}.hook_resid_post")))
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    with pytest.raises(KeyError, match="not in this store"):
        store.activations("blocks.1.hook_resid_post")
    half = collect_activations(tiny_model, chunks, tmp_path / "h", layers=[1], dtype="float16", progress=False)
    ref = hook_acts(tiny_model, chunks, 1)
    got = torch.from_numpy(np.asarray(half.activations("blocks.1.hook_resid_post"), dtype=np.float32))
    torch.testing.assert_close(got, ref, rtol=2e-3, atol=2e-3)


def test_float16_store_refuses_overflow(tmp_path):
    from trajectory.testing import tiny_model as make

    model = make()
    with torch.no_grad():
        model.embed.W_E.mul_(1e6)  # residual far beyond float16's range
    chunks = tokenize_chunks(model, ["the cat sat on the table ."] * 4, 6)
    with pytest.raises(OverflowError, match="dtype='float32'"):
        collect_activations(model, chunks, tmp_path / "o", layers=[0], dtype="float16", progress=False)
    store = collect_activations(model, chunks, tmp_path / "o32", layers=[0], dtype="float32", progress=False)
    assert np.isfinite(np.asarray(store.activations("blocks.0.hook_resid_post"))).all()


def test_store_bad_arguments(tiny_model, tmp_path):
    chunks = tokenize_chunks(tiny_model, ["the cat sat on the table ."] * 4, 6)
    with pytest.raises(ValueError, match="out of range"):
        collect_activations(tiny_model, chunks, tmp_path / "a", layers=[3], progress=False)
    with pytest.raises(ValueError, match="dtype must be"):
        collect_activations(tiny_model, chunks, tmp_path / "b", layers=[0], dtype="bfloat16", progress=False)
    with pytest.raises(FileNotFoundError, match="not an activation store"):
        ActivationStore.open(tmp_path / "nothing")


@pytest.mark.integration
def test_offline_model_store_matches_hooks_and_skips_huge_bos(offline_model, tmp_path):
    _, docs = load_corpus(None)
    chunks = tokenize_chunks(offline_model, docs[:3], 16)[:2]
    store = collect_activations(offline_model, chunks, tmp_path / "s", layers=[0, 17], progress=False)
    assert store.n_tokens == 2 * 15
    for layer in (0, 17):
        hook = f"blocks.{layer}.hook_resid_post"
        _, cache = offline_model.run_with_cache(chunks, names_filter=hook)
        ref = cache[hook][:, 1:].reshape(-1, offline_model.cfg.d_model)
        got = torch.from_numpy(np.array(store.activations(hook)))
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-3)
        # the BOS residual left out is far larger than any stored one
        assert cache[hook][:, 0].norm(dim=-1).min() > got.norm(dim=-1).max()

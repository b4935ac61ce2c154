"""Fixtures of the training tests: a word corpus and one bank trained on the tiny model."""
from __future__ import annotations

import random

import pytest

from trajectory.testing import CORPUS_SENTENCES
from trajectory.training.config import TrainConfig
from trajectory.training.corpus import load_corpus, tokenize_chunks
from trajectory.training.train import train_bank

CTX = 24


def hook_acts(model, chunks, layer):
    """resid_post of ``layer`` at non-BOS positions, ``[N, d_model]``, from a full forward pass."""
    hook = f"blocks.{layer}.hook_resid_post"
    _, cache = model.run_with_cache(chunks, names_filter=hook)
    return cache[hook][chunks != model.tokenizer.bos_token_id]


@pytest.fixture(scope="package")
def corpus_file(tmp_path_factory):
    """Random sentences over the tiny vocabulary's corpus words (deterministic)."""
    rng = random.Random(0)
    words = " ".join(CORPUS_SENTENCES).split()
    docs = [" ".join(rng.choice(words) for _ in range(120)) for _ in range(40)]
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    path.write_text("\n".join(docs), encoding="utf-8")
    return path


@pytest.fixture(scope="package")
def trained(tiny_model, corpus_file):
    """``(bank, chunks)``: a bank of all 3 layers, and the corpus chunks it was cut from."""
    config = TrainConfig(corpus=str(corpus_file), d_sae=64, k=4, n_train_tokens=3000, n_heldout_tokens=600,
                         context_length=CTX, batch_size=128, loss_chunks=8, seed=1)
    bank = train_bank(tiny_model, config, progress=False)
    _, docs = load_corpus(corpus_file)
    chunks = tokenize_chunks(tiny_model, docs, CTX, max_tokens=4 * (3000 + 600))
    assert len(chunks) == bank.metadata["training"]["n_corpus_chunks"]
    return bank, chunks

"""Corpus loading, chunking and the train / held-out split."""
from __future__ import annotations

import pytest

from trajectory.training.corpus import CorpusError, default_corpus, load_corpus, split_chunks, tokenize_chunks


def test_default_corpus_needs_no_download_and_is_deterministic():
    from pydoc_data.topics import topics

    docs = default_corpus()
    assert docs == default_corpus()
    assert len(docs) > 500 and sum(map(len, docs)) > 400_000
    assert topics["assert"].strip() in docs  # the documentation topics are in
    assert any(d.startswith("OrderedDict: ") for d in docs)  # and module docstrings
    name, same = load_corpus(None)
    assert name == "default" and same == docs


def test_load_file(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("the cat sat on the table .\nthe dog ran .", encoding="utf-8")
    name, docs = load_corpus(str(path))
    assert name == "story.txt"
    assert docs == ["the cat sat on the table .\nthe dog ran ."]


def test_load_folder_reads_txt_and_md_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.md").write_text("first", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third", encoding="utf-8")
    (tmp_path / "skip.py").write_text("print('not text')", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("   \n", encoding="utf-8")
    name, docs = load_corpus(tmp_path)
    assert name == tmp_path.name
    assert docs == ["first", "second", "third"]


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(CorpusError, match="neither an existing file nor a folder"):
        load_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no .txt/.md files"):
        load_corpus(tmp_path / "empty")
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n", encoding="utf-8")
    with pytest.raises(CorpusError, match="is empty"):
        load_corpus(blank)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CorpusError, match="not UTF-8"):
        load_corpus(binary)


def test_hub_dataset_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(CorpusError, match="no local file or folder.*Hugging Face dataset.*HF_HUB_OFFLINE"):
        load_corpus("hf:nobody/no-such-dataset")


def test_tokenize_chunks(tiny_model):
    docs = ["the cat sat on the table .", "the dog ran to the door ."]
    chunks = tokenize_chunks(tiny_model, docs, context_length=5)
    tok = tiny_model.tokenizer
    stream = []
    for d in docs:
        stream += tok(d, add_special_tokens=False)["input_ids"] + tok("\n\n", add_special_tokens=False)["input_ids"]
    n = len(stream) // 4
    assert chunks.shape == (n, 5)
    assert (chunks[:, 0] == tok.bos_token_id).all()
    assert chunks[:, 1:].reshape(-1).tolist() == stream[: n * 4]
    assert tokenize_chunks(tiny_model, docs, context_length=5, max_tokens=8).shape == (2, 5)
    with pytest.raises(ValueError, match="fewer than one chunk"):
        tokenize_chunks(tiny_model, ["the"], context_length=64)


def test_split_chunks_is_a_deterministic_partition():
    train, held = split_chunks(50, 7, seed=3)
    assert len(held) == 7 and sorted(train + held) == list(range(50))
    assert (train, held) == split_chunks(50, 7, seed=3)
    assert held != split_chunks(50, 7, seed=4)[1]
    sub_train, sub_held = split_chunks(50, 7, seed=3, n_train=10)
    assert sub_held == held and len(sub_train) == 10 and not set(sub_train) & set(held)
    with pytest.raises(ValueError, match="at least 2 chunks"):
        split_chunks(1, 1)

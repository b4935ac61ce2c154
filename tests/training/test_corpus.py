"""Corpus loading, chunking and the train / held-out split."""
from __future__ import annotations

import pytest

from trajectory.training.corpus import (
    MIXED_SEED,
    CorpusError,
    default_corpus,
    english_corpus,
    load_corpus,
    mixed_corpus,
    named_corpus,
    python_docs_corpus,
    split_chunks,
    tokenize_chunks,
)


def test_python_docs_corpus_needs_no_download_and_is_deterministic():
    from pydoc_data.topics import topics

    docs = python_docs_corpus()
    assert docs == python_docs_corpus()
    assert len(docs) > 500 and sum(map(len, docs)) > 400_000
    assert topics["assert"].strip() in docs  # the documentation topics are in
    assert any(d.startswith("OrderedDict: ") for d in docs)  # and module docstrings
    assert load_corpus("python-docs") == ("python-docs", docs)


def test_english_corpus_is_the_packaged_prose():
    import json
    from importlib import resources

    # independent read of the package's data file: every non-image block's text is in
    raw = json.loads(resources.files("markov_draftjs").joinpath("content.json").read_text(encoding="utf-8"))
    texts = [b["text"].strip() for state in raw for b in state["blocks"] if b["type"] != "atomic" and b["text"].strip()]
    docs = english_corpus()
    assert docs == english_corpus()
    assert len(docs) == len(raw) and "\n".join(docs) == "\n".join(texts)
    words = " ".join(docs).lower().split()
    assert len(words) > 100_000
    for common in ("the", "and", "he", "said", "her", "was"):  # ordinary English, not code
        assert words.count(common) > 300, common
    assert load_corpus("english") == ("english", docs)


def test_default_corpus_is_both_shuffled_with_a_seed():
    english, python = english_corpus(), python_docs_corpus()
    docs = default_corpus()
    assert docs == default_corpus() == mixed_corpus(MIXED_SEED)
    assert sorted(docs) == sorted(english + python)  # all of both, nothing else
    assert docs != english + python and mixed_corpus(MIXED_SEED + 1) != docs  # shuffled, by the seed
    # interleaved: each half of the list holds both kinds in about their overall share
    share = len(english) / len(docs)
    is_english = set(english)
    for half in (docs[: len(docs) // 2], docs[len(docs) // 2 :]):
        assert abs(sum(d in is_english for d in half) / len(half) - share) < 0.1
    chars = sum(map(len, english)) / sum(map(len, docs))
    assert 0.4 < chars < 0.65  # about half English prose by characters
    assert load_corpus(None) == ("mixed", docs) == load_corpus("default") == load_corpus("mixed")


def test_default_corpus_falls_back_to_python_docs_without_the_english_package(monkeypatch, caplog):
    import builtins

    real_import = builtins.__import__

    def no_markov(name, *args, **kwargs):
        if name.startswith("markov_draftjs"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_markov)
    with pytest.raises(CorpusError, match="pip install markov-draftjs"):
        load_corpus("english")
    with pytest.raises(CorpusError, match="pip install markov-draftjs"):
        load_corpus("mixed")
    with caplog.at_level("WARNING", logger="trajectory.training.corpus"):
        name, docs = load_corpus(None)
    assert name == "python-docs" and docs == python_docs_corpus()
    assert "falling back to the Python documentation" in caplog.text


def test_unknown_corpus_name_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in ("englsh", "Mixed", "wikipedia"):
        with pytest.raises(CorpusError, match=f"unknown corpus '{bad}'.*mixed, english, python-docs"):
            load_corpus(bad)
    with pytest.raises(CorpusError, match="unknown corpus"):
        named_corpus("nope")
    # a real file of that name is read as a file (a named corpus would win: ./english)
    (tmp_path / "englsh").write_text("the cat sat .", encoding="utf-8")
    assert load_corpus("englsh") == ("englsh", ["the cat sat ."])
    (tmp_path / "english").write_text("my own english .", encoding="utf-8")
    assert load_corpus("english")[0] == "english" and load_corpus("./english") == ("english", ["my own english ."])


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

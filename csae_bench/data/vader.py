"""The embedded corpus's source: the ~24k human-rated VADER ground-truth sentences, fetched from
PyPI (the ``vaderSentiment==3.3.2`` sdist) on first use. They are also the labelled sets
``vader_sentiment`` and ``vader_domain``."""

from __future__ import annotations

import logging
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from csae_bench.errors import DataError
from csae_bench.models import cache_dir
from csae_bench.pypi import pip_download_sdist

logger = logging.getLogger(__name__)

VADER_SDIST = "vaderSentiment==3.3.2"
# The four VADER sources, which are also the labels of the domain task.
VADER_SOURCES = {
    "movie": "movieReviewSnippets_GroundTruth.txt",
    "tweet": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}


@dataclass(frozen=True)
class VaderSentence:
    source: str  # movie | tweet | amazon | nyt
    doc_id: str  # sentences of one NYT editorial / Amazon review share a doc id
    score: float  # mean human rating in [-4, 4]
    text: str


def vader_dir() -> Path:
    """The extracted VADER ground-truth files, downloaded from PyPI (sdist) on first use.

    Set ``CSAE_BENCH_VADER_SDIST`` to a local ``vaderSentiment-3.3.2.tar.gz`` to skip the download.
    """
    target = cache_dir() / "vader"
    if all((target / f).exists() for f in VADER_SOURCES.values()):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".vader-") as tmp:
        tmp_path = Path(tmp)
        sdist = os.environ.get("CSAE_BENCH_VADER_SDIST")
        if sdist is None:
            logger.info(
                "Fetching the embedded corpus (%s sdist) from the package registry", VADER_SDIST
            )
            found, error = pip_download_sdist(VADER_SDIST, tmp_path, "vaderSentiment-*.tar.gz")
            if found is None:
                raise DataError(
                    f"Could not download the embedded corpus ({VADER_SDIST} sdist) with pip: "
                    f"{error[-300:]}. Download vaderSentiment-3.3.2.tar.gz on a machine "
                    "with PyPI access and set CSAE_BENCH_VADER_SDIST to its path, or pass "
                    "--corpus with a local text/JSONL file."
                )
            sdist = str(found)
        _extract_vader(Path(sdist), tmp_path / "out")
        if target.exists():
            import shutil

            shutil.rmtree(target)
        (tmp_path / "out").rename(target)
    return target


def _extract_vader(sdist: Path, out: Path) -> None:
    out.mkdir(parents=True)
    try:
        with tarfile.open(sdist) as outer:
            inner = next(
                m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz")
            )
            fh = outer.extractfile(inner)
            assert fh is not None
            with tarfile.open(fileobj=fh) as tar:
                for member in tar.getmembers():
                    # Only regular files, written under their base name: no link is followed and
                    # no member path (``../``, absolute) can place a file outside ``out``.
                    name = Path(member.name).name
                    if member.isfile() and name in VADER_SOURCES.values():
                        data = tar.extractfile(member)
                        assert data is not None
                        (out / name).write_bytes(data.read())
    except (tarfile.TarError, StopIteration, OSError) as err:
        raise DataError(f"{sdist} is not a valid vaderSentiment 3.3.2 sdist ({err}).") from err
    missing = [f for f in VADER_SOURCES.values() if not (out / f).exists()]
    if missing:
        raise DataError(f"{sdist} lacks the VADER ground-truth files {missing}.")


def load_vader() -> list[VaderSentence]:
    """All ~24k human-rated VADER sentences, in file order."""
    sentences = []
    root = vader_dir()
    for source, fname in VADER_SOURCES.items():
        for line in (root / fname).read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.strip().split("\t")
            if len(parts) < 3 or not parts[2].strip():
                continue
            doc_id = parts[0].split("_")[0] if source in ("nyt", "amazon") else parts[0]
            sentences.append(
                VaderSentence(source, f"{source}:{doc_id}", float(parts[1]), parts[2].strip())
            )
    return sentences

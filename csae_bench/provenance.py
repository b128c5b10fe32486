"""Where a result came from: csae_bench's own commit, and the versions of the libraries it ran on.

``sae_bench_version`` is what goes into SAEBench's ``sae_bench_commit_hash`` field. SAEBench's own
``get_sae_bench_version()`` runs ``git rev-parse HEAD`` in the *current directory*, so for a
pip-installed SAEBench it records whatever checkout the caller stands in (for us: csae_bench's). We
record the installed SAEBench instead: ``sae-bench==<version>``, with ``@<commit>`` appended when
pip recorded a VCS install (PEP 610 ``direct_url.json``). csae_bench's commit has a field of its own
(``csae_bench_commit_hash``).
"""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path

PACKAGES = ("csae_bench", "sae-bench", "sae-lens", "transformer-lens", "torch", "transformers")


def git_commit() -> str | None:
    """The commit of the csae_bench checkout, if it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """``{package: version}`` for csae_bench and the libraries its numbers depend on."""
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _vcs_commit(package: str) -> str | None:
    """The commit pip recorded for a VCS install of ``package`` (PEP 610), if any."""
    try:
        text = distribution(package).read_text("direct_url.json")
    except PackageNotFoundError:
        return None
    try:
        return json.loads(text)["vcs_info"]["commit_id"] if text else None
    except (ValueError, KeyError, TypeError):
        return None


def sae_bench_version() -> str:
    """``sae-bench==<version>[@<commit>]``: the SAEBench that is installed (see the module doc)."""
    try:
        found = f"sae-bench=={version('sae-bench')}"
    except PackageNotFoundError:
        return "unknown"
    commit = _vcs_commit("sae-bench")
    return f"{found}@{commit}" if commit else found


def sae_lens_version() -> str:
    """SAELens's version, as SAEBench writes it (``get_sae_lens_version``: the bare version)."""
    try:
        return version("sae-lens")
    except PackageNotFoundError:
        return "unknown"

"""``release:sae_id`` entries: parsing ``--saes`` into folders and release specs, and resolving a
spec against SAELens's pretrained directory (read from its yaml, no ``sae_lens`` import, no
torch), plus where a leaderboard row's SAE came from."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csae_bench.suite import SuiteError

SEP = ":"
"""Separator of ``release:sae_id`` (SAELens release names contain no colon)."""


class ReleaseError(SuiteError):
    """A ``release:sae_id`` cannot be used (unknown, offline, wrong model, unsupported); the
    one-line message names it and says what to do. A ``SuiteError``, so the CLI exits 2."""


@dataclass(frozen=True)
class ReleaseSAE:
    """One resolved ``release:sae_id``: where SAELens finds it and what it was trained on."""

    release: str
    sae_id: str
    repo_id: str
    """Hugging Face repo holding the release (yaml ``repo_id``)."""
    path: str
    """Folder (or file) of this SAE inside the repo (yaml ``saes[].path``)."""
    model: str
    """Model the release was trained on (yaml ``model``, a TransformerLens name)."""
    conversion_func: str | None
    """SAELens loader name (yaml ``conversion_func``; ``None`` = SAELens format)."""
    model_kwargs: dict[str, Any] | None = None
    """``config_overrides.model_from_pretrained_kwargs`` of the release (e.g. processed weights)."""

    @property
    def spec(self) -> str:
        return f"{self.release}{SEP}{self.sae_id}"


# ---------------------------------------------------------------- parsing


def is_release_spec(entry: str) -> bool:
    """True when ``entry`` reads as ``release:sae_id`` rather than a folder: it has a colon and is
    not an existing path."""
    return SEP in entry and not Path(entry).expanduser().exists()


def split_sae_entries(
    value: str | list[str] | tuple[str, ...] | None,
) -> tuple[list[str], list[str]]:
    """``--saes`` / suite ``saes`` -> ``(folders, release_specs)``. ``value`` is one string
    (comma-separated entries allowed) or a list of them; empty entries are dropped.

    Raises ``SuiteError`` for a non-string entry or a malformed ``release:sae_id``."""
    if value is None:
        return [], []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
        raise SuiteError(
            f"saes must be a folder, 'release:sae_id', or a list of them, got {value!r}."
        )
    folders: list[str] = []
    releases: list[str] = []
    for item in items:
        for entry in (e.strip() for e in item.split(",")):
            if not entry:
                continue
            if is_release_spec(entry):
                release, _, sae_id = entry.partition(SEP)
                if not release or not sae_id:
                    raise SuiteError(
                        f"--saes {entry!r}: write a SAELens SAE as release:sae_id, e.g. "
                        "gemma-scope-2-270m-pt-res-all:layer_6_width_16k_l0_small."
                    )
                if entry not in releases:
                    releases.append(entry)
            elif entry not in folders:
                folders.append(entry)
    return folders, releases


# ---------------------------------------------------------------- SAELens's directory


def _yaml_path() -> Path:
    spec = importlib.util.find_spec("sae_lens")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ReleaseError("SAELens is not installed: pip install 'sae-lens>=6.50,<7'.")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"


@functools.cache
def pretrained_directory() -> dict[str, dict[str, Any]]:
    """SAELens's pretrained directory as plain data: ``{release: {"repo_id", "model",
    "conversion_func", "config_overrides", "saes": {sae_id: path}}}``, from
    ``sae_lens/pretrained_saes.yaml`` (the file ``get_pretrained_saes_directory`` parses)."""
    import yaml

    with _yaml_path().open(encoding="utf-8") as fh:
        raw = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {
        release: {
            "repo_id": value["repo_id"],
            "model": value["model"],
            "conversion_func": value.get("conversion_func"),
            "config_overrides": value.get("config_overrides") or {},
            "saes": {str(s["id"]): str(s["path"]) for s in value.get("saes", [])},
        }
        for release, value in raw.items()
    }


def _sae_lens_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sae-lens")
    except PackageNotFoundError:
        return "?"


def resolve_release(spec: str) -> ReleaseSAE:
    """Look ``release:sae_id`` up in SAELens's directory (no network, no torch).

    Raises :class:`ReleaseError` naming the closest releases / ids when either is unknown."""
    release, _, sae_id = spec.partition(SEP)
    directory = pretrained_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, list(directory), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ReleaseError(
            f"--saes {spec}: release {release!r} is not in SAELens {_sae_lens_version()}'s "
            f"pretrained directory (sae_lens/pretrained_saes.yaml).{hint} Use a listed release, "
            "upgrade sae-lens, or pass a local SAE folder."
        )
    entry = directory[release]
    if sae_id not in entry["saes"]:
        ids = list(entry["saes"])
        close = difflib.get_close_matches(sae_id, ids, n=3, cutoff=0.5) or ids[:3]
        raise ReleaseError(
            f"--saes {spec}: release {release} has no SAE id {sae_id!r} ({len(ids)} ids, e.g. "
            f"{', '.join(close)}); use one of its ids from sae_lens/pretrained_saes.yaml."
        )
    overrides = entry["config_overrides"]
    return ReleaseSAE(
        release=release,
        sae_id=sae_id,
        repo_id=entry["repo_id"],
        path=entry["saes"][sae_id],
        model=entry["model"],
        conversion_func=entry["conversion_func"],
        model_kwargs=overrides.get("model_from_pretrained_kwargs") or None,
    )


def sae_source(release: str, sae_id: str) -> str:
    """Where a leaderboard row's SAE came from: ``release`` (a SAELens pretrained release),
    ``trained`` (trained by this run: ``csae_bench-…`` release, ``<arch>-d<width>-s<seed>`` id) or
    ``folder`` (a local SAE folder given to ``--saes``)."""
    if release in pretrained_directory():
        return "release"
    if release.startswith("csae_bench-") and re.match(r"^[a-z][a-z0-9_-]*?-d\d+-s\d+$", sae_id):
        return "trained"
    return "folder"

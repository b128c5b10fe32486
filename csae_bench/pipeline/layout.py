"""Where every file of a run lives: the one module that names the results layout.

SAEBench's naming for result files, and this project's folders around it::

    <out>/<model>/<hook>/activations/                         harvested training activations
                                                              (bf16/fp32 shards + manifest.json),
                                                              shared by every seed
    <out>/<model>/<hook>/seed<k>/gradient_pool.safetensors   sampled-token gradients (csae only)
    <out>/<model>/<hook>/seed<k>/saes/<arch>/                trained SAEs, SAELens format
    <out>/<model>/<hook>/seed<k>/saes/<arch>/snapshots/tokens_<N>/   training snapshots (n_snapshots)
    <out>/<model>/<hook>/seed<k>/saes/trained.json           which architectures finished
    <out>/eval_results/<eval_type_id>/<release>_<sae_id>_eval_results.json
    <out>/eval_results/sae_sources.json                      which --saes folder each release is
    <out>/leaderboard.json, <out>/plots/*.png

Release and SAE ids: ``csae_bench-<model>-<hook>`` and ``<arch>-d<d_sae>-s<seed>`` for the SAEs
this project trains (:func:`parse_sae_id` reads the latter back); ``csae_bench-<model>-<folder>``
and the folder's path for ``--saes`` folders.

Snapshot folders are named by ``csae_bench.training.snapshots`` (``snapshot_folder``; read them
back with ``list_snapshots``), next to the trainer that writes them. They are SAELens-format
folders, so :func:`find_saes` on a ``saes/`` folder finds them too.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from csae_bench.errors import SaeMismatchError
from csae_bench.suite import RunConfig, SuiteError
from csae_bench.utils import atomic_write_json

logger = logging.getLogger(__name__)

SAE_FILES = ("cfg.json", "sae_weights.safetensors")
"""Files every finished SAELens-format SAE folder holds."""
ACTIVATIONS_NAME = "activations"
"""The folder of harvested training activations (shards + manifest,
:mod:`csae_bench.activations.source`)."""
GRADIENT_POOL_NAME = "gradient_pool.safetensors"
"""A run folder's sampled-token gradient pool."""
SAES_DIR = "saes"
"""A run folder's subfolder of trained SAEs (one folder per architecture)."""
MANIFEST_NAME = "trained.json"
"""In a folder of trained SAEs: which architectures finished, and where."""
SOURCES_NAME = "sae_sources.json"
"""``<out>/eval_results/sae_sources.json``: which ``--saes`` folder each release came from."""

_SAE_ID = re.compile(r"^(?P<arch>[a-z][a-z0-9_-]*?)-d(?P<d_sae>\d+)-s(?P<seed>\d+)$")


def model_slug(model: str) -> str:
    """A folder-safe name for ``--model`` (a local path becomes its folder name)."""
    path = Path(model).expanduser()
    name = path.name if path.exists() else model
    return name.replace("/", "_").replace(" ", "_")


def sae_release(model: str, hook_name: str) -> str:
    """SAEBench ``sae_lens_release_id`` of the SAEs this project trains."""
    return f"csae_bench-{model_slug(model)}-{hook_name}"


def sae_id(arch: str, d_sae: int, seed: int) -> str:
    """SAEBench ``sae_lens_id`` of one trained SAE (read back by :func:`parse_sae_id`)."""
    return f"{arch}-d{d_sae}-s{seed}"


def parse_sae_id(sid: str) -> tuple[str, int, int] | None:
    """``(arch, d_sae, seed)`` of an id :func:`sae_id` made; None for any other id."""
    m = _SAE_ID.match(sid)
    return (m["arch"], int(m["d_sae"]), int(m["seed"])) if m else None


def eval_result_path(out: Path, eval_type: str, release: str, sae: str) -> Path:
    """Where SAEBench would put this result: ``eval_results/<type>/<release>_<sae_id>_eval_results.json``."""
    from sae_bench.sae_bench_utils.general_utils import get_results_filepath

    return Path(get_results_filepath(str(out / "eval_results" / eval_type), release, sae))


def harvest_dir(out: Path, model: str, hook_name: str) -> Path:
    """``<out>/<model>/<hook>/activations``: the training harvest every seed of a run streams."""
    return Path(out) / model_slug(model) / hook_name / ACTIVATIONS_NAME


def run_dir(out: Path, model: str, hook_name: str, seed: int) -> Path:
    """The folder of one (model, hook, seed): its gradient pool and SAEs (the activations every seed
    streams are in :func:`harvest_dir`)."""
    return out / model_slug(model) / hook_name / f"seed{seed}"


def is_sae_folder(folder: Path) -> bool:
    """True when ``folder`` holds a finished SAELens-format SAE (:data:`SAE_FILES`)."""
    return all((folder / f).is_file() for f in SAE_FILES)


def is_valid_json(path: Path) -> bool:
    """True when ``path`` exists and parses as JSON (a torn or corrupt file does not)."""
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def find_saes(root: Path) -> list[tuple[str, Path, str]]:
    """``(sae_id, folder, hook_name)`` for every SAELens-format folder under ``root``.

    Configs of every SAELens era are read as SAELens reads them (a pre-6.0 ``hook_point`` is the
    hook). The id is the folder's path under ``root`` with ``/`` -> ``_``; two folders with one id
    (``a/b`` and ``a_b``) would share a result file, so they are refused.
    Raises :class:`SuiteError` (no folders) or :class:`SaeMismatchError` (unreadable config,
    duplicate id), both exit 2."""
    from csae_bench.architectures.loading import read_sae_config

    root = Path(root)
    if not root.is_dir():
        raise SuiteError(f"--saes {root} is not a folder of SAELens-format SAE folders.")
    found = []
    by_id: dict[str, Path] = {}
    snapshots = 0
    for cfg_file in sorted(root.rglob("cfg.json")):
        folder = cfg_file.parent
        if _is_training_snapshot(root, folder):
            snapshots += 1
            continue
        if not is_sae_folder(folder):
            logger.warning("Skipping %s: it has cfg.json but no sae_weights.safetensors.", folder)
            continue
        hook = read_sae_config(folder).metadata.hook_name
        if not hook:
            raise SaeMismatchError(
                f"SAE {folder}: its cfg.json names no hook (hook_name, or hook_point before "
                "SAELens 6); add the hook it was trained at."
            )
        rel = folder.relative_to(root)
        sid = str(rel).replace("/", "_") if str(rel) != "." else folder.name
        if sid in by_id:
            raise SaeMismatchError(
                f"SAE folders {by_id[sid]} and {folder} both get the id {sid!r} and would share "
                "one result file; rename one of them."
            )
        by_id[sid] = folder
        found.append((sid, folder, hook))
    if snapshots:
        logger.info(
            "Skipping %d training snapshots under %s (pass a snapshots folder as --saes to "
            "evaluate them).",
            snapshots,
            root,
        )
    if not found:
        raise SuiteError(
            f"No SAELens-format SAE folders (cfg.json + sae_weights.safetensors) under {root}."
        )
    return found


def _is_training_snapshot(root: Path, folder: Path) -> bool:
    """True for ``<sae>/snapshots/<name>`` below ``root`` where ``<sae>`` is an SAE folder: the
    trainer's snapshots (:mod:`csae_bench.training.snapshots`) travel inside their final SAE."""
    from csae_bench.training.finalize import SNAPSHOTS_DIR

    rel = folder.relative_to(root).parts
    return any(
        part == SNAPSHOTS_DIR and is_sae_folder(root.joinpath(*rel[:i]))
        for i, part in enumerate(rel)
    )


def external_release(cfg: RunConfig) -> str:
    """SAEBench ``sae_lens_release_id`` of the ``--saes`` folders of a run."""
    return f"csae_bench-{model_slug(cfg.model)}-{Path(cfg.saes or 'saes').name}"


def claim_release(out: Path, release: str, root: Path, force: bool = False) -> None:
    """Record that ``release`` in ``out`` holds the SAEs of ``root``. Two ``--saes`` folders with
    one base name (``x/saes``, ``y/saes``) get one release id: without this the second run's
    results would be "already done" from the first's. Raises :class:`SuiteError` (exit 2)
    unless ``force``."""
    path = out / "eval_results" / SOURCES_NAME
    sources = json.loads(path.read_text()) if is_valid_json(path) else {}
    mine = str(Path(root).resolve())
    theirs = sources.get(release)
    if theirs is not None and theirs != mine and not force:
        raise SuiteError(
            f"--out {out} already holds results of release {release} from --saes {theirs}, not "
            f"{mine}; use another --out (or --force to replace them)."
        )
    if theirs != mine:
        atomic_write_json(path, {**sources, release: mine})

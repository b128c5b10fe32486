"""Training snapshots: SAELens-format copies of every SAE at a few log-spaced token counts, kept
as results (what issue 14 calls "training checkpoints"), for studies of a metric against training
tokens (the validity study's Spearman over snapshots).

They are not the resume checkpoint (:mod:`.checkpoint`, ``TrainConfig.checkpoint_every``): that is
one state file for all SAEs, deleted when training ends; snapshots are SAE folders that stay.

* **When** (:func:`snapshot_steps`): ``cfg.n_snapshots`` steps, ``numpy.geomspace(max(1,
  n_steps / 100), n_steps, n)`` rounded, with collisions of a short run pushed apart so that there
  are exactly ``n`` distinct steps. The last one is ``n_steps``: the final SAE counts as a snapshot
  (its weights equal ``<arch>/``'s), so the series is complete without the final folder.
* **Where** (:func:`snapshot_folder`, :func:`list_snapshots`)::

      <out_dir>/<arch>/snapshots/tokens_000000002048/   cfg.json, sae_weights.safetensors,
                                                         snapshot.json (written last)

  the token count (``step * batch_size``) zero-padded to 12 digits, so names sort as numbers.
* **What**: the SAE exported exactly as the final one (:func:`.finalize.export_sae`: activation
  scale folded in, SAELens metadata with ``training_tokens`` = the snapshot's), so
  ``SAE.load_from_disk`` and :func:`~csae_bench.architectures.export.load_base_sae` read it;
  ``snapshot.json`` holds the step, the tokens, and the L0 and loss terms of that step's training
  batch (no held-out metrics: those are the evals' job).
* **Resume**: a snapshot is written before the checkpoint of its step, each atomically (a
  temporary folder renamed into place), and a complete snapshot folder is left alone; so a run
  resumed from a checkpoint writes each snapshot exactly once, with the bits of an uninterrupted
  run.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csae_bench.activations.source import ActivationSource
from csae_bench.training.checkpoint import NonFiniteError
from csae_bench.training.config import TrainConfig
from csae_bench.training.finalize import SNAPSHOTS_DIR, export_sae, recover_kept, write_sae_folder
from csae_bench.training.state import SAERunState

logger = logging.getLogger(__name__)

SNAPSHOT_SUMMARY_NAME = "snapshot.json"
"""Written last into each snapshot folder: its presence marks the snapshot as complete."""
FIRST_STEP_FRACTION = 0.01
"""The first snapshot is at ``max(1, n_steps * FIRST_STEP_FRACTION)`` steps (two decades)."""

_NAME = re.compile(r"^tokens_(?P<tokens>\d+)$")


def snapshot_steps(n_steps: int, n_snapshots: int) -> list[int]:
    """The ``n_snapshots`` optimizer steps (counted from 1: "after this many steps") at which
    snapshots are taken, increasing, the last ``n_steps``; ``[]`` for 0.

    Log-spaced from ``max(1, n_steps / 100)`` and rounded; where rounding makes two equal (a short
    run), later ones move up a step (and, at the end, earlier ones down), so all are distinct.
    Raises ``ValueError`` unless ``0 <= n_snapshots <= n_steps``."""
    if not 0 <= n_snapshots <= n_steps:
        raise ValueError(f"n_snapshots={n_snapshots} must be in 0..n_steps={n_steps}.")
    if n_snapshots == 0:
        return []
    if n_snapshots == 1:
        return [n_steps]
    first = max(1.0, n_steps * FIRST_STEP_FRACTION)
    steps = [round(float(s)) for s in np.geomspace(first, n_steps, n_snapshots)]
    steps[-1] = n_steps
    for i in range(1, len(steps)):  # push collisions up ...
        steps[i] = max(steps[i], steps[i - 1] + 1)
    steps[-1] = n_steps
    for i in range(len(steps) - 2, -1, -1):  # ... and back below n_steps
        steps[i] = min(steps[i], steps[i + 1] - 1)
    return steps


def snapshot_folder(sae_folder: Path, tokens: int) -> Path:
    """``sae_folder/snapshots/tokens_<tokens, 12 digits>``: the snapshot after ``tokens`` tokens."""
    return Path(sae_folder) / SNAPSHOTS_DIR / f"tokens_{tokens:012d}"


def is_complete(folder: Path) -> bool:
    """True when ``folder`` is a finished snapshot (its :data:`SNAPSHOT_SUMMARY_NAME` exists)."""
    return (Path(folder) / SNAPSHOT_SUMMARY_NAME).is_file()


def list_snapshots(sae_folder: Path) -> dict[int, Path]:
    """``{training tokens: snapshot folder}`` of ``sae_folder``'s complete snapshots, by
    increasing tokens (``{}`` when it has none). Each folder loads with ``SAE.load_from_disk``."""
    root = Path(sae_folder) / SNAPSHOTS_DIR
    found = {}
    if root.is_dir():
        for folder in root.iterdir():
            m = _NAME.match(folder.name)
            if m and folder.is_dir() and is_complete(folder):
                found[int(m["tokens"])] = folder
    return dict(sorted(found.items()))


class SnapshotWriter:
    """Takes the snapshots of one training run: :meth:`after_step` after every optimizer step.

    ``runs`` are the SAEs being trained (``{arch: state}``), saved under ``out_dir/<arch>/``;
    ``scale`` the activation normalization to fold in; ``start`` the step training (re)starts at.
    Snapshots due at or before ``start`` that are missing (``n_snapshots`` changed since they
    were due) are reported with a warning; they cannot be made any more."""

    def __init__(
        self,
        cfg: TrainConfig,
        runs: dict[str, SAERunState],
        out_dir: Path,
        scale: float,
        source: ActivationSource,
        start: int,
    ) -> None:
        self.cfg, self.runs, self.out_dir = cfg, runs, Path(out_dir)
        self.scale, self.source = scale, source
        self.steps = snapshot_steps(cfg.n_steps, cfg.n_snapshots)
        for arch in runs:
            recover_kept(self.out_dir / arch, (SNAPSHOTS_DIR,))
            lost = [s for s in self.steps if s <= start and not is_complete(self._folder(arch, s))]
            if lost:
                logger.warning(
                    "%s: no snapshots after steps %s (not requested when those steps ran); "
                    "retrain from scratch (resume=False) to have them.",
                    arch,
                    lost,
                )

    def _folder(self, arch: str, step: int) -> Path:
        return snapshot_folder(self.out_dir / arch, step * self.cfg.batch_size)

    @torch.no_grad()
    def after_step(self, steps_done: int) -> None:
        """Save every SAE's snapshot if one is due after ``steps_done`` optimizer steps (and not
        already complete on disk). Raises :class:`~.checkpoint.NonFiniteError` for non-finite
        weights (nothing written)."""
        if steps_done not in self.steps:
            return
        tokens = steps_done * self.cfg.batch_size
        for arch, run in self.runs.items():
            folder = self._folder(arch, steps_done)
            if is_complete(folder):
                continue
            sae = export_sae(run, self.cfg, self.scale, self.source, tokens)
            bad = [n for n, t in sae.state_dict().items() if not torch.isfinite(t).all()]
            if bad:
                raise NonFiniteError(
                    f"{arch}: non-finite {', '.join(bad)} at step {steps_done}; no snapshot "
                    "written. Lower lr or check the activations."
                )
            write_sae_folder(sae, folder, SNAPSHOT_SUMMARY_NAME, self.summary(run, steps_done))
            logger.info("%s: snapshot after %d tokens at %s", arch, tokens, folder)

    def summary(self, run: SAERunState, steps_done: int) -> dict[str, Any]:
        """The contents of ``snapshot.json``: the step, tokens, and the L0 / loss terms of the
        training batch of the last step (measured before its update), plus the run's settings."""
        return {
            "architecture": run.arch,
            "step": steps_done,
            "training_tokens": steps_done * self.cfg.batch_size,
            "steps": self.cfg.n_steps,
            "snapshot_steps": self.steps,
            "l0": run.last.get("l0"),
            "loss": run.last.get("loss"),
            "loss_terms": dict(run.last),
            "metrics_on": "training batch",
            "sparsity_coefficient": run.coefficients() or None,
            "dead_fraction_train": float(
                (run.steps_since_fired_F >= self.cfg.dead_window).float().mean()
            ),
            "activation_scale": self.scale,
            "seed": self.cfg.seed,
            "config": self.cfg.to_flat(run.arch),
        }

"""The run's null SAEs (``permuted-decoder``, ``init``, ``pca``; :mod:`csae_bench.architectures.nulls`),
built after the trained SAEs and saved exactly like them (:func:`save_nulls`).

Each null is built in the trainer's normalized units and goes through
:func:`~csae_bench.training.finalize.save_trained_sae`, so its folder is an ordinary SAELens
``topk`` folder with the activation scale folded in, ``csae_bench_architecture`` in its metadata,
and a ``training_summary.json`` with held-out EV / L0 like every other SAE's, plus a ``null``
entry saying what it is built from. ``steps`` is 0 and ``dead_fraction_train`` is null: nothing was
trained.

* ``permuted-decoder``: from the run's trained ``topk`` (in memory when it was trained in this
  call; otherwise its saved folder, unfolded back to normalized units), decoder rows permuted with
  ``torch.randperm`` seeded ``cfg.seed * 1000 + index`` (``index``: the null's position in
  ``cfg.architectures``, as every SAE's seed is).
* ``init``: built as :class:`~csae_bench.training.state.SAERunState` builds ``topk`` (seed
  ``cfg.seed * 1000 + index of topk``; of ``init`` itself when the run has no ``topk``), ``b_dec``
  = the mean of the first training batch.
* ``pca``: from the first ``PCAOptions.pca_batches`` batches of the training stream (fewer when
  the run has fewer steps).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from csae_bench.activations.source import ActivationSource
from csae_bench.architectures import REGISTRY
from csae_bench.architectures.nulls import init_sae, pca_sae, pca_size, permuted_decoder_sae
from csae_bench.training.config import TrainConfig, TrainingError
from csae_bench.training.finalize import heldout_activations, save_trained_sae
from csae_bench.training.scaling import activation_scale

logger = logging.getLogger(__name__)


def null_architectures(architectures: tuple[str, ...] | list[str]) -> list[str]:
    """The architectures of ``architectures`` that are derived by the trainer, not trained."""
    return [a for a in architectures if not REGISTRY[a].trained]


@dataclass
class NullRun:
    """What :func:`~csae_bench.training.finalize.save_trained_sae` reads of a run, for an SAE
    that was never stepped (no losses, counters or coefficient)."""

    arch: str
    sae: Any
    wall_s: float = 0.0
    steps_since_fired_F: torch.Tensor = field(
        default_factory=lambda: torch.zeros(0, dtype=torch.long)
    )
    last: dict[str, float] = field(default_factory=dict)
    loss_curve: list[tuple[int, float, float]] = field(default_factory=list)
    n_resampled: int = 0
    n_reinit_causal: int = 0
    last_verification: dict[str, float] = field(default_factory=dict)

    def coefficients(self) -> dict[str, float]:
        return {}


def first_batches(source: ActivationSource, cfg: TrainConfig, n: int) -> torch.Tensor:
    """The first ``n`` batches of the training stream, concatenated: ``[n * batch_size, d_in]``,
    raw units (the same batches, in the same order, the trained SAEs started on)."""
    stream = source.batches(cfg.batch_size, cfg.n_steps * cfg.batch_size)
    return torch.cat(list(islice(stream, max(1, min(n, cfg.n_steps)))))


def _seed(cfg: TrainConfig, arch: str) -> int:
    return cfg.seed * 1000 + cfg.architectures.index(arch)


def _topk_normalized(
    runs: dict[str, Any], done: dict[str, Path], cfg: TrainConfig, scale: float
) -> Any:
    """The run's trained ``topk`` in normalized units, as a TopK training SAE: the in-memory SAE
    when it was trained in this call, else its saved folder's weights with the scale unfolded."""
    if "topk" in runs:
        return runs["topk"].sae
    if "topk" not in done:
        raise TrainingError(
            "permuted-decoder is derived from the run's trained topk, which is missing; "
            "add topk to the architectures."
        )
    from sae_lens import SAE

    from csae_bench.architectures import build_training_sae

    saved = SAE.load_from_disk(str(done["topk"]), device="cpu")
    sae = build_training_sae("topk", saved.cfg.d_in, saved.cfg.d_sae, **cfg.sae_options("topk"))
    sae.load_state_dict(saved.state_dict())
    if scale != 1.0:
        sae.fold_activation_norm_scaling_factor(1.0 / scale)
    return sae


def build_null(
    arch: str,
    cfg: TrainConfig,
    d_in: int,
    x_ND: torch.Tensor,
    runs: dict[str, Any],
    done: dict[str, Path],
    scale: float,
) -> tuple[Any, dict[str, Any]]:
    """``(training SAE in normalized units, the summary's "null" entry)`` of null ``arch``;
    ``x_ND`` are the first training batches, normalized."""
    info: dict[str, Any] = {"kind": arch, "derived_from": REGISTRY[arch].derived_from}
    if arch == "permuted-decoder":
        gen = torch.Generator().manual_seed(_seed(cfg, arch))
        sae, perm = permuted_decoder_sae(_topk_normalized(runs, done, cfg, scale), gen)
        info["permutation_seed"] = _seed(cfg, arch)
        info["fixed_points"] = int((perm == torch.arange(len(perm))).sum())
        return sae, info
    if arch == "init":
        base = "topk" if "topk" in cfg.architectures else "init"
        seed = _seed(cfg, base)
        sae = init_sae(cfg.sae_options("topk"), d_in, cfg.d_sae, seed, x_ND[: cfg.batch_size])
        info.update(init_seed=seed, b_dec_tokens=cfg.batch_size)
        return sae, info
    if arch == "pca":
        n, k = pca_size(d_in, cfg.d_sae, cfg.target_l0)
        n_rows = min(len(x_ND), cfg.options["pca"].pca_batches * cfg.batch_size)
        sae = pca_sae(x_ND[:n_rows], n, k)
        info.update(n_components=n, signed_features=2 * n, k=k, sample_tokens=n_rows)
        return sae, info
    raise TrainingError(f"{arch!r} is not a null architecture; nulls: permuted-decoder, init, pca.")


def save_nulls(
    archs: list[str],
    model: Any,
    source: ActivationSource,
    cfg: TrainConfig,
    out_dir: Path,
    done: dict[str, Path],
    runs: dict[str, Any] | None = None,
    scale: float | None = None,
    heldout: tuple[torch.Tensor, str] | None = None,
) -> dict[str, Path]:
    """Build and save each null of ``archs`` to ``out_dir/<arch>/``; return ``{arch: folder}``.

    Args:
        archs: the nulls to produce (:func:`null_architectures` of what is left to do).
        model, source, cfg: the run's (as :func:`~csae_bench.training.loop.train_alongside`'s).
        out_dir: the run's SAE folder.
        done: folders already finished (``topk``'s, when it was trained in an earlier call).
        runs: the SAERunStates trained in this call, by architecture.
        scale: the run's activation scale (default: computed as the trainer computes it).
        heldout: ``(raw held-out activations [N, d_in], where they come from)`` for the
            summary's metrics (default: :func:`~csae_bench.training.finalize.heldout_activations`).

    Raises:
        TrainingError: ``permuted-decoder`` has no trained ``topk`` to derive from.
    """
    if not archs:
        return {}
    if scale is None:
        scale = activation_scale(source, cfg)
    heldout_ND, heldout_on = heldout or heldout_activations(model, source, cfg)
    pca_rows = cfg.options["pca"].pca_batches if "pca" in archs else 1
    x_ND = first_batches(source, cfg, pca_rows) * scale
    saved = {}
    for arch in archs:
        t0 = time.perf_counter()
        sae, info = build_null(arch, cfg, source.d_in, x_ND, runs or {}, done, scale)
        run = NullRun(arch, sae, wall_s=time.perf_counter() - t0)
        extra = {
            "null": info,
            "d_sae": int(sae.cfg.d_sae),
            "steps": 0,
            "dead_fraction_train": None,
        }
        saved[arch] = save_trained_sae(
            run, out_dir / arch, cfg, scale, heldout_ND, heldout_on, source, summary_extra=extra
        )
    return saved

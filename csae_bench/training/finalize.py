"""Turning a trained SAE into its folder: fold the normalization, record metadata, measure it on
held-out activations through the SAEBench export, write ``training_summary.json``; atomically.

:func:`export_sae` and :func:`write_sae_folder` are the two halves every saved SAE goes through:
the final one (:func:`save_trained_sae`) and the training snapshots (:mod:`.snapshots`)."""

from __future__ import annotations

import copy
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from csae_bench.activations.harvest import layer_of_hook
from csae_bench.activations.source import ActivationSource
from csae_bench.architectures.export import to_base_sae
from csae_bench.data import contexts_for_tokens
from csae_bench.metrics import explained_variance_mean_centred
from csae_bench.training.config import TrainConfig
from csae_bench.training.state import SAERunState
from csae_bench.utils import atomic_write_json, versions

logger = logging.getLogger(__name__)

SUMMARY_NAME = "training_summary.json"
"""Written last into each SAE folder: its presence marks the SAE as finished."""

SNAPSHOTS_DIR = "snapshots"
"""Subfolder of an SAE folder holding its training snapshots (:mod:`.snapshots`); carried over
when :func:`save_trained_sae` replaces the folder."""

HELDOUT_EPOCH_SEED_OFFSET = 104729
"""Fallback held-out batch (no eval split): drawn with ``epoch_seed = cfg.seed + 104729``."""


def heldout_activations(
    model: Any, source: ActivationSource, cfg: TrainConfig
) -> tuple[torch.Tensor, str]:
    """``(activations [N, d_in], where they come from)`` for the final metrics:
    ``cfg.heldout_tokens`` tokens of ``cfg.heldout_corpus``'s eval split (``"eval split"``) when
    the model has a tokenizer, else — with a warning — one batch of the training stream
    (``"train"``)."""
    from csae_bench.activations.harvest import harvest_activations

    ctx = source.tokens.shape[1]
    n_ctx = contexts_for_tokens(cfg.heldout_tokens, ctx, bos_counts=True)
    if getattr(model, "tokenizer", None) is not None:
        try:
            from csae_bench.data import load_tokens

            toks = load_tokens(
                model.tokenizer, cfg.heldout_corpus, "eval", context_size=ctx, n_contexts=n_ctx
            )
            return harvest_activations(model, cfg.hook_name, toks, show_progress=False)[
                : cfg.heldout_tokens
            ], "eval split"
        except Exception as err:  # no eval split for this tokenizer/corpus: say so
            logger.warning(
                "No eval-split tokens for held-out activations (%s); using training batches.", err
            )
    logger.warning(
        "Held-out activations unavailable; final metrics use a training batch (labelled 'train')."
    )
    batch = next(
        source.batches(
            min(cfg.heldout_tokens, source.n_tokens),
            epoch_seed=cfg.seed + HELDOUT_EPOCH_SEED_OFFSET,
        )
    )
    return batch, "train"


@torch.no_grad()
def export_sae(
    run: SAERunState, cfg: TrainConfig, scale: float, source: ActivationSource, training_tokens: int
) -> Any:
    """A fresh copy of ``run``'s SAE as it is now (no pool or model attached, eval mode) with the
    normalization ``scale`` folded in, so it takes raw activations, and SAELens metadata (model,
    hook, layer, context size, ``training_tokens``, architecture, scale)."""
    sae = type(run.sae)(copy.deepcopy(run.sae.cfg))
    sae.load_state_dict(run.sae.state_dict())
    sae.eval()
    if scale != 1.0:
        sae.fold_activation_norm_scaling_factor(scale)
    meta = sae.cfg.metadata
    meta.model_name = cfg.model_name
    meta.hook_name = cfg.hook_name
    meta.hook_layer = layer_of_hook(cfg.hook_name)
    meta.context_size = cfg.context_size or int(source.tokens.shape[1])
    meta.prepend_bos = True
    meta.training_tokens = training_tokens
    meta.csae_bench_architecture = run.arch
    meta.activation_scale = scale
    return sae


def write_sae_folder(
    sae: Any, folder: Path, summary_name: str, summary: dict[str, Any], keep: tuple[str, ...] = ()
) -> None:
    """Write ``sae`` in SAELens format plus ``summary`` as ``summary_name`` (last) to a temporary
    folder renamed into place over ``folder``; subfolders named in ``keep`` (the snapshots) move
    from the old ``folder`` into the new one. A crash never leaves a partial ``folder``, nor loses
    a kept subfolder (:func:`recover_kept` brings one left in the temporary folder back)."""
    tmp = folder.parent / f".{folder.name}.tmp"
    if tmp.exists():
        recover_kept(folder, keep)
        shutil.rmtree(tmp)
    sae.save_inference_model(tmp)
    atomic_write_json(tmp / summary_name, summary)
    if folder.exists():
        for name in keep:
            if (folder / name).exists():
                os.rename(folder / name, tmp / name)
        shutil.rmtree(folder)
    tmp.rename(folder)


def recover_kept(folder: Path, keep: tuple[str, ...]) -> None:
    """Move the ``keep`` subfolders' entries that a crash inside :func:`write_sae_folder` left in
    ``folder``'s temporary folder back into ``folder`` (entries already in ``folder`` win)."""
    tmp = folder.parent / f".{folder.name}.tmp"
    for name in keep:
        if not (tmp / name).is_dir():
            continue
        (folder / name).mkdir(parents=True, exist_ok=True)
        for entry in sorted((tmp / name).iterdir()):
            if not (folder / name / entry.name).exists():
                os.rename(entry, folder / name / entry.name)


@torch.no_grad()
def save_trained_sae(
    run: SAERunState,
    folder: Path,
    cfg: TrainConfig,
    scale: float,
    heldout_ND: torch.Tensor,
    heldout_on: str,
    source: ActivationSource,
    summary_extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``run``'s SAE to ``folder`` and return it.

    The SAE is exported with the normalization ``scale`` folded in (:func:`export_sae`), then
    measured through the SAEBench export on ``heldout_ND [N, d_in]`` (raw units): L0, mean-centred
    explained variance (float32), MSE per token, never-fired fraction. Everything is written to a
    temporary folder renamed into place, ``SUMMARY_NAME`` last; ``folder``'s snapshots are kept
    (:func:`write_sae_folder`). ``summary_extra`` entries replace or extend the summary's (the
    nulls of :mod:`.nulls` say what they are)."""
    sae = export_sae(run, cfg, scale, source, cfg.n_steps * cfg.batch_size)
    base = to_base_sae(sae)
    feats_NF = base.encode(heldout_ND)
    recon_ND = base.decode(feats_NF)
    summary = training_summary(
        run, cfg, scale, sae.cfg.d_in, heldout_ND, recon_ND, feats_NF, heldout_on
    )
    summary.update(summary_extra or {})
    write_sae_folder(sae, folder, SUMMARY_NAME, summary, keep=(SNAPSHOTS_DIR,))
    logger.info(
        "%s: L0 %.1f, mean-centred EV %.3f, saved to %s",
        run.arch,
        summary["l0"],
        summary["explained_variance_mean_centred"],
        folder,
    )
    return folder


def training_summary(
    run: SAERunState,
    cfg: TrainConfig,
    scale: float,
    d_in: int,
    heldout_ND: torch.Tensor,
    recon_ND: torch.Tensor,
    feats_NF: torch.Tensor,
    heldout_on: str,
) -> dict[str, Any]:
    """The contents of ``training_summary.json``: metrics of the saved SAE on ``heldout_ND``
    (its reconstruction ``recon_ND`` and features ``feats_NF``), the run's counters and config."""
    fired_F = (feats_NF > 0).any(0)
    return {
        "architecture": run.arch,
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name,
        "d_in": d_in,
        "d_sae": cfg.d_sae,
        "target_l0": cfg.target_l0,
        "l0": float((feats_NF > 0).sum(-1).float().mean()),
        "explained_variance_mean_centred": explained_variance_mean_centred(heldout_ND, recon_ND),
        "mse_per_token": float((heldout_ND - recon_ND).pow(2).sum(-1).mean()),
        "metrics_on": heldout_on,
        "heldout_corpus": cfg.heldout_corpus if heldout_on == "eval split" else None,
        "heldout_tokens": len(heldout_ND),
        "dead_fraction_train": float((run.steps_since_fired_F >= cfg.dead_window).float().mean()),
        "dead_window_steps": cfg.dead_window,
        "never_fired_fraction_heldout": float((~fired_F).float().mean()),
        "final_loss_terms": {k: v for k, v in run.last.items()},
        "loss_curve": run.loss_curve,
        "sparsity_coefficient": run.coefficients() or None,
        "resampled_features": run.n_resampled,
        "causal_reinitialized_features": run.n_reinit_causal,
        "last_verification": run.last_verification or None,
        "wall_seconds": run.wall_s,
        "train_tokens": cfg.n_steps * cfg.batch_size,
        "steps": cfg.n_steps,
        "seed": cfg.seed,
        "activation_scale": scale,
        "config": cfg.to_flat(run.arch),
        "versions": versions(),
    }

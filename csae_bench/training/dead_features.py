"""Dead and failing features: when and how the trainer re-initializes them.

* A feature is dead when it has not fired for ``dead_window`` steps. The TopK family gets SAELens's
  AuxK loss on dead features (inside the SAE's own loss); the coefficient-steered SAEs (ReLU,
  JumpReLU) get resampling every ``resample_every`` steps (:func:`resample_dead`).
* The CSAE re-initializes causally failing features in its verification loop
  (``CSAETrainingSAE.verify_and_reinit``, every ``verify_every`` steps).

Neither happens in the decay phase. Both point features at new directions through the one
re-initialization helper, :func:`csae_bench.architectures.surgery.reinit_features`, and then reset
those features' Adam moments (:func:`reset_optimizer_rows`) and dead counters.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from sae_lens.saes.sae import TrainStepOutput

from csae_bench.architectures.csae import CSAETrainingSAE
from csae_bench.architectures.surgery import reinit_features

if TYPE_CHECKING:
    from csae_bench.training.state import SAERunState


@torch.no_grad()
def calibrate_features(run: SAERunState, idx_N: torch.Tensor, x_BD: torch.Tensor) -> None:
    """Coefficient-steered SAEs: set features ``idx_N [N]`` to fire on a ``target_l0 / d_sae``
    fraction of the batch ``x_BD [B, d_in]`` (JumpReLU: the threshold, with ``b_enc = 0``; ReLU:
    ``b_enc``). A no-op for the TopK family."""
    if not run.steered:
        return
    sae, cfg = run.sae, run.cfg
    pre_BN = sae.process_sae_in(x_BD) @ sae.W_enc[:, idx_N]
    n = len(pre_BN)  # kthvalue, not quantile: quantile refuses inputs over 16M elements
    kth = min(n, max(1, math.ceil(n * (1 - cfg.target_l0 / cfg.d_sae))))
    cut_N = pre_BN.kthvalue(kth, dim=0).values
    if getattr(sae, "threshold", None) is not None:
        sae.threshold.data[idx_N] = cut_N.clamp_min(1e-3).to(sae.threshold.dtype)
        sae.b_enc.data[idx_N] = 0.0
    else:
        sae.b_enc.data[idx_N] = -cut_N.to(sae.b_enc.dtype)


def maintain(run: SAERunState, x_BD: torch.Tensor, out: TrainStepOutput, step: int) -> None:
    """After optimizer step ``step``: dead-feature resampling (coefficient-steered SAEs) and the
    CSAE's verification loop, each on its own period and never in the decay phase."""
    cfg = run.cfg
    in_decay = step >= cfg.n_steps * (1 - cfg.decay_frac)
    if run.steered and cfg.resample_every and (step + 1) % cfg.resample_every == 0 and not in_decay:
        dead_F = torch.nonzero(run.steps_since_fired_F >= cfg.dead_window).flatten()
        if len(dead_F):
            resample_dead(run, dead_F, x_BD, out.sae_out.detach())
    verify_every = getattr(cfg.options[run.arch], "verify_every", 0)
    if (
        isinstance(run.sae, CSAETrainingSAE)
        and verify_every
        and (step + 1) % verify_every == 0
        and not in_decay
    ):
        stats = run.sae.verify_and_reinit()
        reinit = getattr(run.sae, "last_reinit_F", torch.zeros(0, dtype=torch.long))
        if len(reinit):
            reset_optimizer_rows(run.optimizer, run.sae, reinit)
            run.steps_since_fired_F[reinit] = 0
            run.n_reinit_causal += len(reinit)
        if stats:
            run.last_verification = {"step": step, **stats}


@torch.no_grad()
def resample_dead(
    run: SAERunState, dead_F: torch.Tensor, x_BD: torch.Tensor, recon_BD: torch.Tensor
) -> None:
    """Point dead features ``dead_F [N]`` at the residuals ``x − x̂`` of this batch's
    worst-reconstructed inputs (Anthropic's resampling, simplified: inputs drawn without
    replacement with probability ∝ squared error, from ``run.generator``): unit decoder rows at
    the mean alive norm, encoder columns 0.2× the mean alive encoder norm, threshold/bias set to
    fire at the target rate, Adam state and dead counters reset. At most ``B`` features per call."""
    sae = run.sae
    resid_BD = x_BD - recon_BD
    err_B = resid_BD.pow(2).sum(-1)
    n = min(len(dead_F), len(x_BD))
    picks = torch.multinomial(err_B / err_B.sum(), n, replacement=False, generator=run.generator)
    idx = dead_F[:n]
    alive = torch.ones(sae.cfg.d_sae, dtype=torch.bool)
    alive[dead_F] = False
    reinit_features(sae, idx, resid_BD[picks], alive_F=alive, enc_scale=0.2)
    calibrate_features(run, idx, x_BD)  # fire again at the target rate, not never
    reset_optimizer_rows(run.optimizer, sae, idx)
    run.steps_since_fired_F[idx] = 0
    run.n_resampled += n


def reset_optimizer_rows(
    optimizer: torch.optim.Optimizer, sae: torch.nn.Module, idx_F: torch.Tensor
) -> None:
    """Zero Adam's moments (``exp_avg``, ``exp_avg_sq``) of features ``idx_F`` in ``W_dec`` (rows),
    ``W_enc`` (columns), ``b_enc`` and, where the SAE has one, ``threshold``."""
    for param, dim in (
        (sae.W_dec, 0),
        (sae.W_enc, 1),
        (sae.b_enc, 0),
        (getattr(sae, "threshold", None), 0),
    ):
        if param is None or param not in optimizer.state:
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            optimizer.state[param][key].index_fill_(dim, idx_F, 0.0)

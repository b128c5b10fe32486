"""Activation normalization: one constant that brings the stream's mean norm to ``sqrt(d_in)``
(SAELens's ``expected_average_only_in``), so coefficients transfer between models. The trainer
multiplies every batch by it and folds it into the saved weights, so saved SAEs take raw
activations.

Not SAELens's ``ActivationScaler.estimate_scaling_factor``: it computes the same quantity
(``sqrt(d_in) / mean‖x‖``) but as a float64 sum of float32 per-batch sums over all tokens, where
this is the float32 mean of per-batch means; the two factors differ by ~3e-8–6e-8 relative
(measured on the tiny test model), which would move every trained weight and every reported
number, and it draws a tqdm bar of its own. The factor is kept here; ``scale`` is the plain float
SAELens's ``fold_activation_norm_scaling_factor`` takes.
"""

from __future__ import annotations

import math
from itertools import islice

import torch

from csae_bench.activations.source import ActivationSource
from csae_bench.training.checkpoint import NonFiniteError
from csae_bench.training.config import TrainConfig

SCALE_EPOCH_SEED_OFFSET = 7919
"""The norm batches are drawn with ``epoch_seed = cfg.seed + 7919``: a draw of their own, not the
training order."""


def activation_scale(source: ActivationSource, cfg: TrainConfig) -> float:
    """``sqrt(d_in) / mean‖x‖``, the mean over ``cfg.norm_batches`` batches of ``cfg.batch_size``
    tokens (a mean of per-batch means, in float32); 1.0 when ``cfg.normalize_activations`` is off.

    Raises :class:`~csae_bench.training.checkpoint.NonFiniteError` when the mean norm is not a
    positive finite number (a broken model or hook)."""
    if not cfg.normalize_activations:
        return 1.0
    norms = [
        b.norm(dim=-1).mean()
        for b in islice(
            source.batches(
                cfg.batch_size,
                cfg.batch_size * cfg.norm_batches,
                epoch_seed=cfg.seed + SCALE_EPOCH_SEED_OFFSET,
            ),
            cfg.norm_batches,
        )
    ]
    mean_norm = float(torch.stack(norms).mean())
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise NonFiniteError(
            f"Activation norms are {mean_norm}; check the model and hook {cfg.hook_name}."
        )
    return math.sqrt(source.d_in) / mean_norm

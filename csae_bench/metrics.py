"""Reconstruction metrics shared by the trainer's summary and the core eval."""

from __future__ import annotations

import torch


def explained_variance_mean_centred(
    x_ND: torch.Tensor, x_hat_ND: torch.Tensor, dtype: torch.dtype | None = None
) -> float:
    """``1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖²`` over ``N`` tokens of ``[N, D]`` activations.

    Centred on the mean (SAEBench's own ``explained_variance`` is centred on zero, so it calls the
    mean a good reconstruction). Both sums are taken in ``dtype`` (default: the inputs'); the
    difference ``x − x̂`` is formed in the inputs' dtype first. The trainer's summary uses float32
    on its held-out activations, the core eval float64 on SAEBench's eval tokens."""
    dtype = dtype or x_ND.dtype
    resid = (x_ND - x_hat_ND).to(dtype).pow(2).sum()
    x = x_ND.to(dtype)
    total = (x - x.mean(dim=0)).pow(2).sum()
    return float(1 - resid / total)

"""NCES per feature with a bootstrap CI, weighted aggregates with CIs, and effect consistency."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

EPS = 1e-12


def nces(E: np.ndarray | float, R: np.ndarray | float):
    """``(E − R) / (E + R)``; NaN where ``E + R`` is zero."""
    E, R = np.asarray(E, dtype=np.float64), np.asarray(R, dtype=np.float64)
    tot = E + R
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > EPS, (E - R) / np.where(tot > EPS, tot, 1.0), np.nan)


@dataclass
class FeatureScore:
    effect: float
    control_effect: float
    nces: float
    ci_low: float
    ci_high: float


def score_feature(
    kl_n: np.ndarray, kl_ctrl_n: np.ndarray, n_boot: int, level: float, rng: np.random.Generator
) -> FeatureScore | None:
    """NCES of one feature from its paired per-token effects, with a percentile bootstrap CI over
    tokens. ``None`` when intervention and control both have zero effect."""
    E, R = float(kl_n.mean()), float(kl_ctrl_n.mean())
    if E + R <= EPS:
        return None
    n = len(kl_n)
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = nces(kl_n[idx].mean(1), kl_ctrl_n[idx].mean(1))
    boot = boot[~np.isnan(boot)]
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha]) if len(boot) else (np.nan, np.nan)
    return FeatureScore(E, R, float(nces(E, R)), float(lo), float(hi))


def logit_gram(model, chunk: int = 16384) -> Tensor:
    """``G = W̃_U W̃_Uᵀ`` ``[d_model, d_model]`` (float64) with ``W̃_U`` the unembedding centred over
    the vocabulary: the inner product of two logit-change vectors ``W̃_Uᵀ dx`` is ``dxᵀ G dx'`` (no
    full-vocab vectors needed). Accumulated over ``chunk`` vocabulary columns at a time as
    ``Σ W_c W_cᵀ − V μ μᵀ`` (μ the mean column), so memory stays ``d_model × chunk`` — a float64
    copy of Gemma-3's 640 × 262,144 unembedding would be 1.3 GB."""
    W = model.W_U.detach()
    d, V = W.shape
    G = torch.zeros(d, d, dtype=torch.float64, device=W.device)
    total = torch.zeros(d, dtype=torch.float64, device=W.device)
    for start in range(0, V, chunk):
        W_c = W[:, start : start + chunk].double()
        G += W_c @ W_c.T
        total += W_c.sum(1)
    mu = total / V
    return G - V * torch.outer(mu, mu)


def mean_pairwise_cosine(dx_nD: Tensor, G_DD: Tensor) -> float | None:
    """Mean cosine similarity over pairs of logit-change vectors ``W̃_Uᵀ dx`` (``None`` below 2)."""
    n = len(dx_nD)
    if n < 2:
        return None
    dx = dx_nD.double()
    gram = dx @ G_DD.to(dx.device) @ dx.T
    norm = gram.diagonal().clamp(min=EPS).sqrt()
    cos = gram / norm[:, None] / norm[None, :]
    off = ~torch.eye(n, dtype=torch.bool, device=cos.device)
    return float(cos[off].mean())

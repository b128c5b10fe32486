"""Statistics shared by the evals, the studies, the leaderboard and the regression check.

One home for mean ± sd over seeds, Spearman rank correlation and the bootstrap CIs; the tests and
rank statistics come from ``scipy.stats``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def finite(values: Sequence[float | None]) -> np.ndarray:
    """The finite entries of ``values`` (``None``, NaN and ±inf dropped), as float64."""
    return np.array(
        [float(x) for x in values if x is not None and math.isfinite(float(x))], dtype=float
    )


def mean_sd(values: Sequence[float | None]) -> tuple[float, float, int]:
    """``(mean, sample sd, n)`` over the finite entries; sd is 0.0 for one value, and
    ``(nan, nan, 0)`` when none is finite."""
    v = finite(values)
    if not len(v):
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def sample_sd(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof = 1); 0.0 below two values."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1)) if len(v) >= 2 else 0.0


def fmt_mean_sd(stat: tuple[float, float, int], digits: int = 3) -> str:
    """``"m ± s"`` (``"m"`` for one value, ``"—"`` for none)."""
    mean, sd, n = stat
    if n == 0 or not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (ties averaged, ``scipy.stats.spearmanr``); NaN with fewer than 3
    points or a constant input."""
    from scipy.stats import spearmanr

    a_np, b_np = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a_np) < 3 or a_np.std() == 0 or b_np.std() == 0:
        return math.nan
    return float(spearmanr(a_np, b_np).statistic)


def wilson_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (``scipy.stats.binomtest``'s
    ``proportion_ci(method="wilson")``); ``(nan, nan)`` when ``n`` is 0."""
    from scipy.stats import binomtest

    if n == 0:
        return math.nan, math.nan
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def _merge_singletons(groups: list[np.ndarray]) -> list[np.ndarray]:
    """Merge every group of fewer than two items into the next group (the last into the
    previous), in order, until every group has at least two items (given ≥ 2 items in all)."""
    out: list[np.ndarray] = []
    carry = np.empty(0, dtype=int)
    for g in groups:
        g = np.concatenate([carry, g])
        if len(g) < 2:
            carry = g
            continue
        out.append(g)
        carry = np.empty(0, dtype=int)
    if len(carry):
        out[-1] = np.concatenate([out[-1], carry])
    return out


def weighted_mean_ci(
    values: np.ndarray,
    weights: np.ndarray,
    strata: np.ndarray,
    n_boot: int,
    level: float,
    rng: np.random.Generator,
) -> tuple[float | None, float | None, float | None]:
    """Weighted mean with a stratified percentile-bootstrap CI (items resampled within their
    stratum). A stratum of one item is merged into its neighbour first: resampled alone it adds no
    variance, and a sample of one item per stratum would get a CI of zero width. ``(None, None,
    None)`` when there is nothing to average; ``(mean, None, None)`` for a single item."""
    if len(values) == 0 or weights.sum() <= 0:
        return None, None, None
    point = float((values * weights).sum() / weights.sum())
    if len(values) < 2:
        return point, None, None
    groups = _merge_singletons([np.nonzero(strata == s)[0] for s in np.unique(strata)])
    boots = np.empty(n_boot)
    for b in range(n_boot):
        pick = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        w = weights[pick]
        boots[b] = (values[pick] * w).sum() / w.sum() if w.sum() > 0 else np.nan
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(boots, [alpha, 1 - alpha])
    return point, float(lo), float(hi)

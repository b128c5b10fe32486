"""Hierarchical bootstrap of the validity study (pure numpy; no model).

A *unit* is one SAE at one seed: for NCES, its sampled features (stratum, sampling weight,
frequency) and each feature's per-intervention effects; for probing, its tasks. One bootstrap
draw resamples **seeds** (with replacement, the same seeds for every SAE of a comparison: the SAEs
of a seed share its stream), then, independently for every (seed, SAE) the draw picked, **features
within that seed** (with replacement, within their frequency stratum, so the stratified sampling
weights stay valid) and **tokens within each feature** (with replacement). Probing units resample
tasks, then pairs within a task (a binomial draw at the task's IIA).

:func:`inner_draws` gives a unit's metric values for ``n_draws × n_picks`` independent
feature/token resamples; :func:`combine` averages them over each draw's seed picks
(:func:`seed_picks`) — ``flat=True`` keeps every seed once per draw (no seed-level resampling), the
comparison that shows what the seed level adds.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

EPS = 1e-12
NCES_KINDS = ("nces_fw", "nces", "raw_kl", "kl_per_norm")
PROBING_KINDS = ("verified", "iia")


@dataclass
class NcesUnit:
    """One SAE at one seed under one control: ``J`` features with tokens, padded to ``T``."""

    weight_J: np.ndarray
    freq_J: np.ndarray
    stratum_J: np.ndarray
    n_J: np.ndarray
    kl_JT: np.ndarray
    ctrl_JT: np.ndarray
    norm2_JT: np.ndarray

    @classmethod
    def from_record(cls, rec: dict) -> NcesUnit:
        """From a study record (``features`` and the per-intervention ``tokens`` table)."""
        feats, tok = rec["features"], rec["tokens"]
        owner = np.asarray(tok["feature"], dtype=int)
        keep = [j for j, d in enumerate(feats) if d["n_tokens"] > 0]
        T = max([feats[j]["n_tokens"] for j in keep], default=1)
        J = len(keep)
        kl, ctrl, n2 = (np.zeros((J, T)) for _ in range(3))
        n = np.zeros(J, dtype=int)
        cols = {k: np.asarray(tok[k], dtype=float) for k in ("kl", "kl_control", "edit_norm_sq")}
        for i, j in enumerate(keep):
            rows = np.nonzero(owner == j)[0]
            n[i] = len(rows)
            kl[i, : n[i]] = cols["kl"][rows]
            ctrl[i, : n[i]] = cols["kl_control"][rows]
            n2[i, : n[i]] = cols["edit_norm_sq"][rows]
        f = [feats[j] for j in keep]
        return cls(
            np.array([d["sampling_weight"] for d in f], dtype=float),
            np.array([d["frequency"] for d in f], dtype=float),
            np.array([d["stratum"] for d in f], dtype=int),
            n,
            kl,
            ctrl,
            n2,
        )


@dataclass
class ProbingUnit:
    """One SAE at one seed: per judged task, verified (0/1, NaN: not verified-able) and the IIA
    trials at the smallest k (``n`` 0: no pairs)."""

    verified_K: np.ndarray
    success_K: np.ndarray
    n_K: np.ndarray

    @classmethod
    def from_record(cls, rec: dict, who: str = "sae", k: int | None = None) -> ProbingUnit:
        """From a reduced probing record (:func:`~.records.probing_record`): ``who``'s trials at
        ``k`` (None: each task's smallest k; ``who`` ``ceiling``: the whole residual, any k)."""
        trials = []
        for t in rec["tasks"]:
            if who == "ceiling":
                trials.append(t["ceiling"])
            elif k is None:
                trials.append(t["per_k"][0][who] if t["per_k"] else [0, 0])
            else:
                trials.append(next((r[who] for r in t["per_k"] if r["k"] == k), [0, 0]))
        s, n = np.array(trials, dtype=float).reshape(-1, 2).T
        return cls(np.array([t["verified"] for t in rec["tasks"]], dtype=float), s, n.astype(int))


def nces_stats(kl_BJT, ctrl_BJT, norm2_BJT, w_BJ, q_BJ) -> dict[str, np.ndarray]:
    """Every NCES-record metric per draw from resampled arrays (NaN marks an absent token):
    weighted NCES means (frequency-weighted: ``w · q``; unweighted: ``w``, the stratified
    sampling weight, as the NCES eval), the median per-intervention KL and the median KL/‖δ‖²."""
    with np.errstate(invalid="ignore", divide="ignore"):
        E, R = np.nanmean(kl_BJT, -1), np.nanmean(ctrl_BJT, -1)
        tot = E + R
        ok = tot > EPS
        v = np.where(ok, (E - R) / np.where(ok, tot, 1.0), 0.0)

        def wmean(weights):
            weights = np.where(ok, weights, 0.0)
            s = weights.sum(-1)
            return np.where(s > 0, (v * weights).sum(-1) / np.where(s > 0, s, 1.0), np.nan)

        B = kl_BJT.shape[0]
        flat_kl = kl_BJT.reshape(B, -1)
        ratio = np.where(norm2_BJT > 0, kl_BJT / np.where(norm2_BJT > 0, norm2_BJT, 1.0), np.nan)
        return {
            "nces_fw": wmean(w_BJ * q_BJ),
            "nces": wmean(w_BJ),
            "raw_kl": _nanmedian(flat_kl),
            "kl_per_norm": _nanmedian(ratio.reshape(B, -1)),
        }


def _nanmedian(x: np.ndarray) -> np.ndarray:
    if x.shape[-1] == 0:
        return np.full(x.shape[0], np.nan)
    with np.errstate(invalid="ignore"):
        out = np.nanmedian(np.where(np.isnan(x).all(-1, keepdims=True), 0.0, x), -1)
    return np.where(np.isnan(x).all(-1), np.nan, out)


def nces_point(u: NcesUnit) -> dict[str, float]:
    """The unit's metrics on its own sample (no resampling)."""
    mask = np.arange(u.kl_JT.shape[1])[None, :] < u.n_J[:, None]
    nan = lambda a: np.where(mask, a, np.nan)[None]  # noqa: E731
    s = nces_stats(nan(u.kl_JT), nan(u.ctrl_JT), nan(u.norm2_JT), u.weight_J[None], u.freq_J[None])
    return {k: float(v[0]) for k, v in s.items()}


def nces_draws(
    u: NcesUnit, n: int, rng: np.random.Generator, chunk: int = 256
) -> dict[str, np.ndarray]:
    """``n`` feature-then-token resamples of ``u`` -> metric kind -> ``[n]`` values."""
    J, T = u.kl_JT.shape
    out: dict[str, list[np.ndarray]] = {k: [] for k in NCES_KINDS}
    if J == 0:
        return {k: np.full(n, np.nan) for k in NCES_KINDS}
    groups = [np.nonzero(u.stratum_J == s)[0] for s in np.unique(u.stratum_J)]
    for start in range(0, n, chunk):
        b = min(chunk, n - start)
        pick = np.concatenate([g[rng.integers(0, len(g), (b, len(g)))] for g in groups], axis=1)
        n_BJ = u.n_J[pick]
        t = np.floor(rng.random((b, J, T)) * n_BJ[..., None]).astype(int)
        valid = np.arange(T)[None, None, :] < n_BJ[..., None]
        kl, ctrl, n2 = (np.where(valid, a[pick[..., None], t], np.nan)
                        for a in (u.kl_JT, u.ctrl_JT, u.norm2_JT))  # fmt: skip
        s = nces_stats(kl, ctrl, n2, u.weight_J[pick], u.freq_J[pick])
        for k in NCES_KINDS:
            out[k].append(s[k])
    return {k: np.concatenate(v) for k, v in out.items()}


def probing_point(u: ProbingUnit) -> dict[str, float]:
    with np.errstate(invalid="ignore"):
        has = u.n_K > 0
        ver = u.verified_K[~np.isnan(u.verified_K)]
        return {
            "verified": float(ver.mean()) if len(ver) else np.nan,
            "iia": float((u.success_K[has] / u.n_K[has]).mean()) if has.any() else np.nan,
        }


def probing_draws(u: ProbingUnit, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` task-then-pair resamples of ``u`` -> metric kind -> ``[n]`` values."""
    K = len(u.n_K)
    if K == 0:
        return {k: np.full(n, np.nan) for k in PROBING_KINDS}
    pick = rng.integers(0, K, (n, K))
    with np.errstate(invalid="ignore", divide="ignore"):
        ver = u.verified_K[pick]
        nn = u.n_K[pick]
        p = np.where(nn > 0, u.success_K[pick] / np.maximum(nn, 1), 0.0)
        iia = np.where(nn > 0, rng.binomial(nn, p) / np.maximum(nn, 1), np.nan)
        return {"verified": np.nanmean(ver, 1), "iia": np.nanmean(iia, 1)}


def seed_picks(n_seeds: int, n_draws: int, rng: np.random.Generator, flat: bool = False):
    """``[n_draws, n_seeds]`` seed indices of each draw (``flat``: every seed once)."""
    if flat:
        return np.tile(np.arange(n_seeds), (n_draws, 1))
    return rng.integers(0, n_seeds, (n_draws, n_seeds))


def combine(inner_SBK: np.ndarray, pick_BK: np.ndarray) -> np.ndarray:
    """Draw ``b``'s value: the mean over its picks ``k`` of seed ``pick[b, k]``'s own inner
    resample ``inner[pick[b, k], b, k]`` (each pick resamples features and tokens afresh)."""
    B, K = pick_BK.shape
    with warnings.catch_warnings():  # a draw of only missing seeds is NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(inner_SBK[pick_BK, np.arange(B)[:, None], np.arange(K)[None, :]], 1)


def percentile_ci(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    d = draws[np.isfinite(draws)]
    if not len(d):
        return np.nan, np.nan
    a = (1 - level) / 2
    lo, hi = np.quantile(d, [a, 1 - a])
    return float(lo), float(hi)

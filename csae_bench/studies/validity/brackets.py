"""Causal probing's interchange-intervention accuracy (IIA) in the validity study, with its
brackets at equal dimension k (issue 14, item 6; the patches themselves: docs/probing.md).

Per set and final SAE: tasks verified, and per k the IIA of the SAE's selected features and of k
random active features of the same SAE; per k, the SAE-independent brackets — the top-k residual
dimensions, the top-k principal directions — and the ceiling (the whole residual patched). Each
value is the mean over seeds of the mean over tasks with pairs, with a hierarchical-bootstrap CI
(seeds, then tasks, then pairs: :func:`~csae_bench.studies.validity.bootstrap.probing_draws`).
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

from csae_bench.studies.validity import bootstrap as bs
from csae_bench.studies.validity.config import LEVEL, ValidityConfig

SAE_INDEPENDENT = {
    "resid": "residual dimensions (top k by class-mean difference)",
    "pca": "principal directions (top k)",
    "ceiling": "ceiling (whole residual)",
}


def _estimate(units: list[bs.ProbingUnit | None], n: int, rng: np.random.Generator) -> dict:
    """Mean over seeds of each seed's task-mean IIA, and its 95% CI: ``n`` draws, each resampling
    the seeds, then every picked seed's tasks and pairs afresh (``None``: a seed without records)."""
    have = [u for u in units if u is not None and (u.n_K > 0).any()]
    if not have:
        return {"point": math.nan, "ci": [math.nan, math.nan], "n_seeds": 0}
    K = len(have)
    inner = np.stack([bs.probing_draws(u, n * K, rng)["iia"].reshape(n, K) for u in have])
    lo, hi = bs.percentile_ci(bs.combine(inner, bs.seed_picks(K, n, rng)), LEVEL)
    point = float(np.mean([bs.probing_point(u)["iia"] for u in have]))
    return {"point": point, "ci": [lo, hi], "n_seeds": K}


def _unit(record: dict[str, Any] | None, who: str, k: int) -> bs.ProbingUnit | None:
    """``who``'s IIA trials at ``k`` (``ceiling``: at every k) per judged task of one record."""
    if record is None:
        return None
    trials = []
    for t in record["tasks"]:
        if who == "ceiling":
            trials.append(t["ceiling"])
        else:
            at = next((r[who] for r in t["per_k"] if r["k"] == k), [0, 0])
            trials.append(at)
    verified = np.array([t["verified"] for t in record["tasks"]], dtype=float)
    s, n = np.array(trials, dtype=float).reshape(-1, 2).T
    return bs.ProbingUnit(verified, s, n.astype(int))


def iia_brackets(
    records: list[dict[str, Any]], cfg: ValidityConfig, layer: int, seeds: tuple[int, ...]
) -> dict[str, Any]:
    """The IIA table of one set from its final SAEs' probing records (:func:`.records.probing_record`).

    Returns ``{"ks": [...], "seeds": [seeds with records], "saes": {sae: {"verified": [n, of], "sae": {k: est}, "random": {k:
    est}}}, "independent": {who: {k: est}}}`` with ``est = {"point", "ci", "n_seeds"}``; the
    SAE-independent brackets are read from the first trained SAE's records (every SAE's record of
    a seed holds the same ones). Empty ``ks``: no probing record with pairs in the set.
    """
    final = {
        (r["seed"], r["sae"]): r
        for r in records
        if r["layer"] == layer and not r["snapshot"] and r["seed"] in seeds
    }
    ks = sorted({p["k"] for r in final.values() for t in r["tasks"] for p in t["per_k"]})
    measured = sorted({seed for seed, _ in final})
    out: dict[str, Any] = {"ks": ks, "seeds": measured, "saes": {}, "independent": {}}
    if not ks:
        return out

    def rng(*parts: str | int) -> np.random.Generator:
        key = [cfg.bootstrap_seed, layer, *(p if isinstance(p, int) else zlib.crc32(p.encode())
                                            for p in parts)]  # fmt: skip
        return np.random.default_rng(key)

    n = cfg.n_bootstrap
    for sae in cfg.saes:
        recs = [final.get((s, sae)) for s in seeds]
        tasks = [t for r in recs if r is not None for t in r["tasks"]]
        out["saes"][sae] = {
            "verified": [int(sum(t["verified"] for t in tasks)), len(tasks)],
            **{who: {k: _estimate([_unit(r, who, k) for r in recs], n, rng(sae, who, k))
                     for k in ks} for who in ("sae", "random")},
        }  # fmt: skip
    recs = [final.get((s, cfg.trained[0])) for s in seeds]
    for who in SAE_INDEPENDENT:
        out["independent"][who] = {
            k: _estimate([_unit(r, who, k) for r in recs], n, rng(who, k)) for k in ks
        }
    return out

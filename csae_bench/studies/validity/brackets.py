"""Causal probing's interchange-intervention accuracy (IIA) in the validity study, with its
brackets at equal dimension k (issue 14, item 6; the patches themselves: docs/probing.md).

Per set and final SAE: tasks verified, and per k the IIA of the SAE's selected features and of k
random active features of the same SAE; per k, the SAE-independent brackets — the top-k residual
dimensions, the top-k principal directions — and, once, the ceiling (the whole residual patched).
Each value is the mean over seeds of the mean over tasks with pairs, with a hierarchical-bootstrap
CI (seeds, then tasks, then pairs) drawn as the study's IIA metric draws its own
(:meth:`.summary._Units.bracket_draws`); the SAE's cell at the smallest k *is* that metric, with
its very draws, so the two tables print one CI for one number.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from csae_bench.studies.validity import bootstrap as bs
from csae_bench.studies.validity.config import LEVEL, MetricSpec

if TYPE_CHECKING:
    from csae_bench.studies.validity.summary import _Units

SAE_INDEPENDENT = {
    "resid": "residual dimensions (top k by class-mean difference)",
    "pca": "principal directions (top k)",
    "ceiling": "ceiling (whole residual, any k)",
}


def _estimate(points: list[float], inner_SBK: np.ndarray, pick_BK: np.ndarray) -> dict[str, Any]:
    """Mean over the seeds measured, the CI of the seed-then-inner resamples, the seeds counted."""
    finite = [x for x in points if math.isfinite(x)]
    lo, hi = bs.percentile_ci(bs.combine(inner_SBK, pick_BK), LEVEL)
    point = float(np.mean(finite)) if finite else math.nan
    return {"point": point, "ci": [lo, hi], "n_seeds": len(finite)}


def iia_brackets(
    units: _Units, spec: MetricSpec, seeds: list[int], pick_BK: np.ndarray
) -> dict[str, Any]:
    """The IIA table of one set from its final SAEs' probing records.

    ``spec``: the study's IIA metric (its draws fill the SAE's smallest-k cells); ``pick_BK``:
    that metric's seed picks (``[n_bootstrap, len(seeds)]``). Returns ``{"ks": [...], "seeds":
    [seeds with a record], "saes": {sae: {"verified": [n, of], "sae": {k: est}, "random": {k:
    est}}}, "independent": {who: {k: est}}}``, ``est = {"point", "ci", "n_seeds"}``; ``verified``
    counts (task, seed) pairs. The SAE-independent brackets are the same in every SAE's record of a
    seed; each seed's are read from the first SAE (trained first) that has a record there; the
    ceiling, the same at every k, has one entry (the smallest k). Empty ``ks``: no pairs in the set.
    """
    cfg, B, K = units.cfg, pick_BK.shape[0], len(seeds)
    recs = {(s, sae): units.final_probing(s, sae) for s in seeds for sae in cfg.saes}
    ks = sorted({p["k"] for r in recs.values() if r for t in r["tasks"] for p in t["per_k"]})
    measured = sorted({s for (s, _), r in recs.items() if r is not None})
    out: dict[str, Any] = {"ks": ks, "seeds": measured, "saes": {}, "independent": {}}
    if not ks:
        return out

    def cell(owner: list[str | None], who: str, k: int) -> dict[str, Any]:
        """``owner[i]``: the SAE whose record seed ``seeds[i]`` is read from (None: none)."""
        metric = who == "sae" and k == ks[0]  # the IIA metric itself: its very draws
        inner = [np.full(B * K, np.nan) if sae is None
                 else units.draws(spec, s, sae, cfg.final_tokens(sae)) if metric
                 else units.bracket_draws(s, sae, who, k)
                 for s, sae in zip(seeds, owner, strict=True)]  # fmt: skip
        points = [bs.probing_point(u)["iia"] if (u := units.probing_unit(s, sae, who, k)) else math.nan
                  for s, sae in zip(seeds, owner, strict=True) if sae]  # fmt: skip
        return _estimate(points, np.stack([x.reshape(B, K) for x in inner]), pick_BK)

    for sae in cfg.saes:
        owner = [sae if recs[(s, sae)] is not None else None for s in seeds]
        tasks = [t for s in seeds if (r := recs[(s, sae)]) for t in r["tasks"]]
        out["saes"][sae] = {
            "verified": [int(sum(t["verified"] for t in tasks)), len(tasks)],
            **{who: {k: cell(owner, who, k) for k in ks} for who in ("sae", "random")},
        }
    any_owner = [next((x for x in cfg.saes if recs[(s, x)] is not None), None) for s in seeds]
    for who in SAE_INDEPENDENT:
        out["independent"][who] = {
            k: cell(any_owner, who, k) for k in (ks[:1] if who == "ceiling" else ks)
        }
    return out

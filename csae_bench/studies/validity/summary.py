"""The numbers of docs/validity.md's Results, computed from the study's records only.

Per set (selection; in phase ``confirm`` both confirmation sets) and per candidate metric
(:meth:`~csae_bench.studies.validity.config.ValidityConfig.metrics`): every SAE's value with its
hierarchical-bootstrap CI (:mod:`.bootstrap`), every trained − null difference with its CI
(check 1), the reseed sd (check 2), the Spearman ρ over snapshots per seed (check 3), the CI
half-widths (check 4); then the verdict per metric, the choice rule and the confirmation — each
exactly as docs/validity.md declares (:func:`judge`, :func:`choose`, :func:`confirm`).
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from csae_bench.stats import sample_sd, spearman
from csae_bench.studies.validity import bootstrap as bs
from csae_bench.studies.validity.brackets import iia_brackets
from csae_bench.studies.validity.config import (
    LEVEL,
    POWER_ABS,
    POWER_REL,
    RHO_MIN,
    SD_FRACTION,
    MetricSpec,
    ValidityConfig,
)


def _rng(*parts: int | str) -> np.random.Generator:
    return np.random.default_rng(
        [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]
    )


class _Units:
    """The records of one set, indexed, with each record's inner bootstrap draws made once."""

    def __init__(self, records: dict[str, list[dict]], layer: int, cfg: ValidityConfig, n: int):
        self.cfg, self.layer, self.n = cfg, layer, n
        self.nces = {
            (r["seed"], r["sae"], r["control"], r["training_tokens"], r["snapshot"]): r
            for r in records["nces"]
            if r["layer"] == layer
        }
        self.probing = {
            (r["seed"], r["sae"], r["training_tokens"], r["snapshot"]): r
            for r in records["probing"]
            if r["layer"] == layer
        }
        self._draws: dict[tuple, dict[str, np.ndarray]] = {}

    def _record(self, spec: MetricSpec, seed: int, sae: str, tokens: int, snap: bool):
        if spec.control is None:
            return self.probing.get((seed, sae, tokens, snap))
        return self.nces.get((seed, sae, spec.control, tokens, snap))

    @staticmethod
    def _unit(spec: MetricSpec, rec: dict):
        if spec.control is not None:
            return bs.NcesUnit.from_record(rec)
        return bs.ProbingUnit.from_record(rec)

    def point(self, spec, seed, sae, tokens, snap=False) -> float:
        rec = self._record(spec, seed, sae, tokens, snap)
        if rec is None:
            return math.nan
        u = self._unit(spec, rec)
        pt = bs.nces_point(u) if spec.control is not None else bs.probing_point(u)
        return pt[spec.kind]

    def draws(self, spec: MetricSpec, seed: int, sae: str, tokens: int) -> np.ndarray:
        """``[n]`` inner resamples (features, tokens / tasks, pairs) of one final SAE."""
        key = (seed, sae, spec.control, tokens)
        if key not in self._draws:
            rec = self._record(spec, seed, sae, tokens, False)
            if rec is None:
                self._draws[key] = {
                    k: np.full(self.n, np.nan) for k in (*bs.NCES_KINDS, *bs.PROBING_KINDS)
                }
            else:
                rng = _rng(
                    self.cfg.bootstrap_seed, self.layer, seed, sae, spec.control or "probing"
                )
                u = self._unit(spec, rec)
                self._draws[key] = (
                    bs.nces_draws(u, self.n, rng) if spec.control is not None
                    else bs.probing_draws(u, self.n, rng)
                )  # fmt: skip
        return self._draws[key][spec.kind]

    def final_probing(self, seed: int, sae: str) -> dict | None:
        """One final SAE's reduced probing record (None: not measured)."""
        return self.probing.get((seed, sae, self.cfg.final_tokens(sae), False))

    def probing_unit(self, seed: int, sae: str, who: str, k: int | None) -> bs.ProbingUnit | None:
        """``who``'s IIA trials at ``k`` of one final SAE (:meth:`bs.ProbingUnit.from_record`)."""
        rec = self.final_probing(seed, sae)
        return None if rec is None else bs.ProbingUnit.from_record(rec, who, k)

    def bracket_draws(self, seed: int, sae: str, who: str, k: int | None) -> np.ndarray:
        """``[n]`` inner (task, pair) resamples of the IIA of ``who`` at ``k`` in one final SAE's
        record (NaN: no record) — the IIA brackets' draws, each from its own seeded stream."""
        key = ("bracket", seed, sae, who, k)
        if key not in self._draws:
            u = self.probing_unit(seed, sae, who, k)
            rng = _rng(self.cfg.bootstrap_seed, self.layer, seed, sae, "probing", who, k or 0)
            self._draws[key] = {"iia": np.full(self.n, np.nan) if u is None
                                else bs.probing_draws(u, self.n, rng)["iia"]}  # fmt: skip
        return self._draws[key]["iia"]


def metric_summary(
    units: _Units, spec: MetricSpec, seeds: list[int], snaps: list[int], rng_key: tuple
) -> dict[str, Any]:
    """Every number of one metric on one set (see the module docstring)."""
    cfg, B, K = units.cfg, units.cfg.n_bootstrap, len(seeds)
    sign = 1.0 if spec.higher_is_better else -1.0
    pick = bs.seed_picks(K, B, _rng(cfg.bootstrap_seed, *rng_key))
    inner, per_sae = {}, {}
    for sae in cfg.saes:
        tok = cfg.final_tokens(sae)
        inner[sae] = np.stack([units.draws(spec, s, sae, tok).reshape(B, K) for s in seeds])
        per_seed = [units.point(spec, s, sae, tok) for s in seeds]
        lo, hi = bs.percentile_ci(bs.combine(inner[sae], pick), LEVEL)
        finite = [x for x in per_seed if math.isfinite(x)]
        per_sae[sae] = {
            "per_seed": per_seed,
            "point": float(np.mean(finite)) if finite else math.nan,
            "ci": [lo, hi],
            "half_width": (hi - lo) / 2,
            "reseed_sd": sample_sd(finite),
        }
    pairs = {}
    for t in cfg.trained:
        for n in cfg.nulls:
            d = sign * bs.combine(inner[t] - inner[n], pick)
            lo, hi = bs.percentile_ci(d, LEVEL)
            gap = sign * (per_sae[t]["point"] - per_sae[n]["point"])
            pairs[f"{t} − {n}"] = {"gap": gap, "ci": [lo, hi], "excludes_0": bool(lo > 0)}
    rho = {}
    for t in cfg.trained:
        xs = [0, *snaps, cfg.train_tokens]
        per, series = [], []
        for s in seeds:
            ys = [units.point(spec, s, cfg.init_null, 0)]
            ys += [units.point(spec, s, t, x, True) for x in snaps]
            ys.append(units.point(spec, s, t, cfg.train_tokens))
            ok = [i for i, y in enumerate(ys) if math.isfinite(y)]
            per.append(sign * spearman([xs[i] for i in ok], [ys[i] for i in ok]))
            series.append(ys)
        fin = [r for r in per if math.isfinite(r)]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_series = np.nanmean(np.array(series, dtype=float), 0).tolist()
        rho[t] = {"per_seed": per, "mean": float(np.mean(fin)) if fin else math.nan,
                  "tokens": xs, "mean_series": mean_series}  # fmt: skip
    return {"metric": spec.name, "label": spec.label, "per_sae": per_sae, "pairs": pairs,
            "rho": rho, **judge(spec, per_sae, pairs, rho, cfg)}  # fmt: skip


def judge(spec: MetricSpec, per_sae: dict, pairs: dict, rho: dict, cfg: ValidityConfig) -> dict:
    """Checks 1–4 and the verdict of one metric on one set, as docs/validity.md declares.

    A check is ``None`` when something it needs is missing (a record, a finite CI): it does not
    pass. ``trusted`` = checks 1, 2 and 3 pass; ``score`` = smallest gap / largest reseed sd."""
    expected = [f"{t} − {n}" for t in cfg.trained for n in cfg.nulls]
    cis = [pairs.get(k, {}).get("ci", [math.nan, math.nan]) for k in expected]
    c1 = (
        None if not all(all(map(math.isfinite, ci)) for ci in cis) else all(ci[0] > 0 for ci in cis)
    )
    gaps = [pairs[k]["gap"] for k in expected if k in pairs]
    min_gap = min(gaps) if len(gaps) == len(expected) else math.nan
    sds = [per_sae[t]["reseed_sd"] for t in cfg.trained]
    max_sd = max(sds) if sds else math.nan
    n_seeds = min(sum(math.isfinite(x) for x in per_sae[t]["per_seed"]) for t in cfg.trained)
    c2 = None
    if math.isfinite(min_gap) and math.isfinite(max_sd) and n_seeds >= 2:
        c2 = bool(min_gap > 0 and max_sd < SD_FRACTION * min_gap)
    rhos = [rho[t]["mean"] for t in cfg.trained]
    c3 = None if not all(map(math.isfinite, rhos)) else all(r >= RHO_MIN for r in rhos)
    if spec.relative_power:
        ref = [abs(per_sae[t]["point"]) for t in cfg.trained]
        limit = POWER_REL * min(ref) if all(map(math.isfinite, ref)) else math.nan
    else:
        limit = POWER_ABS
    hw = [per_sae[s]["half_width"] for s in cfg.saes]
    c4 = (
        None
        if not (math.isfinite(limit) and all(map(math.isfinite, hw)))
        else all(h <= limit for h in hw)
    )
    score = math.nan
    if math.isfinite(min_gap) and math.isfinite(max_sd):
        score = min_gap / max_sd if max_sd > 0 else (math.inf if min_gap > 0 else math.nan)
    return {
        "checks": {"separation": c1, "reseed": c2, "monotonic": c3, "power": c4},
        "min_gap": min_gap,
        "max_reseed_sd": max_sd,
        "power_limit": limit,
        "trusted": c1 is True and c2 is True and c3 is True,
        "score": score,
    }


def choose(metrics: list[dict[str, Any]], specs: list[MetricSpec]) -> str | None:
    """The choice rule: among trusted metrics, the largest (smallest gap) / (largest reseed sd);
    ties (equal to 1e-9 relative) go to the simpler definition (``MetricSpec.simplicity``, then the
    page's order). None when no metric is trusted."""
    order = {s.name: (s.simplicity, i) for i, s in enumerate(specs)}
    trusted = [m for m in metrics if m["trusted"] and not math.isnan(m["score"])]
    if not trusted:
        return None
    best = max(m["score"] for m in trusted)
    tied = [
        m for m in trusted if m["score"] == best or math.isclose(m["score"], best, rel_tol=1e-9)
    ]
    return min(tied, key=lambda m: order[m["metric"]])["metric"]


def confirm(
    choice: str | None,
    sets: dict[str, dict[str, Any]],
    complete: Callable[[int, tuple[int, ...], str], bool] | None = None,
) -> dict[str, Any] | None:
    """The chosen metric's checks 1–3 on each confirmation set: per set True (all pass), False
    (one fails) or None (none fails but one lacks its records, e.g. a seed not yet measured:
    checks on the seeds measured so far prove less than the pre-declared set asks for);
    ``confirmed`` only if it passes them on every set (None: nothing was chosen, or no
    confirmation set is measured). ``complete(layer, seeds, choice)``: whether every record the
    chosen metric reads exists for a set (None: judged from the checks alone)."""
    conf = {k: v for k, v in sets.items() if k != "selection"}
    if choice is None or not conf:
        return None
    per: dict[str, bool | None] = {}
    for name, s in conf.items():
        m = next((x for x in s["metrics"] if x["metric"] == choice), None)
        checks = [m["checks"][c] for c in ("separation", "reseed", "monotonic")] if m else [None]
        measured = complete is None or complete(s["layer"], tuple(s["seeds"]), choice)
        per[name] = False if False in checks else (None if None in checks or not measured else True)
    return {"metric": choice, "per_set": per, "confirmed": all(v is True for v in per.values())}


def summarize(
    records: dict[str, list[dict]],
    cfg: ValidityConfig,
    frozen_choice: str | None = None,
    complete: Callable[[int, tuple[int, ...], str], bool] | None = None,
) -> dict[str, Any]:
    """The Results' numbers from ``records``. ``frozen_choice``: the selection's choice saved
    before the confirmation sets were measured (it is then not re-made). ``complete``: see
    :func:`confirm`."""
    from csae_bench.studies.validity.jobs import snapshot_tokens

    specs = cfg.metrics()
    snaps = snapshot_tokens(cfg)[:-1]
    sets = {}
    for i, (name, (layer, seeds)) in enumerate(cfg.sets().items()):
        units = _Units(records, layer, cfg, cfg.n_bootstrap * len(seeds))
        metrics = [
            metric_summary(units, sp, list(seeds), snaps, (i, j)) for j, sp in enumerate(specs)
        ]
        sets[name] = {"layer": layer, "seeds": list(seeds), "metrics": metrics}
        iia = next((j for j, sp in enumerate(specs) if sp.kind == "iia"), None)
        if iia is not None:  # the IIA metric's seed picks: its cell and the table's agree
            pick = bs.seed_picks(len(seeds), cfg.n_bootstrap, _rng(cfg.bootstrap_seed, i, iia))
            sets[name]["iia"] = iia_brackets(units, specs[iia], list(seeds), pick)
    choice = (
        frozen_choice if frozen_choice is not None else choose(sets["selection"]["metrics"], specs)
    )
    return {
        "sets": sets,
        "choice": choice,
        "choice_frozen": frozen_choice is not None,
        "confirmation": confirm(choice, sets, complete),
        "snapshot_tokens": [0, *snaps, cfg.train_tokens],
        "n_records": {k: len(v) for k, v in records.items()},
        "nces_seconds": float(sum(r.get("seconds", 0.0) for r in records["nces"])),
    }

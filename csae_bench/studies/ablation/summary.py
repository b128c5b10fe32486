"""The ablation report's numbers, computed from the study's records only (no model needed)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from csae_bench.stats import mean_sd, spearman
from csae_bench.studies.ablation.config import AblationConfig


def load_records(out: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Every record the study wrote under ``out``: ``{"core": [...], "nces": [...]}``."""
    records: dict[str, list[dict[str, Any]]] = {"core": [], "nces": []}
    for path in sorted(Path(out).glob("seed*/evals/*.json")):
        records["core" if path.name.startswith("core_") else "nces"].append(
            json.loads(path.read_text())
        )
    if not records["core"] and not records["nces"]:
        raise FileNotFoundError(
            f"No ablation results under {out}; run `python -m csae_bench.studies.ablation --out {out}`."
        )
    return records


def summarize(records: dict[str, list[dict[str, Any]]], cfg: AblationConfig) -> dict[str, Any]:
    """The numbers of the report, all computed from ``records``."""
    nces = records["nces"]
    by = defaultdict(list)
    for r in nces:
        by[(r["sae"], r["intervention"])].append(r)
    types = [t for t in cfg.interventions if any(k[1] == t for k in by)]
    seeds = sorted({r["seed"] for r in nces} | {r["seed"] for r in records["core"]})
    trained = [s for s in cfg.type_saes if s != "random-decoder"]

    type_rows = []
    for t in types:
        row: dict[str, Any] = {"type": t}
        for s in cfg.type_saes:
            rs = by.get((s, t), [])
            row[s] = {
                "nces_mean": mean_sd([r["metrics"]["nces_mean"] for r in rs]),
                "frac_verified": mean_sd([r["metrics"]["frac_causally_verified"] for r in rs]),
                "median_effect": mean_sd([r["metrics"]["median_effect"] for r in rs]),
            }
        # separation: trained SAE minus the random-decoder null, per seed, then over seeds
        gaps, fp = [], []
        for seed in seeds:
            null = [r for r in by.get(("random-decoder", t), []) if r["seed"] == seed]
            for s in trained:
                mine = [r for r in by.get((s, t), []) if r["seed"] == seed]
                if (
                    null
                    and mine
                    and mine[0]["metrics"]["nces_mean"] is not None
                    and null[0]["metrics"]["nces_mean"] is not None
                ):
                    gaps.append(mine[0]["metrics"]["nces_mean"] - null[0]["metrics"]["nces_mean"])
            if null:
                fp.append(null[0]["metrics"]["frac_causally_verified"])
        row["separation"] = mean_sd(gaps)
        row["null_verified"] = mean_sd(fp)
        # stability: per-feature NCES rank agreement with zero ablation on the same features
        rhos = []
        for s in cfg.type_saes:
            for seed in seeds:
                a = {
                    f["feature_idx"]: f["nces"]
                    for r in by.get((s, "zero"), [])
                    if r["seed"] == seed
                    for f in r["features"]
                }
                b = {
                    f["feature_idx"]: f["nces"]
                    for r in by.get((s, t), [])
                    if r["seed"] == seed
                    for f in r["features"]
                }
                common = [k for k in a if k in b and a[k] is not None and b[k] is not None]
                rho = spearman([a[k] for k in common], [b[k] for k in common])
                if np.isfinite(rho):
                    rhos.append(rho)
        row["rank_vs_zero"] = mean_sd(rhos)
        row["seed_sd"] = float(
            np.nanmean(
                [row[s]["nces_mean"][1] for s in cfg.type_saes if row[s]["nces_mean"][2] > 1]
                or [float("nan")]
            )
        )
        type_rows.append(row)
    scored = [r for r in type_rows if r["separation"][2] > 0]
    best = max(scored, key=lambda r: r["separation"][0]) if scored else None

    core_by = defaultdict(list)
    for r in records["core"]:
        core_by[r["sae"]].append(r)
    zero = {k[0]: v for k, v in by.items() if k[1] == "zero"}
    parts_names = [n for n in ("topk", "csae", *cfg.variants, "random-decoder") if n in core_by]
    parts = []
    for n in parts_names:
        cm = [r["metrics"] for r in core_by[n]]
        parts.append(
            {
                "sae": n,
                "l0": mean_sd([m.get("sparsity.l0") for m in cm]),
                "ce_loss_score": mean_sd(
                    [m.get("model_performance_preservation.ce_loss_score") for m in cm]
                ),
                "ev_centred": mean_sd(
                    [m.get("reconstruction_quality.explained_variance_mean_centred") for m in cm]
                ),
                "frac_alive": mean_sd([m.get("misc_metrics.frac_alive") for m in cm]),
                "train_seconds": mean_sd(
                    [
                        r["training"].get("wall_seconds", r["training"].get("seconds"))
                        for r in core_by[n]
                    ]
                ),
                "nces_mean": mean_sd([r["metrics"]["nces_mean"] for r in zero.get(n, [])]),
                "frac_verified": mean_sd(
                    [r["metrics"]["frac_causally_verified"] for r in zero.get(n, [])]
                ),
            }
        )

    def paired(a: str, b: str, getter) -> list[float]:
        out = []
        for seed in seeds:
            va, vb = getter(a, seed), getter(b, seed)
            if va is not None and vb is not None:
                out.append(va - vb)
        return out

    def nces_of(n, seed):
        rs = [r for r in zero.get(n, []) if r["seed"] == seed]
        return rs[0]["metrics"]["nces_mean"] if rs else None

    def core_of(metric):
        def get(n, seed):
            rs = [r for r in core_by.get(n, []) if r["seed"] == seed]
            return rs[0]["metrics"].get(metric) if rs else None

        return get

    verdict = {
        "nces_gain": paired("csae", "topk", nces_of),
        "csae_vs_null": paired("csae", "random-decoder", nces_of),
        "ce_gain": paired("csae", "topk", core_of("model_performance_preservation.ce_loss_score")),
        "ev_gain": paired(
            "csae", "topk", core_of("reconstruction_quality.explained_variance_mean_centred")
        ),
        "l0_gap": paired("csae", "topk", core_of("sparsity.l0")),
    }
    return {
        "types": type_rows,
        "best": best,
        "parts": parts,
        "verdict": verdict,
        "seeds": seeds,
        "n_nces_runs": len(nces),
        "nces_seconds": float(sum(r["seconds"] for r in nces)),
        "core_seconds": float(sum(r["seconds"] for r in records["core"])),
    }

"""Reading the validity study's records back (no model needed): NCES records as written by
:class:`~csae_bench.studies.validity.jobs.NcesTokensJob`, probing results (SAEBench format) reduced
to what the metrics read, keyed by layer, seed, SAE and training tokens."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

_PROBING = re.compile(r"^probing_(?P<sae>.+?)(@(?P<tokens>\d+))?\.json$")
_DIRS = re.compile(r"^layer(?P<layer>\d+)/seed(?P<seed>\d+)/records$")


def probing_record(raw: dict[str, Any], layer: int, seed: int, sae: str, tokens: int | None,
                   snapshot: bool) -> dict[str, Any]:  # fmt: skip
    """The probing metrics' inputs from one SAEBench-format probing result: per judged task,
    verified (as the eval's ``fraction_tasks_verified`` counts it), the ceiling's IIA trials and,
    per k (ascending), the IIA trials ``[n_success, n]`` of the SAE's features and of the random-
    feature (per set: :func:`_per_set`), residual-dimension and principal-direction brackets
    (``[0, 0]``: no pairs)."""
    tasks = []
    for d in raw["eval_result_details"]:
        if not d.get("judged"):
            continue
        ic = d.get("interchange") or {}
        per_k = sorted(ic.get("per_k") or [], key=lambda r: r["k"])
        tasks.append(
            {
                "task": d["task_name"],
                "verified": float(bool(d.get("verified"))),
                "ceiling": _trials(ic.get("ceiling")),
                "per_k": [_at_k(r) for r in per_k],
            }
        )
    return {"layer": layer, "seed": seed, "sae": sae, "training_tokens": tokens,
            "snapshot": snapshot, "tasks": tasks}  # fmt: skip


def _trials(est: dict[str, Any] | None) -> list[int]:
    est = est or {}
    return [int(est.get("n_success", 0)), int(est.get("n", 0))]


def _at_k(r: dict[str, Any]) -> dict[str, Any]:
    """One k's trials: the SAE's features, random features (per set), residual dimensions, PCA."""
    trials = {w: _trials(r.get(w)) for w in ("sae", "resid", "pca")}
    return {"k": r["k"], **trials, "random": _per_set(r)}


def _per_set(r: dict[str, Any]) -> list[float]:
    """The random bracket's trials per random set: the eval pools its sets' trials, but every set
    patches the same pairs, so ``n`` counts each pair once per set; divided back to one set's
    pairs (success: the sets' mean), a bootstrap of them resamples pairs, not copies."""
    s, n = _trials(r.get("random"))
    m = max(len(r.get("random_per_set") or []), 1)
    return [s / m, n // m]


def load_records(out: str | Path, train_tokens: int, init_null: str) -> dict[str, list[dict]]:
    """Every record under ``out``: ``{"nces": [...], "probing": [...]}``.

    Raises:
        FileNotFoundError: none at all (the message says how to run the study).
    """
    out = Path(out)
    found: dict[str, list[dict]] = {"nces": [], "probing": []}
    for path in sorted(out.glob("layer*/seed*/records/*.json")):
        where = _DIRS.match(path.parent.relative_to(out).as_posix())
        if where is None:
            continue
        layer, seed = int(where["layer"]), int(where["seed"])
        raw = json.loads(path.read_text())
        if path.name.startswith("nces_"):
            found["nces"].append(raw)
        elif m := _PROBING.match(path.name):
            snap = m["tokens"] is not None
            tokens = int(m["tokens"]) if snap else (0 if m["sae"] == init_null else train_tokens)
            found["probing"].append(probing_record(raw, layer, seed, m["sae"], tokens, snap))
    if not found["nces"] and not found["probing"]:
        raise FileNotFoundError(
            f"No validity records under {out}; run `csae-bench study validity --out {out}`."
        )
    return found


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)

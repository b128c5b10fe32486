"""How much of NCES's per-token spread position explains (issue 14, item 4), from the validity
study's records — does stratifying a feature's tokens by position (``token_sampling="position"``)
buy power?

    python benchmarks/position_variance.py RUN_DIR [LAYER]   # RUN_DIR of `csae-bench study validity`

Per final SAE and seed, on log KL of the feature edits (and of the control edits): the share of
within-feature variance explained by position (8 bins of 16 positions, fit on feature-demeaned
values), and the share of all variance explained by feature identity (with the share that
``n_features`` groups of ``tokens_per_feature`` tokens show by chance). Numbers, not timings.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

N_BINS, BIN = 8, 16


def _r2(y: np.ndarray, fit: np.ndarray) -> float:
    return float(1 - ((y - fit) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def _group_mean(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    _, inv = np.unique(groups, return_inverse=True)
    return (np.bincount(inv, y) / np.bincount(inv))[inv]


def shares(record: dict) -> dict[str, float]:
    """``{"position|kl", "position|kl_control", "feature|kl", "chance"}`` for one NCES record."""
    t = record["tokens"]
    feat, pos = np.asarray(t["feature"]), np.minimum(np.asarray(t["pos"]) // BIN, N_BINS - 1)
    log_kl = {k: np.log(np.maximum(np.asarray(t[k], float), 1e-9)) for k in ("kl", "kl_control")}
    out = {}
    for key, y in log_kl.items():
        within = y - _group_mean(y, feat)
        out[f"position|{key}"] = _r2(within, _group_mean(within, pos))
    out["feature|kl"] = _r2(log_kl["kl"], _group_mean(log_kl["kl"], feat))
    out["chance"] = (len(np.unique(feat)) - 1) / (len(feat) - 1)
    return out


def main(run_dir: str, layer: int = 6) -> str:
    by_sae: dict[str, list[dict[str, float]]] = defaultdict(list)
    for path in sorted(Path(run_dir).glob(f"layer{layer}/seed*/records/nces_*.json")):
        record = json.loads(path.read_text())
        if not record["snapshot"]:
            by_sae[record["sae"]].append(shares(record))
    if not by_sae:
        raise SystemExit(f"No NCES records under {run_dir}/layer{layer}: run the validity study.")
    lines = [
        "| SAE | seeds | position, within feature (edit) | (control) | feature identity | by chance |",
        "|---|---|---|---|---|---|",
    ]
    for sae, rows in sorted(by_sae.items()):
        mean = {k: np.mean([r[k] for r in rows]) for k in rows[0]}
        lines.append(
            f"| {sae} | {len(rows)} | {mean['position|kl']:.3f} | {mean['position|kl_control']:.3f}"
            f" | {mean['feature|kl']:.3f} | {mean['chance']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: python benchmarks/position_variance.py RUN_DIR [LAYER]")
    sys.stdout.write(main(sys.argv[1], *(int(a) for a in sys.argv[2:])))

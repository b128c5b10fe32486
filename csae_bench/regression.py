"""CI regression check: a smoke-suite results folder against the recorded reference.

    python -m csae_bench.regression check results_smoke            # exit 1 and name every regression
    python -m csae_bench.regression record results_smoke           # update baselines/smoke_reference.json

The reference (``baselines/smoke_reference.json``) holds, per architecture, every headline metric
of the leaderboard with a two-sided tolerance, and bounds on overhead ratios (CSAE vs TopK training
wall time, NCES vs core eval time). Tolerances come from the seed-to-seed spread measured by
``record`` on a results folder with several seeds (``--seed 0 1 2``)::

    tolerance = max(k_sd · sd over seeds, rel_floor · |reference|, abs_floor)

The reference value is the suite's own seed (the first seed in the folder). Recording from a
single-seed folder keeps the tolerances already in the reference and only moves the values — the
one command to accept an intended change. Metrics move both ways on purpose: an unexplained
improvement is as much a change of behaviour as a loss, and is accepted the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csae_bench.utils import atomic_write_json

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "baselines" / "smoke_reference.json"
SUITE = "evals/smoke.toml"
UPDATE_COMMAND = (
    f"python -m csae_bench.run --suite {SUITE} --out results_smoke && "
    "python -m csae_bench.regression record results_smoke"
)
K_SD = 4.0
"""Tolerance in seed standard deviations (the CI seed is fixed, so a pass at 4 sd leaves room for a
different CPU's float order, which can flip a TopK choice and change the trajectory like a new seed)."""
REL_FLOOR = 0.02
"""Smallest tolerance relative to the reference value (metrics whose seed sd happened to be tiny)."""
ABS_FLOOR = 0.01
"""Smallest absolute tolerance."""
OVERHEAD_SLACK = 3.0
"""Overhead bounds are ``OVERHEAD_SLACK ×`` the largest ratio measured (and at least the DESIGN §9
target): wall-time ratios on a loaded, shared 2-core CI machine move a lot between runs."""
OVERHEAD_TARGETS = {"csae_vs_topk_train_time": 1.3, "nces_vs_core_eval_time": 2.0}
"""DESIGN §9 targets, recorded next to the bounds CI enforces."""


class RegressionError(RuntimeError):
    """The results folder cannot be compared (missing files); the message says what to do."""


@dataclass
class Finding:
    """One value compared with the reference."""

    name: str
    reference: float | None
    value: float | None
    tolerance: float | None
    passed: bool
    note: str = ""

    def message(self) -> str:
        if self.value is None:
            return f"{self.name}: missing from the results (reference {self.reference:.6g}). {self.note}"
        if self.reference is None:  # an upper bound (overhead)
            return (
                f"{self.name}: value {self.value:.4g} exceeds the bound {self.tolerance:.4g} "
                f"(overhead ratio must stay <= bound). {self.note}"
            )
        return (
            f"{self.name}: value {self.value:.6g} vs reference {self.reference:.6g} differs by "
            f"{self.value - self.reference:+.4g}, tolerance ±{self.tolerance:.4g}. {self.note}"
        )


# ---------------------------------------------------------------- reading a results folder


def observe(results_dir: str | Path) -> dict[int, dict[str, float]]:
    """``{seed: {"<arch>/<eval>/<metric>": value, "overhead/<ratio>": value}}`` of a run's folder."""
    results_dir = Path(results_dir)
    board_path = results_dir / "leaderboard.json"
    if not board_path.exists():
        raise RegressionError(
            f"{board_path} does not exist: run the smoke suite first "
            f"(python -m csae_bench.run --suite {SUITE} --out {results_dir})."
        )
    board = json.loads(board_path.read_text())
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for row in board["rows"]:
        seed = int(row["seed"] or 0)
        arch = row["architecture"]
        if row.get("l0") is not None:
            out[seed][f"{arch}/core/sparsity.l0"] = float(row["l0"])
        for eval_type, metrics in row["metrics"].items():
            for metric, entry in metrics.items():
                if entry.get("value") is not None:
                    out[seed][f"{arch}/{eval_type}/{metric}"] = float(entry["value"])
    for seed, ratios in overhead_ratios(results_dir).items():
        out[seed].update({f"overhead/{k}": v for k, v in ratios.items()})
    return dict(out)


def overhead_ratios(results_dir: Path) -> dict[int, dict[str, float]]:
    """Per seed: CSAE / TopK training wall seconds (``training_summary.json``) and NCES / core eval
    seconds of the CSAE (the core time is read where the core eval records it)."""
    ratios: dict[int, dict[str, float]] = defaultdict(dict)
    for topk in results_dir.glob("*/*/seed*/saes/topk/training_summary.json"):
        csae = topk.parent.parent / "csae" / "training_summary.json"
        if csae.exists():
            seed = int(topk.parents[2].name.removeprefix("seed"))
            t, c = (json.loads(p.read_text())["wall_seconds"] for p in (topk, csae))
            if t > 0:
                ratios[seed]["csae_vs_topk_train_time"] = c / t
    for nces in (results_dir / "eval_results" / "nces").glob("*_csae-*_eval_results.json"):
        core = results_dir / "eval_results" / "core" / nces.name
        if not core.exists():
            continue
        n, c = json.loads(nces.read_text()), json.loads(core.read_text())
        core_s = (c.get("eval_result_unstructured") or {}).get("seconds_total")
        seed = int(n["sae_lens_id"].rsplit("-s", 1)[1])
        if core_s:
            ratios[seed]["nces_vs_core_eval_time"] = (
                n["eval_result_metrics"]["cost"]["seconds_total"] / core_s
            )
    return dict(ratios)


# ---------------------------------------------------------------- comparing and recording


def compare(observed: dict[str, float], reference: dict[str, Any]) -> list[Finding]:
    """Every metric and overhead ratio of ``reference`` checked against ``observed`` (one seed)."""
    findings = []
    how = f"If the change is intended, update the reference: {reference.get('update_command', UPDATE_COMMAND)}"
    for name, ref in reference["metrics"].items():
        value = observed.get(name)
        if value is None or ref["value"] is None:
            findings.append(
                Finding(
                    name,
                    ref["value"],
                    value,
                    ref["tolerance"],
                    passed=ref["value"] is None,
                    note="Did the suite or the leaderboard change? " + how,
                )
            )
            continue
        ok = math.isfinite(value) and abs(value - ref["value"]) <= ref["tolerance"]
        findings.append(Finding(name, ref["value"], value, ref["tolerance"], ok, "" if ok else how))
    for name, bound in reference.get("overhead", {}).items():
        value = observed.get(f"overhead/{name}")
        if value is None:
            findings.append(
                Finding(
                    f"overhead/{name}",
                    None,
                    None,
                    bound["max"],
                    True,
                    "not measured in this folder",
                )
            )
            continue
        ok = value <= bound["max"]
        findings.append(
            Finding(
                f"overhead/{name}",
                None,
                value,
                bound["max"],
                ok,
                "" if ok else "A slower code path? Profile with `tox -e bench`.",
            )
        )
    return findings


def check(results_dir: str | Path, reference_path: str | Path = REFERENCE) -> list[Finding]:
    """Compare the suite's seed in ``results_dir`` with the reference; returns the failures."""
    reference = json.loads(Path(reference_path).read_text())
    observed = observe(results_dir)
    seed = int(reference.get("seed", 0))
    if seed not in observed:
        raise RegressionError(
            f"{results_dir} has no results for seed {seed}, the reference's seed; "
            f"run the smoke suite with --seed {seed}."
        )
    return [f for f in compare(observed[seed], reference) if not f.passed]


def failure_report(failures: list[Finding], reference_path: str | Path = REFERENCE) -> str:
    lines = [f"{len(failures)} regression(s) against {reference_path}:"]
    lines += [f"  - {f.message()}" for f in failures]
    return "\n".join(lines)


def tolerance(sd: float, value: float) -> float:
    return max(K_SD * sd, REL_FLOOR * abs(value), ABS_FLOOR)


def _sd(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def record(
    results_dirs: Sequence[str | Path],
    reference_path: str | Path = REFERENCE,
    seed: int | None = None,
) -> dict[str, Any]:
    """Write the reference from ``results_dirs`` (their seeds pooled; where two folders hold the same
    seed, the later one wins). With two or more seeds the tolerances are set from their spread; with
    one, the existing tolerances are kept."""
    by_seed: dict[int, dict[str, float]] = {}
    for d in results_dirs:
        by_seed.update(observe(d))  # a later folder's seed replaces an earlier folder's same seed
    seeds = sorted(by_seed)
    seed = seeds[0] if seed is None else seed
    base = by_seed[seed]
    old = json.loads(Path(reference_path).read_text()) if Path(reference_path).exists() else {}
    metrics, overhead = {}, {}
    for name in sorted(k for k in base if not k.startswith("overhead/")):
        values = [by_seed[s][name] for s in seeds if name in by_seed[s]]
        if len(seeds) >= 2:
            sd = _sd(values)
            metrics[name] = {
                "value": base[name],
                "tolerance": tolerance(sd, base[name]),
                "seed_sd": sd,
                "seed_values": values,
            }
        else:
            prev = old.get("metrics", {}).get(name)
            if prev is None:
                raise RegressionError(
                    f"{name} is new and only one seed was given: record from a folder with "
                    "several seeds (--seed 0 1 2) to measure its tolerance."
                )
            metrics[name] = {**prev, "value": base[name]}
    for key in sorted(k for k in base if k.startswith("overhead/")):
        name = key.removeprefix("overhead/")
        values = [by_seed[s][key] for s in seeds if key in by_seed[s]]
        overhead[name] = {
            "max": round(max(OVERHEAD_SLACK * max(values), OVERHEAD_TARGETS.get(name, 0.0)), 2),
            "measured": values,
            "design_target": OVERHEAD_TARGETS.get(name),
        }
    for name, prev in old.get("overhead", {}).items():
        overhead.setdefault(name, prev)
    reference = {
        "description": "Reference results of the CI smoke suite (evals/smoke.toml) on the embedded "
        "Gemma-3-270M, checked by tests/test_run.py::test_smoke_suite_end_to_end.",
        "suite": SUITE,
        "seed": seed,
        "spread_seeds": seeds if len(seeds) >= 2 else old.get("spread_seeds", seeds),
        "update_command": UPDATE_COMMAND,
        "tolerance_rule": f"max({K_SD} x seed sd, {REL_FLOOR} x |value|, {ABS_FLOOR}), two-sided",
        "justification": old.get("justification", ""),
        "metrics": metrics,
        "overhead": overhead,
    }
    atomic_write_json(reference_path, reference)
    return reference


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m csae_bench.regression",
        description="Compare a smoke-suite results folder with "
        "baselines/smoke_reference.json, or re-record it.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="exit 1 and name every metric out of tolerance")
    p_check.add_argument("results", help="results folder of the smoke suite (--out)")
    p_check.add_argument("--reference", default=str(REFERENCE))
    p_rec = sub.add_parser("record", help="write the reference from one or more results folders")
    p_rec.add_argument(
        "results", nargs="+", help="results folder(s); several seeds set the tolerances"
    )
    p_rec.add_argument("--reference", default=str(REFERENCE))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "check":
            failures = check(args.results, args.reference)
            if failures:
                logger.error("%s", failure_report(failures, args.reference))
                return 1
            logger.info("No regressions against %s.", args.reference)
        else:
            ref = record(args.results, args.reference)
            logger.info(
                "Wrote %s (%d metrics, seeds %s).",
                args.reference,
                len(ref["metrics"]),
                ref["spread_seeds"],
            )
    except RegressionError as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

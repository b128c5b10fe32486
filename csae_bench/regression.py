"""CI regression check: a smoke-suite results folder against the recorded reference.

    csae-bench regression check results_smoke     # exit 1 and name every regression
    csae-bench regression record results_smoke    # update baselines/smoke_reference.json

(``python -m csae_bench.regression check|record ...`` is the same command.) The results are read
from the folder's leaderboard (:func:`csae_bench.reporting.leaderboard.read_leaderboard`), whose
rows already carry each SAE's architecture and seed, so nothing here knows the results layout.

The reference (``baselines/smoke_reference.json``) holds, per architecture, every headline metric
of the leaderboard with a two-sided tolerance. Tolerances come from the seed-to-seed spread
measured by ``record`` on results folders with several seeds (``--seed 0 1 2 ...``)::

    tolerance = max(k_sd · sd over seeds, seed_range_slack · max |seed value − reference|,
                    rel_floor · |reference|, abs_floor, step)

where ``step`` is the metric's resolution in the smoke suite (one feature of ``n_features``, one
task of ``n_tasks``, one test example: :func:`metric_steps`), so a metric whose recorded spread was
zero still tolerates the smallest change it can make. Another CPU or thread count reorders float
sums, which can send training down another trajectory -- a change as large as a new seed at worst;
the tolerance is sized for that (the proxy check: ``check --seed`` on seeds and thread counts the
reference was not recorded from). A metric that some recorded seeds did not produce at all (NCES of
an SAE left with no alive feature) is ``optional``: its absence passes, its value is checked. Wall-time ratios are not checked here: timing belongs to the
benchmarks (``benchmarks/``, ``docs/overhead.md``), never to a pass/fail test.

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

from csae_bench.errors import BadInputError
from csae_bench.stats import sample_sd

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "baselines" / "smoke_reference.json"
SUITE = "evals/smoke.toml"
UPDATE_COMMAND = (
    f"python -m csae_bench.run --suite {SUITE} --out results_smoke && "
    "python -m csae_bench.regression record results_smoke"
)
K_SD = 5.0
"""Tolerance in seed standard deviations. Another CPU's float order can flip a TopK choice and
change a tiny run's trajectory like a new seed; the smoke suite's NCES and probing metrics (8
features, 24 test examples) are heavy-tailed over seeds, so 4 sd of a few seeds failed fresh seeds.
5 sd (with the range slack below) is the smallest tried that a leave-one-out over 9 seeds accepted
in 656 of 657 checks (the reference's ``robustness`` section)."""
SEED_RANGE_SLACK = 2.0
"""Tolerance as a multiple of the largest distance of any recorded seed from the reference value:
with few seeds the sd understates heavy tails, and a result as far off as a recorded seed was is
what another CPU may give."""
REL_FLOOR = 0.02
"""Smallest tolerance relative to the reference value (metrics whose seed sd happened to be tiny)."""
ABS_FLOOR = 0.01
"""Smallest absolute tolerance."""


class RegressionError(BadInputError, RuntimeError):
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
    """``{seed: {"<arch>/<eval>/<metric>": value}}`` of a run's folder (its leaderboard; a row
    without a seed counts as seed 0).

    Raises:
        RegressionError: the folder has no leaderboard (the message says which run makes one).
    """
    from csae_bench.reporting.leaderboard import leaderboard_path, read_leaderboard

    board = read_leaderboard(results_dir)
    if board is None:
        raise RegressionError(
            f"{leaderboard_path(results_dir)} does not exist: run the smoke suite first "
            f"(python -m csae_bench.run --suite {SUITE} --out {results_dir})."
        )
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
    return dict(out)


# ---------------------------------------------------------------- comparing and recording


def compare(observed: dict[str, float], reference: dict[str, Any]) -> list[Finding]:
    """Every metric of ``reference`` checked against ``observed`` (one seed)."""
    findings = []
    how = f"If the change is intended, update the reference: {reference.get('update_command', UPDATE_COMMAND)}"
    for name, ref in reference["metrics"].items():
        value = observed.get(name)
        if value is None and ref.get("optional"):
            continue  # absent on some recorded seeds too (e.g. an SAE with no alive feature)
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
    return findings


def check(
    results_dir: str | Path, reference_path: str | Path = REFERENCE, seed: int | None = None
) -> list[Finding]:
    """Compare one seed of ``results_dir`` (default: the reference's own seed) with the reference;
    returns the failures. Another ``seed`` is the robustness proxy: a result as far from the
    reference as a fresh seed must still pass."""
    reference = json.loads(Path(reference_path).read_text())
    observed = observe(results_dir)
    seed = int(reference.get("seed", 0)) if seed is None else seed
    if seed not in observed:
        raise RegressionError(
            f"{results_dir} has no results for seed {seed}; run the smoke suite with --seed {seed}."
        )
    return [f for f in compare(observed[seed], reference) if not f.passed]


def failure_report(failures: list[Finding], reference_path: str | Path = REFERENCE) -> str:
    lines = [f"{len(failures)} regression(s) against {reference_path}:"]
    lines += [f"  - {f.message()}" for f in failures]
    return "\n".join(lines)


def metric_steps(suite: str | Path = REPO / SUITE) -> dict[str, tuple[float, str]]:
    """``{"<eval_type>/<metric>": (step, why)}``: the resolution of the suite's discrete metrics,
    the smallest change one feature, task or test example makes. A tolerance below it would fail a
    result that differs by a single verified feature (e.g. 1/8 of NCES features)."""
    from csae_bench.evals.nces.config import NCESEvalConfig
    from csae_bench.evals.probing.config import ProbingEvalConfig
    from csae_bench.suite import build_config

    cfg = build_config(suite)
    nces = NCESEvalConfig(**cfg.eval_settings.get("nces", {}))
    probing = ProbingEvalConfig(**cfg.eval_settings.get("probing", {}))
    n_tasks = len(probing.tasks)
    n_test = n_tasks * 2 * round(probing.examples_per_class * probing.test_fraction)
    steps = {
        "core/misc_metrics.frac_alive": (1 / cfg.d_sae, f"one feature of d_sae={cfg.d_sae}"),
        "nces/nces.frac_causally_verified": (
            1 / nces.n_features,
            f"one feature of n_features={nces.n_features}",
        ),
        "csae_probing/causal.fraction_tasks_verified": (1 / n_tasks, f"one task of {n_tasks}"),
    }
    for k in probing.ks:
        steps[f"csae_probing/probing.sae_top_{k}_test_accuracy"] = (
            1 / n_test,
            f"one test example of {n_test} ({n_tasks} tasks)",
        )
    return steps


def _step(name: str, steps: dict[str, tuple[float, str]]) -> tuple[float, str] | None:
    """The step of ``<arch>/<eval_type>/<metric>``, if the metric is discrete."""
    return steps.get(name.split("/", 1)[1])


def tolerance(sd: float, value: float, step: float = 0.0, max_dev: float = 0.0) -> float:
    """The two-sided tolerance of a metric (module docstring): ``max(K_SD·sd, SEED_RANGE_SLACK ·
    max_dev, REL_FLOOR·|value|, ABS_FLOOR, step)``."""
    return max(K_SD * sd, SEED_RANGE_SLACK * max_dev, REL_FLOOR * abs(value), ABS_FLOOR, step)


def record(
    results_dirs: Sequence[str | Path],
    reference_path: str | Path = REFERENCE,
    seed: int | None = None,
) -> dict[str, Any]:
    """Write the reference from ``results_dirs`` (their seeds pooled; where two folders hold the same
    seed, the later one wins). With two or more seeds the tolerances are set from their spread; with
    one, the existing tolerances are kept (floored at the metric's step)."""
    from csae_bench.utils import atomic_write_json  # imports torch: only when recording

    by_seed: dict[int, dict[str, float]] = {}
    for d in results_dirs:
        by_seed.update(observe(d))  # a later folder's seed replaces an earlier folder's same seed
    seeds = sorted(by_seed)
    seed = seeds[0] if seed is None else seed
    base = by_seed[seed]
    old = json.loads(Path(reference_path).read_text()) if Path(reference_path).exists() else {}
    steps = metric_steps()
    metrics = {}
    for name in sorted(base):
        step, why = _step(name, steps) or (0.0, None)
        values = [by_seed[s][name] for s in seeds if name in by_seed[s]]
        if len(seeds) >= 2:
            sd = sample_sd(values)
            max_dev = max(abs(v - base[name]) for v in values)
            metrics[name] = {
                "value": base[name],
                "tolerance": tolerance(sd, base[name], step, max_dev),
                "seed_sd": sd,
                "seed_values": values,
            }
        else:
            prev = old.get("metrics", {}).get(name)
            if prev is None:
                raise RegressionError(
                    f"{name} is new and only one seed was given: record from a folder with "
                    "several seeds (--seed 0 1 2 3 4) to measure its tolerance."
                )
            metrics[name] = {**prev, "value": base[name], "tolerance": max(prev["tolerance"], step)}
        if why is not None:
            metrics[name].update(step=step, step_is=why)
        if len(seeds) >= 2 and len(values) < len(seeds):
            # A metric some seeds do not produce (NCES of an SAE left with no alive feature) may be
            # absent; when present it is checked like any other.
            metrics[name]["optional"] = True
            metrics[name]["present_in_seeds"] = [s for s in seeds if name in by_seed[s]]
    reference = {
        "description": "Reference results of the CI smoke suite (evals/smoke.toml) on the embedded "
        "Gemma-3-270M, checked by tests/test_run.py::test_smoke_suite_end_to_end.",
        "suite": SUITE,
        "seed": seed,
        "spread_seeds": seeds if len(seeds) >= 2 else old.get("spread_seeds", seeds),
        "update_command": UPDATE_COMMAND,
        "tolerance_rule": (
            f"max({K_SD} x seed sd, {SEED_RANGE_SLACK} x largest seed deviation, "
            f"{REL_FLOOR} x |value|, {ABS_FLOOR}, step), two-sided"
        ),
        "justification": old.get("justification", ""),
        "metrics": metrics,
    }
    if "robustness" in old:
        reference["robustness"] = old["robustness"]
    atomic_write_json(reference_path, reference)
    return reference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``check`` and ``record`` subcommands, on ``parser`` (``python -m csae_bench.regression``
    or ``csae-bench regression``)."""
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="exit 1 and name every metric out of tolerance")
    p_check.add_argument("results", help="results folder of the smoke suite (--out)")
    p_check.add_argument("--reference", default=str(REFERENCE))
    p_check.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="check these seeds of the folder against the reference (the robustness proxy: seeds "
        "and thread counts it was not recorded from) [default: the reference's seed]",
    )
    p_rec = sub.add_parser("record", help="write the reference from one or more results folders")
    p_rec.add_argument(
        "results", nargs="+", help="results folder(s); several seeds set the tolerances"
    )
    p_rec.add_argument("--reference", default=str(REFERENCE))


DESCRIPTION = (
    "Compare a smoke-suite results folder with baselines/smoke_reference.json, or re-record it."
)


def run_command(args: argparse.Namespace) -> int:
    """Run parsed ``check``/``record`` arguments. Exit code: 0 passed or recorded, 1 a regression,
    2 the folder cannot be compared (:class:`RegressionError`, logged as one line)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "check":
            failed = False
            for seed in args.seed or [None]:
                failures = check(args.results, args.reference, seed)
                which = "" if seed is None else f" (seed {seed})"
                if failures:
                    logger.error("%s%s", failure_report(failures, args.reference), which)
                    failed = True
                else:
                    logger.info("No regressions against %s%s.", args.reference, which)
            if failed:
                return 1
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m csae_bench.regression check|record ...``; see :func:`run_command`."""
    parser = argparse.ArgumentParser(
        prog="python -m csae_bench.regression", description=DESCRIPTION
    )
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

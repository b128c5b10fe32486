"""The ablation study: intervention types and the CSAE's causal parts.

    python -m csae_bench.studies.ablation --out results_ablation --docs docs   # runs, writes the report
    python -m csae_bench.studies.ablation --out results_ablation --docs docs --report-only

Per seed it harvests one activation stream and one gradient pool from the embedded model, trains
TopK, the CSAE and a frozen-random-decoder control alongside (same tokens, same k, hence matched
L0), plus CSAE variants with one causal part switched off (``causal_coeff = 0``: no Fisher term;
``verify_every = 0``: no verification loop). Every SAE gets SAEBench's core eval; TopK, CSAE and
the random-decoder control get NCES under every intervention type (zero, mean, resample, clamp at
several α, and the isotropic random-direction control of the original design); the CSAE variants get NCES
with zero ablation. All NCES runs of one seed use the same eval tokens, the same sampled features
and tokens (the sampling does not depend on the type), so types are compared on the same features.

The study runs on the studies harness (:mod:`csae_bench.studies.harness`): each unit of work (a
harvest, a gradient pool, a training group, one eval record) is a pipeline job with its own file
under ``--out`` and is skipped when that file exists, so a killed study resumes; ``ablations.md``
and ``img/ablation_*.png`` are then written into ``--docs`` (default ``<out>/docs``) from those
files only — every number in the report comes from the run.

Modules: :mod:`.config` (settings), :mod:`.jobs` (the work), :mod:`.summary` (the numbers),
:mod:`.report` (page and plots).
"""

from __future__ import annotations

from collections.abc import Sequence

from csae_bench.studies.ablation.config import PREFIX, RANDOM_CONTROL, AblationConfig
from csae_bench.studies.ablation.jobs import jobs, run_config
from csae_bench.studies.ablation.report import render_report, write_report
from csae_bench.studies.ablation.summary import load_records, summarize
from csae_bench.studies.harness import Study, study_main

STUDY = Study(
    name="ablation",
    prefix=PREFIX,
    description=__doc__.split("\n\n")[0],
    config_cls=AblationConfig,
    run_config=run_config,
    jobs=jobs,
    write_report=write_report,
)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m csae_bench.studies.ablation``: run the study, then write its report."""
    return study_main(STUDY, argv)


__all__ = [
    "RANDOM_CONTROL",
    "STUDY",
    "AblationConfig",
    "jobs",
    "load_records",
    "main",
    "render_report",
    "run_config",
    "summarize",
    "write_report",
]

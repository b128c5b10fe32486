"""The validity study (issue 14): do NCES and causal probing tell trained SAEs from nulls?

    csae-bench study validity --out results_validity --docs docs              # selection set
    csae-bench study validity --out results_validity --docs docs --phase confirm
    csae-bench study validity --out results_validity --docs docs --report-only

It measures the candidate metrics of docs/validity.md — whose criteria were declared before any
run — for the trained SAEs (TopK, CSAE) and the nulls (random-decoder, permuted-decoder, init,
pca), trained or derived alongside on one activation stream per layer, at three seeds, with five
training snapshots each; every NCES intervention is kept (:mod:`.capture`) so the report
recomputes each metric and bootstraps it hierarchically (seeds, then features, then tokens;
:mod:`.bootstrap`). The report fills the Results section of ``validity.md`` between its markers
and leaves the criteria above untouched. Phase ``confirm`` adds the confirmation sets (fresh seeds
at the same layer, and at ``confirm_layer``), judged with the choice frozen beforehand.

Modules: :mod:`.config` (settings, metrics), :mod:`.jobs` (the work), :mod:`.capture` (per-token
NCES), :mod:`.records` (reading back), :mod:`.bootstrap` and :mod:`.summary` (the numbers and
verdicts), :mod:`.brackets` (causal probing's IIA with its brackets), :mod:`.report` (page and
plots).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from csae_bench.studies.harness import Study, study_main
from csae_bench.studies.validity.config import CONFIRM, PREFIX, SELECT, ValidityConfig
from csae_bench.studies.validity.jobs import jobs, run_config
from csae_bench.studies.validity.records import load_records
from csae_bench.studies.validity.report import write_report
from csae_bench.studies.validity.summary import choose, judge, summarize

STUDY = Study(
    name="validity",
    prefix=PREFIX,
    description=__doc__.split("\n\n")[0],
    config_cls=ValidityConfig,
    run_config=run_config,
    jobs=jobs,
    write_report=write_report,
    seeds_help="selection seeds [default: 0 1 2]",
)


def main(argv: Sequence[str] | None = None) -> int:
    """``csae-bench study validity``: the harness's command line plus ``--phase select|confirm``
    (default ``select``)."""
    import argparse

    phase = argparse.ArgumentParser(add_help=False)
    phase.add_argument(
        "--phase",
        choices=(SELECT, CONFIRM),
        default=SELECT,
        help="select: the selection set only (choose the metric); confirm: also the confirmation "
        "sets (fresh seeds, a second layer), measured once the choice is frozen [default: select]",
    )

    def adapt(study: Study, args: argparse.Namespace) -> Study:
        if args.phase == SELECT:
            return study
        from dataclasses import replace

        return replace(study, config_cls=partial(ValidityConfig, phase=args.phase))

    return study_main(STUDY, argv, parents=[phase], adapt=adapt)


__all__ = [
    "STUDY",
    "ValidityConfig",
    "choose",
    "jobs",
    "judge",
    "load_records",
    "main",
    "run_config",
    "summarize",
    "write_report",
]

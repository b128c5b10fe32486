"""Running jobs in this process: :func:`run_jobs` runs a plan in order, skipping finished jobs
(:func:`skip_if_done`, the one skip-and-report step every runner — local, Ray — shares)."""

from __future__ import annotations

import time
from collections.abc import Callable

from csae_bench.errors import BadInputError
from csae_bench.pipeline.jobs import Job, PipelineError, TrainJob
from csae_bench.pipeline.plan import check_unique_outputs, resolve_sae_folders
from csae_bench.pipeline.resources import Resources
from csae_bench.utils import release_memory


def skip_if_done(
    job: Job,
    force: bool,
    counts: dict[str, int],
    on_progress: Callable[[Job, str, float], None] | None,
) -> bool:
    """True (counted and reported as skipped) when ``job``'s outputs exist and not ``force``;
    every runner (local, Ray) decides and reports skips here."""
    if force or not job.done():
        return False
    counts["skipped"] += 1
    if on_progress:
        on_progress(job, "skipped", 0.0)
    return True


def run_jobs(
    jobs: list[Job],
    res: Resources,
    force: bool = False,
    on_progress: Callable[[Job, str, float], None] | None = None,
) -> dict[str, int]:
    """Run ``jobs`` in order, skipping finished ones unless ``force``; returns ``{"run": n,
    "skipped": n}``. Bad input found inside a job raises as itself (exit 2); any other failure
    raises :class:`PipelineError` naming the job (exit 1)."""
    counts = {"run": 0, "skipped": 0}
    check_unique_outputs(jobs)
    resolve_sae_folders(jobs)
    for job in jobs:
        if skip_if_done(job, force, counts, on_progress):
            continue
        start = time.perf_counter()
        try:
            job.run(res)
        except (KeyboardInterrupt, PipelineError, BadInputError):
            raise  # bad input found inside a job is still bad input: exit 2, no resume advice
        except Exception as err:
            raise PipelineError(
                f"{job.describe()} failed: {type(err).__name__}: {err}. Finished work "
                "is kept; fix the cause and re-run the same command to resume."
            ) from err
        counts["run"] += 1
        release_memory()  # a job's freed buffers go back to the OS before the next one starts
        if isinstance(job, TrainJob):
            resolve_sae_folders(jobs)
        if on_progress:
            on_progress(job, "done", time.perf_counter() - start)
    return counts

"""Where the pipeline's jobs run: ``local`` (one after another in this process, the default) or
``ray`` (one Ray task per job on a local or existing Ray cluster; docs/scale.md).

Both executors run the same jobs (:func:`csae_bench.pipeline.plan`) and talk only through the
results folder. This module never imports Ray: ``--executor local`` works without the ``ray``
extra, and ``--executor ray`` without it is a one-line error (:class:`ExecutorError`, exit 2).

An executor is a context manager with three steps, called by ``csae_bench.run.execute``::

    with open_executor(cfg) as ex:
        hook = ex.hook_name(res, cfg.layer)           # checks the layer (loads the model where jobs run)
        counts = ex.run(jobs, res, force, on_progress)
        board, made = ex.leaderboard(out, evals, plots)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from csae_bench.suite import SuiteError

EXECUTORS: tuple[str, ...] = ("local", "ray")
JOB_KINDS: tuple[str, ...] = ("harvest", "gradients", "train", "eval", "leaderboard")
"""Keys of ``RunConfig.job_resources`` (suite: ``[run.job_resources.<kind>]``)."""
RESOURCE_KEYS: tuple[str, ...] = ("num_cpus", "num_gpus", "memory", "resources", "max_retries")
"""What a job kind may request: Ray's own task options (``memory`` in bytes; ``resources``: custom
resources, e.g. ``{"big_gpu" = 1}``; ``max_retries``: re-runs after its worker dies)."""


class ExecutorError(SuiteError):
    """The executor cannot start or a worker cannot reach the results folder (bad input, exit 2:
    a subclass of :class:`~csae_bench.suite.SuiteError`); the message says what to do."""


def check_executor_settings(executor: Any, ray_address: Any, job_resources: Any) -> None:
    """Validate ``executor``, ``ray_address`` and ``job_resources`` (called by ``RunConfig``).

    Raises:
        SuiteError: an unknown executor, job kind or resource key, or a value of the wrong type.
    """
    if executor not in EXECUTORS:
        raise SuiteError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}.")
    if ray_address is not None and not (isinstance(ray_address, str) and ray_address.strip()):
        raise SuiteError(f"ray_address must be 'auto' or a cluster address, got {ray_address!r}.")
    if not isinstance(job_resources, dict):
        raise SuiteError(f"job_resources must be a table of job kinds, got {job_resources!r}.")
    for kind, request in job_resources.items():
        if kind not in JOB_KINDS:
            raise SuiteError(
                f"job_resources has unknown job kind {kind!r}; kinds: {', '.join(JOB_KINDS)}."
            )
        if not isinstance(request, dict):
            raise SuiteError(f"job_resources.{kind} must be a table, got {request!r}.")
        for key, value in request.items():
            if key not in RESOURCE_KEYS:
                raise SuiteError(
                    f"job_resources.{kind} has unknown key {key!r}; keys: {', '.join(RESOURCE_KEYS)}."
                )
            if key == "resources":
                ok = isinstance(value, dict) and all(
                    isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
                    for v in value.values()
                )
            elif key == "max_retries":
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= -1
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
            if not ok:
                raise SuiteError(f"job_resources.{kind}.{key} has an invalid value {value!r}.")


def job_kind(job: Any) -> str:
    """The ``job_resources`` kind of a pipeline job (``harvest``, ``gradients``, ``train``, ``eval``)."""
    return {
        "HarvestJob": "harvest",
        "GradientJob": "gradients",
        "TrainJob": "train",
        "EvalJob": "eval",
    }[type(job).__name__]


def default_job_resources(cfg: Any, kind: str) -> dict[str, Any]:
    """Ray task options of one job kind: one GPU per model job on a CUDA run, ``threads`` CPUs (1
    when unset), 3 retries after a worker dies; then the suite's ``job_resources.<kind>`` on top."""
    cuda = str(cfg.device).startswith("cuda")
    request: dict[str, Any] = {
        "num_cpus": cfg.threads or 1,
        "num_gpus": 1 if cuda and kind != "leaderboard" else 0,
        "max_retries": 3,
    }
    request.update(cfg.job_resources.get(kind, {}))
    return request


class LocalExecutor:
    """Every job in this process, in plan order (:func:`csae_bench.pipeline.run_jobs`)."""

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def hook_name(self, res: Any, layer: int) -> str:
        from csae_bench.activations.harvest import hook_name_for_layer

        return hook_name_for_layer(res.model, layer)

    def run(
        self,
        jobs: list[Any],
        res: Any,
        force: bool = False,
        on_progress: Callable[[Any, str, float], None] | None = None,
    ) -> dict[str, int]:
        from csae_bench.pipeline import run_jobs

        return run_jobs(jobs, res, force=force, on_progress=on_progress)

    def leaderboard(
        self, out: Path, requested_evals: list[str], plots: bool
    ) -> tuple[dict[str, Any], list[Path]]:
        from csae_bench.reporting.leaderboard import write_leaderboard

        return write_leaderboard(out, requested_evals=requested_evals, plots=plots)


def open_executor(cfg: Any) -> Any:
    """The executor ``cfg.executor`` names, ready to use as a context manager.

    Raises:
        ExecutorError: ``ray`` without the extra installed, or a Ray cluster that cannot be
            reached or started (raised on ``__enter__``).
    """
    if cfg.executor == "local":
        return LocalExecutor()
    try:
        from csae_bench.executors.ray_executor import RayExecutor
    except ImportError as err:
        raise ExecutorError(
            f"--executor ray needs Ray, which is not installed ({err}); install the extra: "
            "pip install 'csae_bench[ray]' (or run with --executor local)."
        ) from None
    return RayExecutor(cfg)

"""``--executor ray``: every pipeline job is one Ray task (docs/scale.md).

* **Dependencies**: a job's task takes its upstream jobs' task results as arguments (harvest ->
  gradient pool -> training -> evals), so Ray starts it only when they have finished; the
  leaderboard is one last task after every eval. Jobs already done are not submitted. The results
  folder stays the only channel between jobs; task results are only ``{status, seconds, ...}``.
* **Resources**: each job kind requests Ray resources (:func:`default_job_resources`; the suite's
  ``[run.job_resources.<kind>]`` overrides ``num_cpus``, ``num_gpus``, ``memory``, ``resources``,
  ``max_retries``). Ray places tasks; nothing here schedules.
* **Workers keep what is expensive**: a worker process keeps the last model it loaded and the
  :class:`~csae_bench.pipeline.Resources` of the last run it served (token sets and the
  SAE-independent ``eval_cache``), so eval tasks landing on the same worker share clean passes
  exactly as the local runner does. Tasks are declared without ``num_gpus`` in ``@ray.remote`` (it
  is set per call), so Ray reuses worker processes for GPU tasks too; on a CUDA run Ray is told not
  to set ``CUDA_VISIBLE_DEVICES`` and a task runs on ``cuda:<the GPU Ray assigned it>``.
* **Faults**: a worker process that dies mid-job is retried by Ray (``max_retries``, default 3);
  an exception in a job is never retried: a bad-input error (the classes ``cli.guarded`` maps to
  exit 2) ends the run with its message, any other ends it as a failed job (exit 1). Every job
  writes atomically and re-checks ``done()`` first, so a retry or a re-run resumes.
* **Results folder check**: at start one probe task per alive node writes and reads a file in the
  results folder, and every job checks the run's marker file before it starts (nodes that join
  later), else :class:`~csae_bench.executors.ExecutorError` naming the folder and the node.

This module is the driver; the tasks and what a worker keeps are in
:mod:`csae_bench.executors.ray_worker`. Importing this module imports Ray
(``csae_bench.executors.open_executor`` turns its absence into a one-line error).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from csae_bench.allocator import KEEP_FREED_MEMORY_ENV
from csae_bench.executors import ExecutorError, default_job_resources, job_kind
from csae_bench.executors.ray_worker import (
    CONNECT_TIMEOUT_S,
    NOSET_CUDA,
    PROBE_DIR,
    PROBE_TIMEOUT_S,
    WORKER_NICENESS,
    _hook_name,
    _leaderboard,
    _probe,
    _run_job,
    fingerprint,
)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- driver side


def bad_input_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (exit 2, never retried): those ``cli.guarded`` maps to 2."""
    from csae_bench.activations.harvest import ActivationError
    from csae_bench.data import DataError
    from csae_bench.errors import BadInputError
    from csae_bench.models import ModelLoadError
    from csae_bench.suite import SuiteError

    return (SuiteError, ModelLoadError, DataError, ActivationError, BadInputError)


def _check_reachable(address: str) -> None:
    """Fail fast on a ``host:port`` nothing listens on (``ray.init`` would wait for minutes)."""
    if address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(
            f"--ray-address {address!r} is not 'auto' or HOST:PORT (e.g. 10.0.0.1:6379, the "
            "address `ray start --head` prints)."
        )
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ExecutorError(
            f"Cannot reach the Ray cluster at --ray-address {address} ({err.strerror or err}): "
            "start it with `ray start --head` on that machine, check the address, or omit "
            "--ray-address to start a local cluster."
        ) from None


class RayExecutor:
    """Run a plan's jobs as Ray tasks. Uses the cluster this process is already connected to, else
    joins the one at ``cfg.ray_address`` (``auto``: the one this machine belongs to) or at
    ``$RAY_ADDRESS``, else starts a local one (stopped again on exit).

    Raises (on ``__enter__``):
        ExecutorError: the cluster cannot be reached, or a node cannot see the results folder.
    """

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out).absolute()
        self.token = uuid.uuid4().hex
        self.probe_dir = self.out / PROBE_DIR / self.token
        self.marker = str(self.probe_dir / "driver")
        self._started = False
        self._template_ref: Any = None
        self._key = ""

    # -- lifecycle

    def __enter__(self) -> RayExecutor:
        if str(self.cfg.device).startswith("cuda:"):
            raise ExecutorError(
                f"--device {self.cfg.device} names one GPU; with --executor ray use --device cuda "
                "(Ray assigns each task its GPU)."
            )
        address = self.cfg.ray_address
        if address is not None:
            _check_reachable(address)
        if not ray.is_initialized():
            # No --ray-address: the cluster a Ray job was submitted to (RAY_ADDRESS), else a new
            # local one ("local": never whichever cluster `ray start` left on this machine).
            target = address or os.environ.get("RAY_ADDRESS") or "local"
            if target == "local":
                # Ray starts workers at niceness 15; on a machine doing other work they would then
                # get a fraction of the CPU the local executor gets (measured: 2 threads no faster
                # than 1). A cluster of our own runs its workers like this process (user's env wins).
                os.environ.setdefault(WORKER_NICENESS, "0")
            try:
                ray.init(
                    address=target,
                    include_dashboard=False if target == "local" else None,
                    logging_level=logging.WARNING,
                )
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = f"at --ray-address {address}" if address else "(a local one)"
                raise ExecutorError(
                    f"Cannot start or join a Ray cluster {where}: {str(err).splitlines()[0]} "
                    "Check `ray status` on the head node, or use --executor local."
                ) from None
            self._started = True
        try:
            self._probe()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.probe_dir, ignore_errors=True)
        try:
            (self.out / PROBE_DIR).rmdir()  # only when no other run is using it
        except OSError:
            pass
        if self._started:
            ray.shutdown()
            self._started = False

    def _probe(self) -> None:
        self.probe_dir.mkdir(parents=True, exist_ok=True)
        (self.probe_dir / "driver").write_text(self.token)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [
            _probe.options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
            ).remote(str(self.probe_dir), self.token)
            for n in nodes
        ]
        ready, not_ready = ray.wait(refs, num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        problems = []
        for node, ref in zip(nodes, refs):
            if ref in not_ready:
                problems.append(
                    f"{node['NodeManagerAddress']}: no answer in {PROBE_TIMEOUT_S:.0f} s"
                )
                continue
            host, error = ray.get(ref)
            if error is None and not (self.probe_dir / f"node-{node['NodeID']}").is_file():
                error = "its probe file did not appear here"
            if error is not None:
                problems.append(f"{host} ({node['NodeManagerAddress']}): {error}")
        if problems:
            raise ExecutorError(
                f"Ray workers cannot see the results folder {self.out} — {'; '.join(problems)}. "
                "Put --out on storage every node mounts at the same path (e.g. NFS), or use "
                "--executor local."
            )
        logger.info("Ray: %d node(s) see the results folder %s", len(nodes), self.out)

    def _template(self, res: Any) -> Any:
        if self._template_ref is None:
            # Nothing loaded travels: each worker loads (and keeps) its own model.
            template = dataclasses.replace(res, _model=None, _tokens={}, eval_cache={})
            self._key = fingerprint(res)
            self._template_ref = ray.put(template)
        return self._template_ref

    # -- the three steps

    def hook_name(self, res: Any, layer: int) -> str:
        """The hook name for ``layer``, checked on a worker (the driver never loads the model)."""
        ref = _hook_name.options(**_options(self.cfg, "harvest")).remote(
            self._template(res), self._key, self.marker, layer
        )
        return self._get(ref, "checking the layer")

    def run(
        self,
        jobs: list[Any],
        res: Any,
        force: bool = False,
        on_progress: Callable[[Any, str, float], None] | None = None,
    ) -> dict[str, int]:
        """Submit every job not done as a Ray task after its dependencies; wait for all.

        Raises:
            the job's own bad-input error (exit 2), or PipelineError for any other failure
            (exit 1). Either way unfinished tasks are cancelled and finished results kept.
        """
        from csae_bench.pipeline import (
            EvalJob,
            GradientJob,
            HarvestJob,
            TrainJob,
            check_unique_outputs,
            skip_if_done,
        )

        check_unique_outputs(
            jobs
        )  # as the local runner: two jobs, one file -> refused, not skipped
        template = self._template(res)
        for job in jobs:
            _make_absolute(job)  # a worker's working folder is not the driver's
        counts = {"run": 0, "skipped": 0}
        refs: dict[int, Any] = {}  # id(job) -> its task's ref
        jobs_of: dict[Any, Any] = {}  # ref -> job
        harvests = {(j.hook_name, j.seed): j for j in jobs if isinstance(j, HarvestJob)}
        trains = {j.saes_dir: j for j in jobs if isinstance(j, TrainJob)}
        for job in jobs:
            if skip_if_done(job, force, counts, on_progress):
                continue
            train = None
            if isinstance(job, GradientJob):
                upstream = [harvests.get((job.hook_name, job.seed))]
            elif isinstance(job, TrainJob):
                upstream = [job.harvest, job.gradients]
            elif isinstance(job, EvalJob):
                train = trains.get(job.sae_folder.parent)
                upstream = [train]
            else:
                upstream = []
            deps = [refs[id(u)] for u in upstream if u is not None and id(u) in refs]
            ref = _run_job.options(**_options(self.cfg, job_kind(job))).remote(
                template, self._key, self.marker, job, train, force, *deps
            )
            refs[id(job)] = ref
            jobs_of[ref] = job
        pending = list(jobs_of)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                job = jobs_of[done[0]]
                info = self._get(done[0], job.describe())
                counts["run" if info["status"] == "done" else "skipped"] += 1
                logger.debug("%s ran on %s (pid %s)", job.describe(), info["host"], info["pid"])
                if on_progress:
                    on_progress(job, info["status"], info["seconds"])
        except BaseException:
            for ref in pending:
                ray.cancel(ref)  # not forced: running jobs stop, finished files stay
            raise
        return counts

    def leaderboard(
        self, out: Path, requested_evals: list[str], plots: bool
    ) -> tuple[dict[str, Any], list[Path]]:
        """``write_leaderboard`` as the run's last Ray task; the board comes back to the driver."""
        ref = _leaderboard.options(**_options(self.cfg, "leaderboard")).remote(
            str(Path(out).absolute()), list(requested_evals), plots
        )
        board, made = self._get(ref, "the leaderboard")
        return board, [Path(p) for p in made]

    # -- errors

    def _get(self, ref: Any, what: str) -> Any:
        """``ray.get`` with a job's failure turned into the error ``cli.guarded`` expects."""
        from csae_bench.pipeline import PipelineError

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            job = getattr(cause, "csae_job", None) or what
            if isinstance(cause, bad_input_types()):
                raise _with_job(cause, job) from None
            if cause is None:
                cause = err
            raise PipelineError(
                f"{job} failed: {type(cause).__name__}: {str(cause).strip().splitlines()[-1]}. "
                "Finished work is kept; fix the cause and re-run the same command to resume."
            ) from err
        except ray.exceptions.RayError as err:  # retries used up, node lost, cancelled...
            raise PipelineError(
                f"{what} failed in Ray: {type(err).__name__}: {str(err).strip().splitlines()[0]}. "
                "Finished work is kept; re-run the same command to resume."
            ) from err


def _make_absolute(job: Any) -> None:
    """Every path of ``job`` (and of the jobs it holds) made absolute, in place: a relative
    ``--out`` means the driver's working folder, which a worker on another node does not share."""
    for f in dataclasses.fields(job):
        value = getattr(job, f.name)
        if isinstance(value, Path) and not value.is_absolute():
            setattr(job, f.name, value.absolute())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            _make_absolute(value)


def _with_job(err: BaseException, job: str) -> BaseException:
    """``err`` with the job named in front of its message, same class where it allows."""
    try:
        return type(err)(f"{job}: {err}")
    except Exception:
        return err


def _options(cfg: Any, kind: str) -> dict[str, Any]:
    request = default_job_resources(cfg, kind)
    options = {k: v for k, v in request.items() if k != "memory" or v}
    options["retry_exceptions"] = False  # an exception in a job is its answer; deaths are retried
    env_vars = {}
    if str(cfg.device).startswith("cuda"):
        # Worker processes are reused across tasks (they keep the model), so they must see every
        # GPU of their node and pick the one Ray assigned (see _task_device).
        env_vars[NOSET_CUDA] = "1"
    if KEEP_FREED_MEMORY_ENV in os.environ:  # the driver's opt-out reaches remote workers too
        env_vars[KEEP_FREED_MEMORY_ENV] = os.environ[KEEP_FREED_MEMORY_ENV]
    if env_vars:
        options["runtime_env"] = {"env_vars": env_vars}
    return options

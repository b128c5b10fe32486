"""The worker side of ``--executor ray``: the Ray tasks and what a worker process keeps between
them (its last model and :class:`~csae_bench.pipeline.Resources`); the driver is
:mod:`csae_bench.executors.ray_executor`.

Importing this module imports Ray.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import ray

from csae_bench.executors import ExecutorError

PROBE_DIR = ".csae_bench-ray"
"""Hidden folder in the results folder holding one run's probe and marker files."""
PROBE_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10.0
NOSET_CUDA = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"
WORKER_NICENESS = "RAY_worker_niceness"


# ---------------------------------------------------------------- worker side


_STATE: dict[str, Any] = {}
"""Per worker process: ``model`` -> (key, model), ``res`` -> (key, Resources). One of each: a
worker serves one run at a time, and a second model would double its memory."""


def _qualname(fn: Any) -> str:
    """``module.name`` of a function, or of a callable object's class."""
    named = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{named.__module__}.{named.__qualname__}"


def fingerprint(res: Any) -> str:
    """What decides a worker's cached :class:`Resources`: the run settings (not ``force``) and the
    loaders. Two runs with the same fingerprint share a worker's model, tokens and eval cache."""
    cfg = dataclasses.asdict(res.cfg)
    cfg.pop("force", None)
    seams = [
        _qualname(getattr(res, f))
        for f in ("model_loader", "token_loader", "train_fn", "gradient_fn", "sae_loader")
    ]
    blob = json.dumps([cfg, seams], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _task_device(device: str) -> str:
    """``cuda`` -> ``cuda:<id>`` of the GPU Ray assigned this task (CUDA_VISIBLE_DEVICES is left
    unset on a CUDA run, so the worker sees every GPU of its node)."""
    if device.startswith("cuda") and os.environ.get(NOSET_CUDA):
        ids = ray.get_gpu_ids()
        if ids:
            return f"cuda:{int(ids[0])}"
    return device


def worker_resources(template: Any, key: str) -> Any:
    """This process's :class:`Resources` for the run ``key`` (its model and caches kept between
    tasks), built from ``template`` (the driver's, with nothing loaded) on first use."""
    device = _task_device(template.cfg.device)
    res_key = (key, device)
    cached = _STATE.get("res")
    if cached is not None and cached[0] == res_key:
        return cached[1]
    cfg = dataclasses.replace(template.cfg, device=device)
    res = dataclasses.replace(template, cfg=cfg, _model=None, _tokens={}, eval_cache={})
    model_key = (cfg.model, device, cfg.dtype, _qualname(template.model_loader))
    model = _STATE.get("model")
    if model is not None and model[0] == model_key:
        res._model = model[1]
    else:
        _STATE.clear()  # drop the old model before loading another
        gc.collect()
    _STATE["res"] = (res_key, res)
    _STATE["model_key"] = model_key
    return res


def _keep_model(res: Any) -> None:
    """Keep the run's model for this worker's next task — or let it go when ``res`` dropped it
    for the engine's model (``Resources.hold_one_model``): a reference kept here would hold both
    models at once, the peak the local executor avoids."""
    if res._model is not None:
        _STATE["model"] = (_STATE["model_key"], res._model)
    else:
        _STATE.pop("model", None)


def _prepare_worker(cfg: Any) -> None:
    """The worker process's torch threads (the run's, else its Ray CPUs) and glibc malloc
    settings (:func:`csae_bench.allocator.keep_freed_memory`, as the CLI sets them)."""
    import torch

    from csae_bench.allocator import keep_freed_memory

    keep_freed_memory()

    threads = cfg.threads
    if threads is None:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        threads = max(1, int(cpus))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _check_marker(marker: str) -> None:
    path = Path(marker)
    if not path.is_file():
        raise ExecutorError(
            f"Ray worker on {socket.gethostname()} cannot see the results folder "
            f"{path.parent.parent.parent} (no {path.name} from the driver in it): put --out on "
            "storage every node mounts at the same path (e.g. NFS), or use --executor local."
        )


@ray.remote
def _probe(probe_dir: str, token: str) -> tuple[str, str | None]:
    """On one node: read the driver's probe file and write this node's. (host, error or None)."""
    host = socket.gethostname()
    folder = Path(probe_dir)
    try:
        seen = (folder / "driver").read_text()
        if seen != token:
            return host, "the driver's probe file there holds another run's token"
        reply = folder / f"node-{ray.get_runtime_context().get_node_id()}"
        reply.write_text(token)
        if reply.read_text() != token:
            return host, "a file written there reads back differently"
    except OSError as err:
        return host, f"{type(err).__name__}: {err.strerror or err}"
    return host, None


@ray.remote
def _hook_name(template: Any, key: str, marker: str, layer: int) -> str:
    """The hook name for ``layer``, checked against the model on a worker (not the driver)."""
    from csae_bench.activations.harvest import hook_name_for_layer

    _check_marker(marker)
    res = worker_resources(template, key)
    _prepare_worker(res.cfg)
    name = hook_name_for_layer(res.model, layer)
    _keep_model(res)
    return name


@ray.remote
def _run_job(
    template: Any, key: str, marker: str, job: Any, train: Any, force: bool, *upstream: Any
) -> dict[str, Any]:
    """Run one pipeline job on this worker (``upstream``: finished dependencies, unused)."""
    from csae_bench.pipeline import resolve_sae_folders

    _check_marker(marker)
    info = {"pid": os.getpid(), "host": socket.gethostname()}
    if train is not None:
        resolve_sae_folders([train, job])  # the folder the trainer recorded in trained.json
    if job.done() and not force:
        return {**info, "status": "skipped", "seconds": 0.0}  # e.g. a retry after the write
    res = worker_resources(template, key)
    _prepare_worker(res.cfg)
    start = time.perf_counter()
    try:
        job.run(res)
    except Exception as err:
        err.csae_job = job.describe()  # type: ignore[attr-defined]
        raise
    finally:
        _keep_model(res)
    return {**info, "status": "done", "seconds": time.perf_counter() - start}


@ray.remote
def _leaderboard(out: str, requested: list[str], plots: bool) -> tuple[dict, list[str]]:
    from csae_bench.reporting.leaderboard import write_leaderboard

    board, made = write_leaderboard(out, requested_evals=requested, plots=plots)
    return board, [str(p) for p in made]

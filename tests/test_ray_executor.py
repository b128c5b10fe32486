"""``--executor ray`` on a local Ray cluster started here (2 CPUs): the same leaderboard as the
local executor, workers that keep their model, a worker killed mid-eval, bad input (issue 15).

Ray runs and local runs happen on this machine with one torch thread per job (the tiny run pins
``threads=1``), so their floats are identical whatever the CPU kind: the comparison never depends
on another CPU's rounding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from csae_bench.executors import ExecutorError, default_job_resources
from csae_bench.run import EXIT_USAGE, execute, guarded, main
from csae_bench.suite import RunConfig, SuiteError, build_config

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

TESTS = Path(__file__).parent
REPO = TESTS.parent
HOOK = "blocks.2.hook_resid_post"
VOLATILE = {"generated_at_epoch_millis", "results_dir", "eval_ids", "versions", "commit",
            "sae_bench_commit_hash"}  # git in the working folder: the workers run elsewhere here


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 2-CPU local Ray cluster for this module. Workers import this checkout and the test
    helpers (PYTHONPATH), and run in their own working folder, not the driver's."""
    workdir = tmp_path_factory.mktemp("ray_workdir")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"working_dir": str(workdir),
                          "env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]),
                                       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_board(tiny_run):
    """The reference: the tiny run with the local executor, in this process."""
    return json.loads((tiny_run / "leaderboard.json").read_text())


def _comparable(board: dict) -> dict:
    return {k: v for k, v in board.items() if k not in VOLATILE} | {
        "rows": [{k: v for k, v in r.items() if k not in VOLATILE} for r in board["rows"]]}


def _differences(a, b, where="board") -> list[str]:
    """Every path at which two JSON values differ (empty: equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys(), key=str)
                for d in _differences(a.get(k), b.get(k), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b or (a != a and b != b) else [f"{where}: {a!r} != {b!r}"]


def _results(out: Path) -> list[Path]:
    return sorted(out.rglob("*_eval_results.json"))


def _assert_complete(out: Path, n: int) -> None:
    """``n`` eval results, each valid SAEBench output, and a leaderboard with no gaps."""
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

    from csae_bench.evals.core import CsaeCoreEvalOutput

    files = _results(out)
    assert len(files) == n
    for path in files:
        validate_eval_output_format_file(str(path), CsaeCoreEvalOutput)
    board = json.loads((out / "leaderboard.json").read_text())
    assert len(board["rows"]) == n and all(not r["missing_evals"] for r in board["rows"])
    assert not (out / ".csae_bench-ray").exists()  # the run's probe files are cleaned up


# ---------------------------------------------------------------- runs through Ray


def test_ray_run_gives_the_local_leaderboard(cluster, tmp_path, local_board, monkeypatch):
    """A relative --out too: it names the driver's folder, not the workers' working folder."""
    from helpers import tiny_run_config
    from ray_fakes import ray_resources

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ray"
    loads = tmp_path / "model_loads.txt"
    cfg = tiny_run_config(Path("ray"), executor="ray")
    execute(cfg, ray_resources(cfg, model_log=loads), plots=False)
    _assert_complete(out, 2)
    board = json.loads((out / "leaderboard.json").read_text())
    assert not _differences(_comparable(board), _comparable(local_board))
    # every job ran in a Ray worker, and no worker process loaded the model twice
    pids = loads.read_text().split()
    assert pids and str(os.getpid()) not in pids
    assert len(pids) == len(set(pids)), pids

    # a re-run through Ray resumes: nothing is redone
    before = {p: p.stat().st_mtime_ns for p in _results(out)}
    execute(cfg, ray_resources(cfg, model_log=loads), plots=False)
    assert {p: p.stat().st_mtime_ns for p in _results(out)} == before


def test_worker_keeps_its_model_and_eval_cache_between_tasks(tmp_path):
    """The per-process cache behind the Ray tasks: the same run's tasks get the same Resources
    (model, tokens, eval cache); another run's drop them."""
    from helpers import tiny_run_config
    from ray_fakes import ray_resources

    from csae_bench.executors.ray_worker import _keep_model, fingerprint, worker_resources

    loads = tmp_path / "loads.txt"
    cfg = tiny_run_config(tmp_path / "a")
    template = ray_resources(cfg, model_log=loads)
    first = worker_resources(template, fingerprint(template))
    first.model  # noqa: B018 -- load it
    first.eval_cache["clean"] = "pass"
    _keep_model(first)
    again = worker_resources(template, fingerprint(template))
    assert again is first and again.eval_cache == {"clean": "pass"}
    other_cfg = tiny_run_config(tmp_path / "b", eval_contexts=8)
    other = worker_resources(ray_resources(other_cfg, model_log=loads), "another run")
    assert other is not first and other.eval_cache == {} and other._model is first._model
    assert len(loads.read_text().split()) == 1  # the model is shared, not loaded again


def test_worker_lets_the_run_model_go_when_the_engine_model_replaces_it(tmp_path):
    """hold_one_model under Ray: once a task's Resources drops the run's model for the engine's,
    the worker's cache must not keep the run's alive (both would be held at once)."""
    import gc
    import weakref

    from helpers import tiny_run_config
    from ray_fakes import ray_resources

    from csae_bench.executors.ray_worker import _STATE, _keep_model, fingerprint, worker_resources

    _STATE.clear()
    cfg = tiny_run_config(tmp_path / "a", dtype="bfloat16", engine_dtype="float32")
    template = ray_resources(cfg, model_log=tmp_path / "loads.txt")
    res = worker_resources(template, fingerprint(template))
    run_model = weakref.ref(res.model)
    _keep_model(res)
    assert _STATE["model"][1] is run_model()
    res.engine_model  # noqa: B018 -- loading it drops the run's model (hold_one_model)
    _keep_model(res)
    gc.collect()
    assert "model" not in _STATE and run_model() is None


def test_worker_killed_during_an_eval_is_retried(cluster, tmp_path, local_board):
    """SIGKILL the worker process of a running eval: Ray retries the task on another worker and
    the run completes with every result present, valid and equal to the local run's."""
    from helpers import tiny_run_config
    from ray_fakes import StallFirstEval, ray_resources

    flags = tmp_path / "flags"
    flags.mkdir()
    out = tmp_path / "ray"
    killed = []

    def killer():
        deadline = time.time() + 300
        while not (flags / "pid").exists() and time.time() < deadline:
            time.sleep(0.05)
        pid = int((flags / "pid").read_text())
        (flags / "killed").touch()  # the retry must not stall again
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    cfg = tiny_run_config(out, executor="ray")
    execute(cfg, ray_resources(cfg, sae_loader=StallFirstEval(flags)), plots=False)
    thread.join(timeout=10)
    assert killed, "no eval stalled, so no worker was killed"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)  # that worker is gone
    _assert_complete(out, 2)
    board = json.loads((out / "leaderboard.json").read_text())
    assert not _differences(_comparable(board), _comparable(local_board))


def test_bad_input_in_a_job_is_not_retried_and_exits_2(cluster, tmp_path, caplog):
    from helpers import tiny_run_config
    from ray_fakes import BadEvalTokens, ray_resources

    out = tmp_path / "ray"
    attempts = tmp_path / "attempts.txt"
    cfg = tiny_run_config(out, executor="ray", architectures=["relu"])
    res = ray_resources(cfg, token_loader=BadEvalTokens(attempts))
    assert guarded(execute, cfg, res, plots=False) == EXIT_USAGE
    lines = _error_lines(caplog)
    assert len(lines) == 1 and "eval core on relu-d128-s0" in lines[0] and "no eval split" in lines[0]
    assert len(attempts.read_text().split()) == 1  # the failing job was not retried
    # finished work is kept, and a re-run with the cause fixed resumes from it
    manifest = out / "tiny" / HOOK / "seed0" / "saes" / "trained.json"
    assert manifest.is_file() and not _results(out)
    mtime = manifest.stat().st_mtime_ns
    execute(cfg, ray_resources(cfg), plots=False)
    assert manifest.stat().st_mtime_ns == mtime
    _assert_complete(out, 1)


def test_failing_job_ends_the_run_with_exit_1(cluster, tmp_path, caplog):
    from helpers import tiny_run_config
    from ray_fakes import ray_resources

    from csae_bench.run import EXIT_FAILED

    cfg = tiny_run_config(tmp_path, executor="ray", architectures=["relu"],
                          eval_settings={"core": {"batch_size_prompts": 0}})
    assert guarded(execute, cfg, ray_resources(cfg), plots=False) == EXIT_FAILED
    assert "eval core on relu-d128-s0 failed" in caplog.text and "re-run" in caplog.text
    assert not _results(tmp_path)
    assert (tmp_path / "tiny" / HOOK / "seed0" / "saes" / "trained.json").is_file()  # kept


# ---------------------------------------------------------------- bad input: one line, exit 2


def _keeps(out: Path):
    """A finished result already in ``out``; returns a check that it is still there, unchanged."""
    out.mkdir(parents=True, exist_ok=True)
    kept = out / "eval_results" / "core" / "earlier_eval_results.json"
    kept.parent.mkdir(parents=True)
    kept.write_text('{"kept": true}')
    return lambda: kept.read_text() == '{"kept": true}'


def _error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def test_workers_that_cannot_see_the_results_folder(cluster, tmp_path, monkeypatch, caplog):
    """/proc/self/cwd/... names a different folder in each process: the driver's working folder
    and the workers' are different, as node-local disks are on a real cluster."""
    driver_side = tmp_path / "driver"
    driver_side.mkdir()
    monkeypatch.chdir(driver_side)
    out = Path("/proc/self/cwd/results")
    intact = _keeps(driver_side / "results")
    assert main(["--executor", "ray", "--evals", "core", "--architectures", "topk",
                 "--out", str(out)]) == EXIT_USAGE
    lines = _error_lines(caplog)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert f"cannot see the results folder {out}" in lines[0] and "NFS" in lines[0]
    assert intact()
    assert not (driver_side / "results" / ".csae_bench-ray").exists()


def test_unreachable_ray_address(tmp_path, caplog):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    intact = _keeps(tmp_path)
    assert main(["--executor", "ray", "--ray-address", f"127.0.0.1:{port}", "--evals", "core",
                 "--out", str(tmp_path)]) == EXIT_USAGE
    lines = _error_lines(caplog)
    assert len(lines) == 1 and f"Cannot reach the Ray cluster at --ray-address 127.0.0.1:{port}" in lines[0]
    assert intact()


def test_ray_extra_not_installed(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.delitem(sys.modules, "csae_bench.executors.ray_executor", raising=False)
    intact = _keeps(tmp_path)
    assert main(["--executor", "ray", "--evals", "core", "--out", str(tmp_path)]) == EXIT_USAGE
    lines = _error_lines(caplog)
    assert len(lines) == 1 and "pip install 'csae_bench[ray]'" in lines[0]
    assert intact()


def test_one_named_gpu_is_refused_under_ray(tmp_path, caplog):
    assert main(["--executor", "ray", "--device", "cuda:1", "--evals", "core",
                 "--out", str(tmp_path)]) == EXIT_USAGE
    assert "use --device cuda" in caplog.text


def test_local_executor_never_imports_ray(tmp_path):
    script = (
        "import sys\n"
        f"sys.path[:0] = [{str(REPO)!r}, {str(TESTS)!r}]\n"
        "from helpers import tiny_resources, tiny_run_config\n"
        "from csae_bench.run import execute\n"
        f"cfg = tiny_run_config({str(tmp_path)!r}, executor='local')\n"
        "execute(cfg, tiny_resources(cfg), plots=False)\n"
        "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "NO_RAY"
    assert (tmp_path / "leaderboard.json").is_file()


# ---------------------------------------------------------------- settings


def test_executor_settings_from_a_suite(tmp_path):
    suite = tmp_path / "cluster.toml"
    suite.write_text('[run]\nexecutor = "ray"\nray_address = "auto"\ndevice = "cuda"\n'
                     '[run.job_resources.eval]\nnum_gpus = 0.25\nmemory = 4e9\n')
    cfg = build_config(suite)
    assert (cfg.executor, cfg.ray_address) == ("ray", "auto")
    assert default_job_resources(cfg, "eval") == {"num_cpus": 1, "num_gpus": 0.25, "memory": 4e9,
                                                  "max_retries": 3}
    assert default_job_resources(cfg, "train")["num_gpus"] == 1
    assert default_job_resources(cfg, "leaderboard")["num_gpus"] == 0
    assert default_job_resources(RunConfig(threads=4), "harvest")["num_cpus"] == 4


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"executor": "dask"}, "executor must be one of local, ray"),
    ({"job_resources": {"evals": {"num_cpus": 1}}}, "unknown job kind 'evals'"),
    ({"job_resources": {"eval": {"gpus": 1}}}, "unknown key 'gpus'"),
    ({"job_resources": {"eval": {"num_gpus": -1}}}, "job_resources.eval.num_gpus"),
    ({"ray_address": ""}, "ray_address must be"),
])
def test_bad_executor_settings_are_named(kwargs, named):
    with pytest.raises(SuiteError, match=named):
        RunConfig(**kwargs)
    assert issubclass(ExecutorError, SuiteError)  # so cli.guarded maps it to exit 2


# ---------------------------------------------------------------- the CI smoke suite through Ray


@pytest.mark.e2e
def test_smoke_suite_through_ray_within_the_regression_tolerances(tmp_path):
    """The smoke suite (every architecture and eval, embedded model) with ``--executor ray`` on a
    local cluster the run starts itself: complete, and every metric within the tolerances of the
    reference the local executor's run is checked against (csae_bench/regression.py). The suite
    pins 2 threads per job, so each job computes what the local run computes."""
    from csae_bench.regression import check, failure_report

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "csae_bench.run", "--suite", "evals/smoke.toml",
                           "--executor", "ray", "--no-plots", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = build_config(REPO / "evals" / "smoke.toml")
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert {r["architecture"] for r in board["rows"]} == set(cfg.architectures)
    assert all(not r["missing_evals"] for r in board["rows"])
    assert len(_results(tmp_path)) == len(cfg.architectures) * len(cfg.evals)
    failures = check(tmp_path)
    assert not failures, failure_report(failures)


def test_malloc_opt_out_reaches_ray_workers(monkeypatch):
    from csae_bench.allocator import KEEP_FREED_MEMORY_ENV
    from csae_bench.executors.ray_executor import _options
    from csae_bench.suite import RunConfig

    cfg = RunConfig()
    monkeypatch.delenv(KEEP_FREED_MEMORY_ENV, raising=False)
    assert "runtime_env" not in _options(cfg, "eval")
    monkeypatch.setenv(KEEP_FREED_MEMORY_ENV, "0")
    assert _options(cfg, "eval")["runtime_env"]["env_vars"] == {KEEP_FREED_MEMORY_ENV: "0"}

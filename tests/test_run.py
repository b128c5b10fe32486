"""The CLI and the resumable pipeline: options, bad input, suites, kill/resume, smoke end-to-end."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from csae_bench.run import EXIT_INTERRUPTED, EXIT_USAGE, main
from csae_bench.suite import RunConfig, SuiteError, build_config

TESTS = Path(__file__).parent
REPO = TESTS.parent
SUITES = sorted((REPO / "evals").glob("*.toml"))


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--layer", "--architectures", "--evals", "--suite", "--train-tokens",
                 "--d-sae", "--seed", "--device", "--out", "--saes", "--force", "leaderboard"):
        assert flag in text, flag


@pytest.mark.parametrize(("flag", "value", "listed"), [
    ("--evals", "core,bogus", "valid evals: core"),
    ("--architectures", "topk,nope", "valid architectures: relu, topk"),
])
def test_unknown_names_exit_nonzero_and_list_valid_ones(tmp_path, caplog, flag, value, listed):
    assert main([flag, value, "--out", str(tmp_path)]) == EXIT_USAGE
    assert listed in caplog.text
    assert not any(tmp_path.iterdir())  # nothing was started


def test_unwritable_out_is_reported(tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["--evals", "core", "--out", str(blocker / "results")]) == EXIT_USAGE
    assert "Cannot write to --out" in caplog.text


@pytest.mark.parametrize(("text", "named"), [
    ('[run]\nmodle = "gpt2"\n', "run.modle"),
    ('[train]\nlearning_rate = 0.1\n', "train.learning_rate"),
    ('[run]\nlayer = "six"\n', "layer"),
    ('[run\nlayer = 1\n', "not valid TOML"),
    ('[runs]\nlayer = 1\n', "runs"),
])
def test_malformed_suite_names_the_key(tmp_path, caplog, text, named):
    suite = tmp_path / "bad.toml"
    suite.write_text(text)
    with pytest.raises(SuiteError, match=named.replace(".", r"\.")):
        build_config(suite)
    assert main(["--suite", str(suite), "--out", str(tmp_path / "r")]) == EXIT_USAGE
    assert named in caplog.text


def test_bad_dtype_or_threads_exit_2(tmp_path, caplog, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dtype", "float64", "--out", str(tmp_path)])
    assert exit_info.value.code == EXIT_USAGE and "invalid choice" in capsys.readouterr().err
    assert main(["--threads", "0", "--out", str(tmp_path)]) == EXIT_USAGE
    assert "threads must be a positive integer" in caplog.text
    with pytest.raises(SuiteError, match="dtype must be one of auto, float32, bfloat16, float16"):
        RunConfig(dtype="fp8")


@pytest.mark.parametrize(("argv", "hint"), [
    (["--seeds", "0", "1"], "; did you mean --seed?"),
    (["--train_tokens", "5"], "; did you mean --train-tokens?"),
    (["--bogus-flag", "1"], " (see"),  # nothing close: no guess
])
def test_a_mistyped_flag_exits_2_with_one_line_naming_the_closest(tmp_path, capsys, argv, hint):
    from csae_bench.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main([*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == EXIT_USAGE and err.count("\n") == 1
    assert f"unrecognized arguments: {' '.join(argv)}{hint}" in err


def test_pinned_threads_hold_for_the_run_and_are_restored(tmp_path, monkeypatch):
    import torch
    from helpers import tiny_resources, tiny_run_config

    from csae_bench import run

    seen = []
    monkeypatch.setattr(run, "_execute", lambda *a, **k: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    cfg = tiny_run_config(tmp_path, threads=before + 1)
    run.execute(cfg, tiny_resources(cfg), plots=False)
    assert seen == [before + 1] and torch.get_num_threads() == before


def test_unknown_eval_override_key_is_named(tmp_path):
    from csae_bench.suite_checks import validate_names

    suite = tmp_path / "s.toml"
    suite.write_text('[run]\nevals = ["core"]\n[evals.core]\nn_batches = 3\n')
    with pytest.raises(SuiteError, match="n_batches"):
        validate_names(build_config(suite))


@pytest.mark.parametrize("suite", SUITES, ids=[s.stem for s in SUITES])
def test_shipped_suites_load(suite):
    from csae_bench.suite_checks import validate_names

    cfg = build_config(suite)
    validate_names(cfg)  # names and every [evals.<name>] override, as a run checks them
    assert cfg.architectures and cfg.evals


def test_one_cli_dispatches_every_subcommand(tmp_path, monkeypatch, caplog):
    """csae-bench run|leaderboard|study|regression on one parser; no subcommand means run;
    `study NAME ARGS` hands ARGS to the study's own main."""
    import csae_bench.studies.ablation as ablation
    from csae_bench import cli

    seen = []
    monkeypatch.setattr(ablation, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["study", "ablation", "--out", "x", "--report-only"]) == 0
    assert seen == [["--out", "x", "--report-only"]]
    with pytest.raises(SystemExit):  # every study module is a choice; a typo is not
        cli.build_parser().parse_args(["study", "validty"])
    assert cli.build_parser().parse_args(["study", "validity"]).name == "validity"
    args = cli.build_parser().parse_args(["run", "--d-sae", "64", "--seed", "1", "2"])
    assert (args.d_sae, args.seeds, args.layer) == (64, [1, 2], None)  # None: not given
    fields = {f.name for f in __import__("dataclasses").fields(RunConfig)}
    assert {name for _, name, _ in cli.RUN_FLAGS} <= fields
    assert cli.main(["--evals", "core,bogus", "--out", str(tmp_path)]) == EXIT_USAGE
    assert "valid evals: core" in caplog.text
    assert cli.main(["regression", "check", str(tmp_path / "none")]) == EXIT_USAGE
    assert "run the smoke suite first" in caplog.text


def test_cpu_suite_is_the_default_run():
    """`python -m csae_bench.run` with no arguments == `--suite evals/gemma-3-270m.toml`."""
    assert build_config(REPO / "evals" / "gemma-3-270m.toml") == RunConfig()


def test_flags_override_suite(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text('[run]\nd_sae = 64\nseeds = [1, 2]\n')
    cfg = build_config(suite, d_sae=128, seeds=None)
    assert (cfg.d_sae, cfg.seeds) == (128, [1, 2])


# ---------------------------------------------------------------- resume after kill


def _run_tiny(out: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "CSAE_TEST_TRAIN_DELAY": str(delay), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); from helpers import run_in_subprocess; run_in_subprocess({str(out)!r})"
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {path} appeared:\n{proc.stdout.read()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


VOLATILE = {"generated_at_epoch_millis", "results_dir", "eval_ids", "versions", "commit"}


def _comparable(board: dict) -> dict:
    return {k: v for k, v in board.items() if k not in VOLATILE} | {
        "rows": [{k: v for k, v in row.items() if k not in VOLATILE} for row in board["rows"]]}


def _assert_same(a, b, where="board"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), f"{where}: {a} != {b}"
    else:
        assert a == b, where


@pytest.mark.e2e
def test_killed_run_resumes_to_the_same_leaderboard(tmp_path, tiny_run):
    """Kill a run twice (SIGKILL, SIGINT) and resume it: the leaderboard equals the straight run's.

    Both runs happen on this machine with the same inputs and one torch thread (the tiny run
    pins ``threads=1``), so their float results are identical whatever the CPU kind: the check
    compares one machine's kernels with themselves, never with another CPU's rounding."""
    out = tmp_path / "killed"
    seed_dir = out / "tiny" / "blocks.2.hook_resid_post" / "seed0"
    harvest = out / "tiny" / "blocks.2.hook_resid_post" / "activations" / "manifest.json"

    # 1. SIGKILL while training: only whole files remain, no SAE, no result.
    proc = _run_tiny(out, delay=30)
    _wait_for(harvest, proc)
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    assert not (seed_dir / "saes" / "trained.json").exists()
    assert not list(out.rglob("*_eval_results.json"))
    assert not [p for p in out.rglob("*.tmp") if p.is_file()]
    harvest_mtime = harvest.stat().st_mtime_ns

    # 2. SIGINT after the first SAE is saved: exit 130, the SAE folder is complete.
    proc = _run_tiny(out, delay=3)
    _wait_for(seed_dir / "saes" / "relu" / "cfg.json", proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == EXIT_INTERRUPTED
    relu_mtime = (seed_dir / "saes" / "relu" / "sae_weights.safetensors").stat().st_mtime_ns

    # 3. Re-run to the end (here, in-process): earlier work is reused, and the leaderboard
    #    matches the uninterrupted run's.
    from helpers import tiny_resources, tiny_run_config

    from csae_bench.run import execute

    cfg = tiny_run_config(out)
    execute(cfg, tiny_resources(cfg), plots=False)
    assert harvest.stat().st_mtime_ns == harvest_mtime
    assert (seed_dir / "saes" / "relu" / "sae_weights.safetensors").stat().st_mtime_ns == relu_mtime
    resumed = json.loads((out / "leaderboard.json").read_text())
    reference = json.loads((tiny_run / "leaderboard.json").read_text())
    assert len(resumed["rows"]) == 2 and all(not r["missing_evals"] for r in resumed["rows"])
    _assert_same(_comparable(resumed), _comparable(reference))


def test_rerun_skips_finished_work_and_redoes_a_corrupt_result(tmp_path):
    from helpers import tiny_resources, tiny_run_config
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

    from csae_bench.evals.core import CsaeCoreEvalOutput
    from csae_bench.pipeline import plan, run_jobs

    cfg = tiny_run_config(tmp_path)
    res = tiny_resources(cfg)
    jobs = plan(cfg, "blocks.2.hook_resid_post")
    assert run_jobs(jobs, res) == {"run": 4, "skipped": 0}
    # the eval jobs share one run-wide cache: SAE-independent passes are computed once per run
    assert {k[2] for k in res.eval_cache if k[:1] == ("core_pass",)} == {"clean", "residual", "zero_ablated"}
    results = sorted(tmp_path.rglob("*_eval_results.json"))
    assert [p.parent.name for p in results] == ["core", "core"]
    assert results[0].name == "csae_bench-tiny-blocks.2.hook_resid_post_relu-d128-s0_eval_results.json"
    for p in results:
        validate_eval_output_format_file(str(p), CsaeCoreEvalOutput)
    results[0].write_text('{"eval_type_id": "core", "trunc')  # a corrupt result is redone
    assert run_jobs(plan(cfg, "blocks.2.hook_resid_post"), res) == {"run": 1, "skipped": 3}
    validate_eval_output_format_file(str(results[0]), CsaeCoreEvalOutput)
    # a result of other settings (a changed suite value, or default) is recomputed, once
    stored = json.loads(results[1].read_text())
    stored["eval_config"]["verbose"] = not stored["eval_config"]["verbose"]
    results[1].write_text(json.dumps(stored))
    assert run_jobs(plan(cfg, "blocks.2.hook_resid_post"), res) == {"run": 1, "skipped": 3}
    assert run_jobs(plan(cfg, "blocks.2.hook_resid_post"), res) == {"run": 0, "skipped": 4}
    # context fields (sized from the run) are not compared unless the suite sets them
    size = json.loads(results[0].read_text())["eval_config"]["batch_size_prompts"]
    override = tiny_run_config(tmp_path, eval_settings={"core": {"batch_size_prompts": size}})
    assert all(j.done() for j in plan(override, "blocks.2.hook_resid_post"))
    bigger = tiny_run_config(tmp_path, eval_settings={"core": {"batch_size_prompts": size + 1}})
    assert [j.done() for j in plan(bigger, "blocks.2.hook_resid_post")] == [True, True, False, False]


def test_stale_settings_compare_suite_values_and_defaults_not_context_fields():
    from csae_bench.evals.nces import NCESEvalConfig
    from csae_bench.evals.registry import get_eval, stale_settings

    spec = get_eval("nces")
    ran = dataclasses.asdict(NCESEvalConfig(model_name="m", hook_name="h", random_seed=7))
    assert stale_settings(spec, ran, {}) == {}  # model, hook and seed come from the run
    assert stale_settings(spec, {**ran, "n_features": 99}, {}) == {
        "n_features": (99, NCESEvalConfig().n_features)}  # a default changed since
    assert stale_settings(spec, {**ran, "n_features": 99}, {"n_features": 99}) == {}
    assert stale_settings(spec, ran, {"random_seed": 8}) == {"random_seed": (7, 8)}
    assert stale_settings(spec, {"tau": 0.5}, {}) == {}  # fields a result lacks are not compared
    assert stale_settings(spec, ran, {"no_such_field": 1}) == {}  # the job reports that itself


def test_eval_failure_is_raised_not_swallowed(tmp_path):
    from helpers import tiny_resources, tiny_run_config

    from csae_bench.pipeline import PipelineError
    from csae_bench.run import execute

    cfg = tiny_run_config(tmp_path, eval_settings={"core": {"batch_size_prompts": 0}})
    with pytest.raises(PipelineError, match="eval core on relu-d128-s0 failed"):
        execute(cfg, tiny_resources(cfg), plots=False)
    assert not list(tmp_path.rglob("*_eval_results.json"))


def test_evaluate_existing_saes_folder(tmp_path, tiny_run):
    """--saes: SAELens-format folders trained elsewhere are evaluated, nothing is trained."""
    from helpers import tiny_resources, tiny_run_config

    from csae_bench.run import execute

    saes = tiny_run / "tiny" / "blocks.2.hook_resid_post" / "seed0" / "saes"
    cfg = tiny_run_config(tmp_path / "out", saes=str(saes))
    board = execute(cfg, tiny_resources(cfg), plots=False)
    assert sorted(r["sae_id"] for r in board["rows"]) == ["relu", "topk"]
    assert not (tmp_path / "out" / "tiny").exists()


@pytest.mark.e2e
def test_smoke_suite_end_to_end(tmp_path):
    """The CI smoke run: every architecture and every eval on the embedded model, offline. The
    suite pins its dtype and thread count, so the one recorded reference serves every machine; its
    tolerances are sized for what another CPU's rounding can do (csae_bench/regression.py). No
    wall-time bound here: timing is measured in benchmarks/, never asserted in a test."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "csae_bench.run", "--suite", "evals/smoke.toml",
                           "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    cfg = build_config(REPO / "evals" / "smoke.toml")
    assert {r["architecture"] for r in board["rows"]} == set(cfg.architectures)
    assert all(not r["missing_evals"] for r in board["rows"])
    assert not board["skipped_files"]
    assert (tmp_path / "plots" / "l0_vs_ce_loss_score.png").exists()
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

    from csae_bench.evals.registry import get_eval

    files = sorted(tmp_path.rglob("*_eval_results.json"))
    assert len(files) == len(cfg.architectures) * len(cfg.evals)
    for path in files:
        validate_eval_output_format_file(str(path), get_eval(path.parent.name).output_cls)
    # CI regression check on this same output: metrics within the tolerances recorded in
    # baselines/smoke_reference.json (csae_bench/regression.py).
    from csae_bench.regression import check, failure_report

    failures = check(tmp_path)
    assert not failures, failure_report(failures)


def test_log_lines_go_to_stderr_and_leave_stdout_to_results(capsys):
    """Into a file or pipe (not a terminal), one plain line per record: an exit-2 message is
    never wrapped at 80 columns."""
    import logging

    from csae_bench.cli import setup_logging

    root = logging.getLogger()
    before = list(root.handlers)
    setup_logging(verbose=False)
    try:
        long = "a log line " + "that goes on " * 12 + "and ends here"
        logging.getLogger("csae_bench.test").warning(long)
        captured = capsys.readouterr()
        assert "a log line" not in captured.out
        (line,) = [x for x in captured.err.splitlines() if "a log line" in x]
        assert line.endswith(long) and "WARNING" in line
        logging.getLogger("csae_bench.test").info(
            "[green]done[/] %s", "NCES topk [feature]", extra={"markup": True})
        assert capsys.readouterr().err.rstrip().endswith("INFO    done NCES topk [feature]")
    finally:
        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)


def test_python_m_csae_bench_is_the_whole_cli():
    """``python -m csae_bench`` reaches every command (``study``, ``regression``...), not only run."""
    out = subprocess.run([sys.executable, "-m", "csae_bench", "study", "-h"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: csae-bench study")

"""Leaderboard from any results folder: ours, SAEBench's unknown eval types, corrupt files."""

from __future__ import annotations

import json
import shutil

import pytest

from csae_bench.leaderboard import build_leaderboard, render_table, write_leaderboard
from csae_bench.run import main


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    """A real results folder: the tiny run (2 architectures, core eval)."""
    from pipeline_fakes import tiny_resources, tiny_run_config

    from csae_bench.run import execute

    out = tmp_path_factory.mktemp("results")
    cfg = tiny_run_config(out)
    execute(cfg, tiny_resources(cfg), plots=False)
    return out


@pytest.fixture
def mixed_results(tiny_results, tmp_path):
    """Our results plus a result of an eval type csae_bench does not know (as SAEBench writes
    them), a truncated JSON and a JSON that is not an eval result."""
    out = tmp_path / "mixed"
    shutil.copytree(tiny_results / "eval_results", out / "eval_results")
    ours = json.loads(next((out / "eval_results" / "core").glob("*relu*")).read_text())
    foreign = {
        "eval_type_id": "absorption_first_letter",
        "eval_config": {"model_name": "gemma-2-2b"},
        "eval_id": "x", "datetime_epoch_millis": 1, "sae_bench_commit_hash": "abc",
        "sae_lens_id": "layer_12/width_16k/average_l0_82", "sae_lens_release_id": "gemma-scope-2b-pt-res",
        "sae_lens_version": "5.0", "sae_cfg_dict": {"architecture": "jumprelu", "d_sae": 16384,
                                                    "model_name": "gemma-2-2b", "hook_name": "blocks.12.hook_resid_post"},
        "eval_result_metrics": {"mean": {"mean_absorption_fraction_score": 0.25, "mean_num_split_features": 1.5}},
        "eval_result_details": [],
    }
    (out / "eval_results" / "absorption").mkdir()
    (out / "eval_results" / "absorption" / "gemma-scope_x_eval_results.json").write_text(json.dumps(foreign))
    (out / "eval_results" / "core" / "broken_eval_results.json").write_text(json.dumps(ours)[:200])
    (out / "eval_results" / "core" / "notaresult_eval_results.json").write_text("[1, 2, 3]")
    return out


def test_rows_metrics_and_directions(tiny_results):
    board, _ = build_leaderboard(tiny_results, requested_evals=["core"])
    assert [(r["architecture"], r["d_sae"], r["seed"]) for r in board["rows"]] == [("relu", 128, 0), ("topk", 128, 0)]
    for row in board["rows"]:
        assert row["missing_evals"] == []
        assert row["model"] == "tiny" and row["hook"] == "blocks.2.hook_resid_post"
        assert row["training_tokens"] == 2048
        core = row["metrics"]["core"]
        assert core["model_performance_preservation.ce_loss_score"]["direction"] == "higher"
        assert core["reconstruction_quality.mse"]["direction"] == "lower"
        assert all(isinstance(m["value"], float) for m in core.values())
        saved = json.loads(next((tiny_results / "eval_results" / "core").glob(f"*{row['sae_id']}*")).read_text())
        assert row["l0"] == saved["eval_result_metrics"]["sparsity"]["l0"]
    topk = board["rows"][1]
    assert topk["l0"] == pytest.approx(8.0)  # TopK with k = 8
    assert board["versions"]["sae-bench"] and "commit" in board


def test_unknown_eval_types_and_corrupt_files(mixed_results):
    board, made = write_leaderboard(mixed_results, requested_evals=["core"])
    assert json.loads((mixed_results / "leaderboard.json").read_text())["rows"] == board["rows"]
    assert board["unknown_eval_types"] == ["absorption_first_letter"]
    foreign = next(r for r in board["rows"] if r["sae_release"] == "gemma-scope-2b-pt-res")
    assert foreign["architecture"] == "jumprelu" and foreign["d_sae"] == 16384 and foreign["seed"] is None
    assert foreign["metrics"]["absorption_first_letter"]["mean.mean_absorption_fraction_score"] == {
        "value": 0.25, "direction": None}
    assert foreign["missing_evals"] == ["core"]
    reasons = {p.split("/")[-1]: why for p, why in ((s["path"], s["reason"]) for s in board["skipped_files"])}
    assert "not valid JSON" in reasons["broken_eval_results.json"]
    assert "not a SAEBench eval result" in reasons["notaresult_eval_results.json"]
    assert len(board["rows"]) == 3
    assert [p.name for p in made] == ["l0_vs_ce_loss_score.png"]
    assert made[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_result_that_fails_validation_is_skipped(tiny_results, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(tiny_results / "eval_results", out / "eval_results")
    path = next((out / "eval_results" / "core").glob("*topk*"))
    data = json.loads(path.read_text())
    del data["eval_result_metrics"]["sparsity"]["l0"]
    path.write_text(json.dumps(data))
    board, _ = build_leaderboard(out)
    assert [r["architecture"] for r in board["rows"]] == ["relu"]
    assert "does not validate as CsaeCoreEvalOutput" in board["skipped_files"][0]["reason"]


def test_table_renders(tiny_results):
    from rich.console import Console

    console = Console(record=True, width=200)
    board, _ = build_leaderboard(tiny_results)
    render_table(board, console)
    text = console.export_text()
    assert "relu" in text and "topk" in text and "ce_loss_score ↑" in text


def test_leaderboard_command(mixed_results, tmp_path, caplog):
    assert main(["leaderboard", str(mixed_results)]) == 0
    assert (mixed_results / "leaderboard.json").exists()
    assert (mixed_results / "plots" / "l0_vs_ce_loss_score.png").exists()
    assert main(["leaderboard", str(tmp_path / "missing")]) == 2
    assert "does not exist" in caplog.text

"""Leaderboard from any results folder: ours, SAEBench's unknown eval types, corrupt files."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from helpers import write_saelens6_folder

from csae_bench.reporting.leaderboard import build_leaderboard, write_leaderboard
from csae_bench.reporting.table import render_table
from csae_bench.run import main


@pytest.fixture
def mixed_results(tiny_run, tmp_path):
    """Our results plus a result of an eval type csae_bench does not know (as SAEBench writes
    them), a truncated JSON and a JSON that is not an eval result."""
    out = tmp_path / "mixed"
    shutil.copytree(tiny_run / "eval_results", out / "eval_results")
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


def test_rows_metrics_and_directions(tiny_run):
    board, _ = build_leaderboard(tiny_run, requested_evals=["core"])
    assert [(r["architecture"], r["d_sae"], r["seed"]) for r in board["rows"]] == [("relu", 128, 0), ("topk", 128, 0)]
    for row in board["rows"]:
        assert row["missing_evals"] == []
        assert row["model"] == "tiny" and row["hook"] == "blocks.2.hook_resid_post"
        assert row["training_tokens"] == 2048
        core = row["metrics"]["core"]
        assert core["model_performance_preservation.ce_loss_score"]["direction"] == "higher"
        assert core["reconstruction_quality.mse"]["direction"] == "lower"
        assert all(isinstance(m["value"], float) for m in core.values())
        saved = json.loads(next((tiny_run / "eval_results" / "core").glob(f"*{row['sae_id']}*")).read_text())
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
    assert reasons["notaresult_eval_results.json"] == "not a SAEBench eval result (a JSON list, not an object)"
    assert len(board["rows"]) == 3
    assert [p.name for p in made] == ["l0_vs_ce_loss_score.png"]
    assert made[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_result_that_fails_validation_is_skipped(tiny_run, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(tiny_run / "eval_results", out / "eval_results")
    path = next((out / "eval_results" / "core").glob("*topk*"))
    data = json.loads(path.read_text())
    del data["eval_result_metrics"]["sparsity"]["l0"]
    path.write_text(json.dumps(data))
    board, _ = build_leaderboard(out)
    assert [r["architecture"] for r in board["rows"]] == ["relu"]
    # judged by SAEBench's own class (the one the file fails), the offending field named
    assert board["skipped_files"][0]["reason"] == (
        "does not validate as CoreEvalOutput: eval_result_metrics.sparsity.l0: Field required")


def test_table_renders(tiny_run):
    from rich.console import Console

    console = Console(record=True, width=200)
    board, _ = build_leaderboard(tiny_run)
    render_table(board, console, wide=True)
    text = console.export_text()
    assert "relu-d128-s0" in text and "topk-d128-s0" in text and "ce_loss_score↑" in text


def test_leaderboard_command(mixed_results, tmp_path, caplog):
    assert main(["leaderboard", str(mixed_results)]) == 0
    assert (mixed_results / "leaderboard.json").exists()
    assert (mixed_results / "plots" / "l0_vs_ce_loss_score.png").exists()
    assert main(["leaderboard", str(tmp_path / "missing")]) == 2
    assert "does not exist" in caplog.text
    (tmp_path / "empty").mkdir()
    assert main(["leaderboard", str(tmp_path / "empty")]) == 2
    assert "holds no SAEBench results" in caplog.text
    assert not (tmp_path / "empty" / "leaderboard.json").exists()


def test_rebuild_keeps_the_runs_requested_evals(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run / "eval_results", out / "eval_results")
    write_leaderboard(out, requested_evals=["core", "nces"], plots=False)
    assert main(["leaderboard", str(out), "--no-plots"]) == 0
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["requested_evals"] == ["core", "nces"]
    assert [r["missing_evals"] for r in board["rows"]] == [["nces"], ["nces"]]


# ---------------------------------------------------------------- issue 17: foreign files, non-finite values, table


def _saebench_core_file(ours: dict, path, **provenance) -> dict:
    """A core result exactly as SAEBench 0.6 writes it (its own class, its own to_json_file): no
    explained_variance_mean_centred. Metrics taken from one of ours, provenance replaced."""
    from pydantic import TypeAdapter
    from sae_bench.evals.core.eval_output import CoreEvalOutput
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

    data = json.loads(json.dumps(ours))
    del data["eval_result_metrics"]["reconstruction_quality"]["explained_variance_mean_centred"]
    data.update(provenance)
    TypeAdapter(CoreEvalOutput).validate_python(data).to_json_file(str(path))
    validate_eval_output_format_file(str(path), CoreEvalOutput)
    return json.loads(path.read_text())


def _strict_json(path):
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c} in {path}"))


@pytest.fixture
def varied_results(tiny_run, tmp_path):
    """Ours (relu, topk) + a random-decoder control whose kl_div_score is -inf (stored the way our
    writer stores it: "-inf") + SAEBench's own core file for an SAE of another model and hook."""
    out = tmp_path / "varied"
    shutil.copytree(tiny_run / "eval_results", out / "eval_results")
    core = out / "eval_results" / "core"
    ours = json.loads(next(core.glob("*relu*")).read_text())
    control = json.loads(json.dumps(ours))
    control["sae_lens_id"] = "random-decoder-d128-s0"
    control["eval_result_metrics"]["model_behavior_preservation"]["kl_div_score"] = "-inf"
    control["eval_result_metrics"]["model_behavior_preservation"]["kl_div_with_sae"] = "inf"
    (core / "csae_bench-tiny_random-decoder-d128-s0_eval_results.json").write_text(json.dumps(control))
    cfg = dict(ours["sae_cfg_dict"], model_name="gemma-2-2b", hook_name="blocks.12.hook_resid_post")
    _saebench_core_file(ours, core / "gemma-scope_x_eval_results.json", sae_lens_id="layer_12/width_16k/canonical",
                        sae_lens_release_id="gemma-scope-2b-pt-res", sae_cfg_dict=cfg)
    return out


def test_saebench_own_core_file_is_read_with_our_metric_empty(varied_results):
    """Issue 17.1: SAEBench's own core result (validates as CoreEvalOutput, lacks our metric) is a
    row, its metrics as written, explained_variance_mean_centred null — not skipped."""
    board, _ = build_leaderboard(varied_results)
    assert board["skipped_files"] == []
    foreign = next(r for r in board["rows"] if r["sae_release"] == "gemma-scope-2b-pt-res")
    data = json.loads((varied_results / "eval_results" / "core" / "gemma-scope_x_eval_results.json").read_text())
    core = foreign["metrics"]["core"]
    assert foreign["validated_as"] == {"core": "CoreEvalOutput"}
    assert core["reconstruction_quality.explained_variance_mean_centred"] == {"value": None, "direction": "higher"}
    assert core["reconstruction_quality.mse"]["value"] == data["eval_result_metrics"]["reconstruction_quality"]["mse"]
    assert foreign["l0"] == data["eval_result_metrics"]["sparsity"]["l0"] and foreign["flags"] == {}
    ours = next(r for r in board["rows"] if r["sae_id"] == "relu-d128-s0")
    assert ours["validated_as"] == {"core": "CsaeCoreEvalOutput"}
    assert isinstance(ours["metrics"]["core"]["reconstruction_quality.explained_variance_mean_centred"]["value"], float)


def test_skip_reasons_name_every_offending_field(tiny_run, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(tiny_run / "eval_results", out / "eval_results")
    (out / "eval_results" / "core" / "nometrics_eval_results.json").write_text(
        json.dumps({"eval_type_id": "core", "eval_result_metrics": [1]}))
    (out / "eval_results" / "core" / "notype_eval_results.json").write_text(json.dumps({"eval_result_metrics": {}}))
    path = next((out / "eval_results" / "core").glob("*topk*"))
    data = json.loads(path.read_text())
    data["eval_result_metrics"]["sparsity"]["l1"] = "lots"
    del data["eval_result_metrics"]["model_behavior_preservation"]["kl_div_score"]
    path.write_text(json.dumps(data))
    board, _ = build_leaderboard(out)
    reasons = {s["path"].split("/")[-1]: s["reason"] for s in board["skipped_files"]}
    assert reasons["nometrics_eval_results.json"] == (
        "not a SAEBench eval result (eval_result_metrics missing or not an object)")
    assert reasons["notype_eval_results.json"] == "not a SAEBench eval result (no eval_type_id)"
    reason = reasons[path.name]
    assert reason.startswith("does not validate as CoreEvalOutput: ")
    assert "eval_result_metrics.model_behavior_preservation.kl_div_score: Field required" in reason
    assert "eval_result_metrics.sparsity.l1: Input should be a valid number" in reason


def test_saebench_nan_sentinels_never_rank(tiny_run, tmp_path):
    """Issue 17.2: an SAE with a NaN decoder row, evaluated by SAEBench itself, gets -1 for every
    metric computed from its reconstruction (SAEBench's NaN→-1). Those are read as the sentinel
    (mse cannot be negative) and shown as null with a flag — never an mse of -1 ranked best.
    JSON's own NaN/-Infinity in a foreign file are null with a flag too."""
    out = tmp_path / "r"
    shutil.copytree(tiny_run / "eval_results", out / "eval_results")
    core = out / "eval_results" / "core"
    ours = json.loads(next(core.glob("*relu*")).read_text())
    m = ours["eval_result_metrics"]
    for cat, name in [("reconstruction_quality", "mse"), ("reconstruction_quality", "explained_variance"),
                      ("reconstruction_quality", "explained_variance_mean_centred"), ("reconstruction_quality", "cossim"),
                      ("model_performance_preservation", "ce_loss_score"),
                      ("model_performance_preservation", "ce_loss_with_sae"), ("shrinkage", "l2_norm_out")]:
        m[cat][name] = -1
    nan_sae = dict(ours, sae_lens_id="nan-row", sae_lens_release_id="saebench")
    (core / "saebench_nan-row_eval_results.json").write_text(json.dumps(nan_sae))
    inf_sae = json.loads(next(core.glob("*topk*")).read_text())
    inf_sae.update(sae_lens_id="inf-kl", sae_lens_release_id="saebench")
    inf_sae["eval_result_metrics"]["model_behavior_preservation"]["kl_div_score"] = float("-inf")
    inf_sae["eval_result_metrics"]["shrinkage"]["l2_ratio"] = float("nan")
    (core / "saebench_inf-kl_eval_results.json").write_text(json.dumps(inf_sae))  # -Infinity, NaN
    board, _ = write_leaderboard(out, plots=False)
    rows = {r["sae_id"]: r for r in board["rows"]}
    nan_row = rows["nan-row"]["metrics"]["core"]
    sentinel = "nan (SAEBench's -1 sentinel)"
    for metric in ("reconstruction_quality.mse", "reconstruction_quality.explained_variance",
                   "reconstruction_quality.explained_variance_mean_centred",
                   "model_performance_preservation.ce_loss_score"):
        assert nan_row[metric]["value"] is None and nan_row[metric]["flag"] == sentinel, metric
    assert rows["nan-row"]["flags"]["core.shrinkage.l2_norm_out"] == sentinel
    assert nan_row["model_behavior_preservation.kl_div_score"]["value"] == m["model_behavior_preservation"]["kl_div_score"]
    kl = rows["inf-kl"]["metrics"]["core"]["model_behavior_preservation.kl_div_score"]
    assert kl == {"value": None, "direction": "higher", "flag": "-inf"}
    assert rows["inf-kl"]["flags"] == {"core.model_behavior_preservation.kl_div_score": "-inf",
                                       "core.shrinkage.l2_ratio": "nan"}
    assert rows["relu-d128-s0"]["flags"] == {}
    saved = _strict_json(out / "leaderboard.json")  # standard JSON: no NaN / Infinity anywhere
    assert "non_finite_values" not in saved  # nothing left to null: the board already did
    ranked = [r["metrics"]["core"]["reconstruction_quality.mse"]["value"] for r in saved["rows"]]
    assert all(v is None or v >= 0 for v in ranked)


def test_leaderboard_json_is_standard_with_the_controls_infinite_kl(varied_results):
    """Issue 17.7: the random-decoder's kl_div_score of -inf is null in leaderboard.json, flagged
    with what it was; the file parses as strict JSON (what JSON.parse accepts)."""
    write_leaderboard(varied_results, plots=False)
    saved = _strict_json(varied_results / "leaderboard.json")
    control = next(r for r in saved["rows"] if r["sae_id"] == "random-decoder-d128-s0")
    assert control["control"] is True and control["architecture"] == "random-decoder"
    assert control["metrics"]["core"]["model_behavior_preservation.kl_div_score"] == {
        "value": None, "direction": "higher", "flag": "-inf"}
    assert control["flags"] == {"core.model_behavior_preservation.kl_div_score": "-inf",
                                "core.model_behavior_preservation.kl_div_with_sae": "inf"}


def test_atomic_write_json_writes_standard_json_and_names_non_finite_values(tmp_path):
    """Issue 17.7, every JSON the project writes itself (study records, manifests, summaries)."""
    from csae_bench.utils import atomic_write_json

    path = tmp_path / "record.json"
    atomic_write_json(path, {"a": float("-inf"), "b": [1.5, float("nan")], "c": {"d": float("inf"), "e": 2}})
    assert _strict_json(path) == {"a": None, "b": [1.5, None], "c": {"d": None, "e": 2},
                                  "non_finite_values": {"a": "-inf", "b[1]": "nan", "c.d": "inf"}}
    atomic_write_json(path, [float("nan")])  # not a dict: nulled, still standard
    assert _strict_json(path) == [None]


def test_atomic_writes_get_the_permissions_open_gives(tmp_path):
    """mkstemp's 0600 must not reach result files others read (a shared results folder)."""
    import os

    from csae_bench.utils import atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        (tmp_path / "b.json").write_text("{}")
    finally:
        os.umask(old)
    mode = (tmp_path / "a.json").stat().st_mode & 0o777
    assert mode == (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640


def _lines(console) -> list[str]:
    return console.export_text().splitlines()


def test_default_table_fits_80_columns_and_tells_saes_apart(varied_results):
    """Issue 17.8: rows named by SAE id; SAEs of different models/hooks in separate tables titled
    with model and hook; short headers, each whole on one line; a flag column marking the control
    and its non-finite KL; no line wider than 80."""
    from rich.console import Console

    board, _ = build_leaderboard(varied_results)
    console = Console(record=True, width=80)
    render_table(board, console)
    lines = _lines(console)
    assert max(len(line) for line in lines) <= 80
    headers = [line.split() for line in lines if line.lstrip().startswith("SAE ")]
    assert headers == [["SAE", "L0", "CE↑", "EVmc↑", "flag"]] * 2
    titles = [line.strip() for line in lines if " · " in line]
    assert titles == ["gemma-2-2b · blocks.12.hook_resid_post", "tiny · blocks.2.hook_resid_post"]
    data = {line.split()[0]: line for line in lines if line.strip().startswith(("relu", "topk", "random", "layer_12"))}
    assert sorted(data) == ["layer_12/width_16k/canonical", "random-decoder-d128-s0", "relu-d128-s0",
                            "topk-d128-s0"]
    order = [next(i for i, line in enumerate(lines) if key in line)
             for key in ("layer_12/width_16k/canonical", titles[1], "relu-d128-s0")]
    assert order == sorted(order)  # each SAE under its model/hook title
    assert data["random-decoder-d128-s0"].split()[-2:] == ["ctrl", "!"]
    assert data["relu-d128-s0"].split()[-1] != "!"
    assert len(set(data.values())) == 4


def test_one_model_and_hook_gives_one_table(tiny_run):
    from rich.console import Console

    board, _ = build_leaderboard(tiny_run)
    console = Console(record=True, width=80)
    render_table(board, console)
    lines = _lines(console)
    headers = [line.split() for line in lines if line.lstrip().startswith("SAE ")]
    assert headers == [["SAE", "L0", "CE↑", "EVmc↑", "flag"]]
    assert max(len(line) for line in lines) <= 80


def test_wide_table_shows_every_headline_metric_unfolded(varied_results):
    from rich.console import Console

    from csae_bench.reporting.results import registered_specs

    board, _ = build_leaderboard(varied_results)
    console = Console(record=True, width=80)
    render_table(board, console, wide=True)
    text = console.export_text()
    for metric in registered_specs()["core"].headline:
        assert metric.split(".")[-1] in text, metric
    assert "random-decoder-d128-s0" in text and "layer_12/width_16k/canonical" in text
    assert "↑/↓ higher/lower is better" in text and "~null NCES CI overlaps" in text  # its legend


def test_wide_flag_on_both_commands(varied_results, capsys):
    from csae_bench.cli import build_parser

    assert build_parser().parse_args(["run", "--wide"]).wide is True
    assert build_parser().parse_args(["run"]).wide is False
    assert build_parser().parse_args(["leaderboard", str(varied_results), "--wide"]).wide is True
    assert main(["leaderboard", str(varied_results), "--wide", "--no-plots"]) == 0
    assert "kl_div_score" in capsys.readouterr().out


def test_nces_separation_flag():
    """~null: a trained SAE whose NCES CI overlaps the random-decoder control's (same model, hook
    and seed) is flagged; one whose CI lies above is not; without a control, nothing is said."""
    from csae_bench.reporting.leaderboard import mark_separation
    from csae_bench.reporting.table import row_flags

    def row(sae_id, control, seed=0, hook="h"):
        return {"sae_id": sae_id, "control": control, "seed": seed, "model": "m", "hook": hook, "flags": {}}

    rows = [row("ctrl", True), row("apart", False), row("overlap", False), row("other-hook", False, hook="g"),
            row("ctrl-s1", True, seed=1), row("no-nces", False)]
    cis = [(-0.05, 0.10), (0.11, 0.3), (0.09, 0.4), (-0.5, 0.0), (0.5, 0.6)]
    mark_separation(rows, {id(r): ci for r, ci in zip(rows, cis)})
    sep = {r["sae_id"]: r["nces_separated_from_control"] for r in rows}
    assert sep == {"ctrl": None, "apart": True, "overlap": False, "other-hook": None, "ctrl-s1": None,
                   "no-nces": None}
    assert [row_flags(r) for r in rows] == ["ctrl", "", "~null", "", "ctrl", ""]


def test_nces_plot_and_separation_use_the_unweighted_mean():
    """The headline NCES is the unweighted mean: the ~null flag's CI, the table's column and the
    L0-vs-NCES plot read it, whatever order a board lists the NCES metrics in."""
    from csae_bench.reporting.leaderboard import NCES_SEPARATION_METRIC
    from csae_bench.reporting.plots import _nces_metric
    from csae_bench.reporting.table import COMPACT_COLUMNS

    assert NCES_SEPARATION_METRIC == "nces.nces_mean"
    assert ("nces", "nces.nces_mean", "NCES") in COMPACT_COLUMNS
    both = {"nces.nces_freq_weighted_mean": "higher", "nces.nces_mean": "higher"}
    assert _nces_metric({"metric_directions": {"nces": both}}) == "nces.nces_mean"
    other = {"nces.nces_freq_weighted_mean": "higher"}
    assert _nces_metric({"metric_directions": {"nces": other}}) == "nces.nces_freq_weighted_mean"
    assert _nces_metric({"metric_directions": {}}) is None


def test_l0_axis_has_plain_tick_labels():
    """Within a decade (L0 30–40) a linear axis; across decades a log axis labelled 8, 10, 100 —
    never matplotlib's 3.2×10¹ (mathtext)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from csae_bench.reporting.plots import set_l0_axis

    for values, scale in (([30.0, 34.0, 40.0], "linear"), ([8.0, 40.0, 300.0], "log")):
        fig, ax = plt.subplots()
        ax.scatter(values, [0.1, 0.2, 0.3])
        set_l0_axis(ax, values)
        fig.canvas.draw()
        labels = [t.get_text() for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True) if t.get_text()]
        plt.close(fig)
        assert ax.get_xscale() == scale and labels
        assert all(label.replace(".", "").replace("−", "").isdigit() for label in labels), labels


def test_sae_with_a_nan_decoder_row_fails_its_eval_and_never_ranks(tmp_path, caplog):
    """Issue 17.2 end to end (tiny model, --saes): the run fails with a message naming the
    SAE and its NaN weights; no result file, so no leaderboard row, is written for it. Bad input
    (the SAE cannot be evaluated as given): exit 2."""
    from helpers import tiny_resources, tiny_run_config

    from csae_bench.run import execute, guarded

    saes = tmp_path / "saes"
    write_saelens6_folder(saes / "nanrow", 64, 256, "blocks.2.hook_resid_post", "tiny", nan_row=5)
    out = tmp_path / "out"
    cfg = tiny_run_config(out, saes=str(saes))
    assert guarded(execute, cfg, tiny_resources(cfg), plots=False) == 2
    # the loader's export rescales by decoder norms, so the NaN row reaches W_enc and b_enc too
    assert re.search(r"SAE nanrow has NaN or infinite weights \([^)]*W_dec", caplog.text)
    assert not list(out.rglob("*_eval_results.json"))
    board, _ = write_leaderboard(out, plots=False)
    assert board["rows"] == []


def test_default_run_shaped_table_fits_80_columns():
    """The default run's shape: four architectures and four nulls (the longest id,
    permuted-decoder-d4096-s0), core + NCES + probing, widest values (negative, 3 significant
    digits), NCES with its CI half-width, a control, a ~null and a non-finite flag."""
    from rich.console import Console

    from csae_bench.reporting.results import registered_specs

    specs = registered_specs()
    types = ["core", "csae_probing", "nces"]
    archs = ["csae", "jumprelu", "random-decoder", "relu", "topk", "permuted-decoder", "init", "pca"]
    rows = []
    for i, arch in enumerate(archs):
        metrics = {e: {m: {"value": -0.0123456 * (i + 1), "direction": d} for m, d in specs[e].headline.items()}
                   for e in types}
        metrics["nces"]["nces.nces_mean"]["ci"] = [-0.5 - i, 0.25]
        rows.append({
            "sae_release": "csae_bench-embedded-blocks.6.hook_resid_post", "sae_id": f"{arch}-d4096-s0",
            "model": "embedded", "hook": "blocks.6.hook_resid_post", "architecture": arch, "d_sae": 4096, "seed": 0,
            "l0": 1234.5 if arch == "relu" else 32.0, "control": arch in archs[5:] + ["random-decoder"],
            "nces_separated_from_control": False if arch == "jumprelu" else None,
            "flags": {"core.x": "-inf"} if arch in ("random-decoder", "jumprelu") else {},
            "metrics": metrics,
        })
    board = {"results_dir": "results", "eval_types": types, "unknown_eval_types": [], "skipped_files": [],
             "metric_directions": {e: dict(specs[e].headline) for e in types}, "rows": rows}
    console = Console(record=True, width=80)
    render_table(board, console)
    lines = _lines(console)
    assert max(len(line) for line in lines) <= 80
    headers = [line.split() for line in lines if line.lstrip().startswith("SAE ")]
    assert headers == [["SAE", "L0", "CE↑", "EVmc↑", "NCES↑", "probe1↑", "flag"]]
    data = {line.split()[0]: line.split()[1:] for line in lines if "-d4096-s0" in line}
    assert sorted(data) == sorted(f"{a}-d4096-s0" for a in archs)
    assert data["relu-d4096-s0"][0] == "1234" and data["random-decoder-d4096-s0"][-2:] == ["ctrl", "!"]
    assert data["jumprelu-d4096-s0"][-2:] == ["~null", "!"]
    assert data["csae-d4096-s0"][3] == "-0.01±0.38" and data["pca-d4096-s0"][-1] == "ctrl"
    assert "NCES: NCES, unweighted" in " ".join(line.strip() for line in lines)  # the headline NCES


def test_same_sae_id_from_two_releases_is_told_apart():
    from csae_bench.reporting.table import row_label

    rows = [{"sae_release": "gemma-scope-2b-pt-res", "sae_id": "layer_12/width_16k/canonical"},
            {"sae_release": "csae_bench-gemma-2-2b-saes", "sae_id": "layer_12/width_16k/canonical"},
            {"sae_release": "csae_bench-gemma-2-2b-saes", "sae_id": "topk-d128-s0"}]
    assert [row_label(r, rows) for r in rows] == [
        "gemma-scope-2b-pt-res/layer_12/width_16k/canonical",
        "csae_bench-gemma-2-2b-saes/layer_12/width_16k/canonical", "topk-d128-s0"]

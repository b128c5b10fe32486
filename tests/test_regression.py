"""The CI regression check: the recorded reference, its tolerances, and clear failure messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csae_bench.regression import (
    K_SD,
    REFERENCE,
    UPDATE_COMMAND,
    RegressionError,
    check,
    failure_report,
    main,
    metric_steps,
    record,
    tolerance,
)


def _write_run(folder: Path, metrics: dict[str, float], seed: int = 0) -> Path:
    """A results folder as the smoke suite writes it (its leaderboard.json rows)."""
    rows: dict[str, dict] = {}
    for name, value in metrics.items():
        arch, eval_type, metric = name.split("/", 2)
        row = rows.setdefault(arch, {"architecture": arch, "seed": seed, "l0": None, "metrics": {}})
        if (eval_type, metric) == ("core", "sparsity.l0"):
            row["l0"] = value
        else:
            row["metrics"].setdefault(eval_type, {})[metric] = {"value": value, "direction": "higher"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "leaderboard.json").write_text(json.dumps({"rows": list(rows.values())}))
    return folder


def _reference() -> dict:
    return json.loads(REFERENCE.read_text())


def test_recorded_reference_is_complete_and_justified():
    ref = _reference()
    assert ref["metrics"] and ref["justification"] and ref["update_command"] == UPDATE_COMMAND
    assert len(ref["spread_seeds"]) >= 5, "tolerances must come from a measured spread of >= 5 seeds"
    steps = metric_steps()
    for name, entry in ref["metrics"].items():
        step = steps.get(name.split("/", 1)[1], (0.0, ""))[0]
        max_dev = max(abs(v - entry["value"]) for v in entry["seed_values"])
        assert entry["tolerance"] >= tolerance(entry["seed_sd"], entry["value"], step, max_dev) - 1e-12, name
        assert entry.get("step", 0.0) == pytest.approx(step), name
    archs = {name.split("/")[0] for name in ref["metrics"]}
    assert {"relu", "topk", "jumprelu", "csae", "random-decoder"} <= archs
    assert "overhead" not in ref, "wall-time bounds belong to the benchmarks, not to a test"


def test_metric_steps_follow_the_smoke_suite():
    steps = metric_steps()
    assert steps["nces/nces.frac_causally_verified"][0] == pytest.approx(1 / 8)  # n_features = 8
    assert steps["csae_probing/causal.fraction_tasks_verified"][0] == pytest.approx(1 / 2)  # 2 tasks
    assert steps["core/misc_metrics.frac_alive"][0] == pytest.approx(1 / 256)  # d_sae = 256
    # 2 tasks x 2 classes x round(16 x 0.4) test examples
    assert steps["csae_probing/probing.sae_top_1_test_accuracy"][0] == pytest.approx(1 / 24)


def test_one_step_change_of_a_discrete_metric_passes_where_the_seed_spread_was_zero(tmp_path):
    """A single verified NCES feature (1/8) on another CPU is not a regression; two more are."""
    ref = _reference()
    observed = {name: e["value"] for name, e in ref["metrics"].items()}
    name = "topk/nces/nces.frac_causally_verified"
    step = ref["metrics"][name]["step"]
    observed[name] = ref["metrics"][name]["value"] + step
    assert not check(_write_run(tmp_path / "one", observed))
    observed[name] = ref["metrics"][name]["value"] + ref["metrics"][name]["tolerance"] + step
    assert [f.name for f in check(_write_run(tmp_path / "far", observed))] == [name]


def test_broken_sparsity_coefficient_fails_with_a_clear_message(tmp_path):
    """The deliberate regression: a broken L1 coefficient leaves ReLU far denser than recorded."""
    ref = _reference()
    observed = {name: e["value"] for name, e in ref["metrics"].items()}
    name = "relu/core/sparsity.l0"
    observed[name] = ref["metrics"][name]["value"] * 4
    run = _write_run(tmp_path / "run", observed)
    failures = check(run)
    assert [f.name for f in failures] == [name]
    text = failure_report(failures)
    entry = ref["metrics"][name]
    for part in (name, f"{observed[name]:.6g}", f"reference {entry['value']:.6g}", f"±{entry['tolerance']:.4g}",
                 "python -m csae_bench.regression record"):
        assert part in text, part
    assert main(["check", str(run)]) == 1


def test_metric_missing_fails(tmp_path):
    ref = _reference()
    observed = {name: e["value"] for name, e in ref["metrics"].items()}
    dropped = next(iter(observed))
    del observed[dropped]
    failures = check(_write_run(tmp_path / "run", observed))
    assert [f.name for f in failures] == [dropped]
    assert "missing from the results" in failure_report(failures)


def test_metric_absent_on_a_recorded_seed_may_be_absent_but_is_checked_when_present(tmp_path):
    rows = [{"architecture": "jumprelu", "seed": 0, "l0": 0.1,
             "metrics": {"nces": {"nces.nces_mean": {"value": 0.2, "direction": "higher"}}}},
            {"architecture": "jumprelu", "seed": 1, "l0": 0.2, "metrics": {}}]  # collapsed: no NCES
    (tmp_path / "multi").mkdir()
    (tmp_path / "multi" / "leaderboard.json").write_text(json.dumps({"rows": rows}))
    ref = record([tmp_path / "multi"], tmp_path / "ref.json")
    entry = ref["metrics"]["jumprelu/nces/nces.nces_mean"]
    assert entry["optional"] and entry["present_in_seeds"] == [0]
    assert "optional" not in ref["metrics"]["jumprelu/core/sparsity.l0"]
    absent = _write_run(tmp_path / "absent", {"jumprelu/core/sparsity.l0": 0.1})
    assert not check(absent, tmp_path / "ref.json")
    off = _write_run(tmp_path / "off", {"jumprelu/core/sparsity.l0": 0.1, "jumprelu/nces/nces.nces_mean": 0.9})
    assert [f.name for f in check(off, tmp_path / "ref.json")] == ["jumprelu/nces/nces.nces_mean"]


def test_check_another_seed_and_say_which_is_missing(tmp_path):
    ref = _reference()
    observed = {name: e["value"] for name, e in ref["metrics"].items()}
    run = _write_run(tmp_path / "run", observed, seed=5)
    assert not check(run, seed=5)
    assert main(["check", str(run), "--seed", "5"]) == 0
    with pytest.raises(RegressionError, match="no results for seed 0"):
        check(run)


def test_record_sets_tolerances_from_seed_spread_and_single_seed_keeps_them(tmp_path):
    ref_path = tmp_path / "ref.json"
    values = {0: 0.60, 1: 0.70, 2: 0.65}
    for seed, v in values.items():
        _write_run(tmp_path / "multi", {"topk/core/ce": v, "topk/core/sparsity.l0": 16.0}, seed=seed)
    # three seeds in one folder: leaderboard rows of all seeds
    rows = []
    for seed, v in values.items():
        rows.append({"architecture": "topk", "seed": seed, "l0": 16.0,
                     "metrics": {"core": {"ce": {"value": v, "direction": "higher"}}}})
    (tmp_path / "multi" / "leaderboard.json").write_text(json.dumps({"rows": rows}))
    ref = record([tmp_path / "multi"], ref_path)
    assert ref["seed"] == 0 and ref["spread_seeds"] == [0, 1, 2]
    assert ref["metrics"]["topk/core/ce"]["value"] == 0.60
    assert ref["metrics"]["topk/core/ce"]["tolerance"] == pytest.approx(K_SD * 0.05)  # sd 0.05
    assert ref["metrics"]["topk/core/sparsity.l0"]["tolerance"] == pytest.approx(0.02 * 16)

    _write_run(tmp_path / "single", {"topk/core/ce": 0.9, "topk/core/sparsity.l0": 16.0})
    updated = record([tmp_path / "single"], ref_path)  # the one-command update after an intended change
    assert updated["metrics"]["topk/core/ce"]["value"] == 0.9
    assert updated["metrics"]["topk/core/ce"]["tolerance"] == pytest.approx(K_SD * 0.05)
    assert not check(tmp_path / "single", ref_path)

    _write_run(tmp_path / "new", {"topk/core/brand_new": 1.0})
    with pytest.raises(RegressionError, match="brand_new is new"):
        record([tmp_path / "new"], ref_path)


def test_missing_leaderboard_says_what_to_run(tmp_path):
    with pytest.raises(RegressionError, match="run the smoke suite first"):
        check(tmp_path)

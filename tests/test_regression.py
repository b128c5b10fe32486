"""The CI regression check: the recorded reference, its tolerances, and clear failure messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csae_bench.regression import (
    REFERENCE,
    UPDATE_COMMAND,
    RegressionError,
    check,
    compare,
    failure_report,
    main,
    record,
    tolerance,
)


def _write_run(folder: Path, metrics: dict[str, float], seed: int = 0,
               train_seconds: tuple[float, float] = (2.0, 2.4)) -> Path:
    """A results folder as the smoke suite writes it: leaderboard.json rows and training summaries."""
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
    for arch, seconds in zip(("topk", "csae"), train_seconds, strict=True):
        summary = folder / "embedded" / "blocks.6.hook_resid_post" / f"seed{seed}" / "saes" / arch
        summary.mkdir(parents=True, exist_ok=True)
        (summary / "training_summary.json").write_text(json.dumps({"wall_seconds": seconds}))
    return folder


def _reference() -> dict:
    return json.loads(REFERENCE.read_text())


def test_recorded_reference_is_complete_and_justified():
    ref = _reference()
    assert ref["metrics"] and ref["justification"] and ref["update_command"] == UPDATE_COMMAND
    assert len(ref["spread_seeds"]) >= 2, "tolerances must come from a measured seed spread"
    for name, entry in ref["metrics"].items():
        assert entry["tolerance"] >= tolerance(entry["seed_sd"], entry["value"]) - 1e-12, name
    archs = {name.split("/")[0] for name in ref["metrics"]}
    assert {"relu", "topk", "jumprelu", "csae", "random-decoder"} <= archs
    assert "csae_vs_topk_train_time" in ref["overhead"]


def test_reference_values_pass():
    ref = _reference()
    observed = {name: e["value"] for name, e in ref["metrics"].items()}
    assert all(f.passed for f in compare(observed, ref))


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


def test_metric_missing_or_overhead_over_bound_fails(tmp_path):
    ref = _reference()
    observed = {name: e["value"] for name, e in ref["metrics"].items()}
    dropped = next(iter(observed))
    del observed[dropped]
    bound = ref["overhead"]["csae_vs_topk_train_time"]["max"]
    failures = check(_write_run(tmp_path / "run", observed, train_seconds=(1.0, 1.5 * bound)))
    names = {f.name for f in failures}
    assert names == {dropped, "overhead/csae_vs_topk_train_time"}
    text = failure_report(failures)
    assert "missing from the results" in text and f"exceeds the bound {bound:.4g}" in text


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
    assert ref["metrics"]["topk/core/ce"]["tolerance"] == pytest.approx(4 * 0.05)
    assert ref["metrics"]["topk/core/sparsity.l0"]["tolerance"] == pytest.approx(0.02 * 16)
    assert ref["overhead"]["csae_vs_topk_train_time"]["max"] == pytest.approx(3 * 1.2)

    _write_run(tmp_path / "single", {"topk/core/ce": 0.9, "topk/core/sparsity.l0": 16.0})
    updated = record([tmp_path / "single"], ref_path)  # the one-command update after an intended change
    assert updated["metrics"]["topk/core/ce"]["value"] == 0.9
    assert updated["metrics"]["topk/core/ce"]["tolerance"] == pytest.approx(4 * 0.05)
    assert not check(tmp_path / "single", ref_path)

    _write_run(tmp_path / "new", {"topk/core/brand_new": 1.0})
    with pytest.raises(RegressionError, match="brand_new is new"):
        record([tmp_path / "new"], ref_path)


def test_missing_leaderboard_says_what_to_run(tmp_path):
    with pytest.raises(RegressionError, match="run the smoke suite first"):
        check(tmp_path)

"""The validity study (issue 14): hierarchical bootstrap, verdicts as docs/validity.md declares
them, the job list, the report block and resumability — on synthetic records (no model), plus the
per-token NCES capture on the tiny model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from csae_bench.studies.validity import ValidityConfig, choose, jobs, judge, summarize, write_report
from csae_bench.studies.validity import bootstrap as bs
from csae_bench.studies.validity.capture import CaptureError, token_table
from csae_bench.studies.validity.config import MetricSpec
from csae_bench.studies.validity.jobs import NcesTokensJob, snapshot_tokens
from csae_bench.studies.validity.records import load_records, probing_record

DOC = Path(__file__).resolve().parents[1] / "docs" / "validity.md"


def nces_rec(seed, sae, effect, ctrl, rng, *, layer=6, control="data", tokens=40960,
             snapshot=False, J=24, T=4):  # fmt: skip
    """A synthetic NCES record: J features × T tokens, KL ~ effect · Exp(1), control ~ ctrl · Exp(1)."""
    feats = [{"feature_idx": j, "frequency": 0.01 * (1 + j % 3), "stratum": j % 2,
              "sampling_weight": 1.0 + j % 2, "n_tokens": T, "status": "ok"} for j in range(J)]  # fmt: skip
    kl, kc = effect * rng.exponential(1, J * T), ctrl * rng.exponential(1, J * T)
    return {
        "layer": layer, "seed": seed, "sae": sae, "control": control, "training_tokens": tokens,
        "snapshot": snapshot, "features": feats,
        "tokens": {"feature": np.repeat(np.arange(J), T).tolist(), "kl": kl.tolist(),
                   "kl_control": kc.tolist(), "edit_norm_sq": (1 + rng.random(J * T)).tolist(),
                   "ctx": [0] * (J * T), "pos": [1] * (J * T)},
    }  # fmt: skip


def _diff_ci(trained, null, n=400, flat=False, seed=0):
    """95% CI of trained − null (``nces`` kind) from per-seed records."""
    rng = np.random.default_rng(seed)
    K = len(trained)
    inner = {}
    for name, recs in (("t", trained), ("n", null)):
        inner[name] = np.stack(
            [
                bs.nces_draws(bs.NcesUnit.from_record(r), n * K, rng)["nces"].reshape(n, K)
                for r in recs
            ]
        )
    pick = bs.seed_picks(K, n, rng, flat=flat)
    return bs.percentile_ci(bs.combine(inner["t"] - inner["n"], pick))


def test_a_planted_gap_is_detected():
    rng = np.random.default_rng(1)
    trained = [nces_rec(s, "topk", 3.0, 1.0, rng) for s in range(3)]
    null = [nces_rec(s, "init", 1.0, 1.0, rng) for s in range(3)]
    lo, hi = _diff_ci(trained, null)
    assert lo > 0.2 and hi < 0.8  # planted NCES gap ≈ 0.5


def test_without_a_gap_the_ci_covers_zero():
    rng = np.random.default_rng(2)
    same = [nces_rec(s, "topk", 1.0, 1.0, rng) for s in range(3)]
    lo, hi = _diff_ci(same, same)
    assert lo < 0 < hi


def test_seed_level_noise_widens_the_ci_compared_with_a_flat_bootstrap():
    rng = np.random.default_rng(3)
    # each trained seed has its own effect size: variance between seeds, not within
    trained = [nces_rec(s, "topk", e, 1.0, rng) for s, e in enumerate((1.5, 4.0, 12.0))]
    null = [nces_rec(s, "init", 1.0, 1.0, rng) for s in range(3)]
    lo_h, hi_h = _diff_ci(trained, null)
    lo_f, hi_f = _diff_ci(trained, null, flat=True)
    assert hi_h - lo_h > 2 * (hi_f - lo_f)


def test_point_estimates_follow_the_nces_definitions():
    rec = nces_rec(0, "topk", 1.0, 1.0, np.random.default_rng(4), J=4, T=2)
    u = bs.NcesUnit.from_record(rec)
    pt = bs.nces_point(u)
    E, R = u.kl_JT.mean(1), u.ctrl_JT.mean(1)
    v = (E - R) / (E + R)
    assert pt["nces"] == pytest.approx((v * u.weight_J).sum() / u.weight_J.sum())
    assert pt["nces_fw"] == pytest.approx(
        (v * u.weight_J * u.freq_J).sum() / (u.weight_J * u.freq_J).sum()
    )
    assert pt["raw_kl"] == pytest.approx(np.median(u.kl_JT))
    assert pt["kl_per_norm"] == pytest.approx(np.median(u.kl_JT / u.norm2_JT))


# ---------------------------------------------------------------- verdicts


CFG = ValidityConfig(trained=("topk", "csae"), nulls=("random-decoder", "init"), init_null="init")
SPEC = MetricSpec("nces[data]", "NCES", "nces", "data")


def _hand(gap=0.3, lo=0.1, sd=0.02, rho=0.9, hw=0.02):
    per_sae = {s: {"point": 0.5, "per_seed": [0.5, 0.5, 0.5], "reseed_sd": sd, "half_width": hw}
               for s in CFG.saes}  # fmt: skip
    pairs = {
        f"{t} − {n}": {"gap": gap, "ci": [lo, gap + 0.1]} for t in CFG.trained for n in CFG.nulls
    }
    rho_ = {t: {"mean": rho} for t in CFG.trained}
    return per_sae, pairs, rho_


def test_every_check_passes_on_a_clean_summary():
    v = judge(SPEC, *_hand(), CFG)
    assert v["checks"] == {"separation": True, "reseed": True, "monotonic": True, "power": True}
    assert v["trusted"] and v["score"] == pytest.approx(0.3 / 0.02)


@pytest.mark.parametrize(
    ("change", "check"),
    [({"lo": -0.01}, "separation"), ({"sd": 0.2}, "reseed"), ({"rho": 0.5}, "monotonic"),
     ({"hw": 0.05}, "power")],
)  # fmt: skip
def test_each_check_fails_on_its_own(change, check):
    v = judge(SPEC, *_hand(**change), CFG)
    assert [k for k, ok in v["checks"].items() if not ok] == [check]
    assert v["trusted"] == (check == "power")  # power says whether the sample sufficed, no more


def test_one_failing_pair_fails_separation_and_a_missing_one_is_not_a_pass():
    per_sae, pairs, rho = _hand()
    pairs["csae − init"]["ci"] = [-0.05, 0.4]
    assert judge(SPEC, per_sae, pairs, rho, CFG)["checks"]["separation"] is False
    del pairs["csae − init"]
    v = judge(SPEC, per_sae, pairs, rho, CFG)
    assert v["checks"]["separation"] is None and not v["trusted"]


def test_relative_power_rule_for_raw_effects():
    per_sae, pairs, rho = _hand(hw=0.04)  # 8% of a value of 0.5
    raw = MetricSpec("raw_kl", "raw", "raw_kl", "data", relative_power=True)
    assert judge(raw, per_sae, pairs, rho, CFG)["checks"]["power"] is True
    assert judge(SPEC, per_sae, pairs, rho, CFG)["checks"]["power"] is False


def test_choice_takes_the_best_trusted_ratio_and_ties_go_to_the_simpler():
    specs = [MetricSpec("a", "a", "nces", "data", simplicity=3),
             MetricSpec("b", "b", "raw_kl", "data", simplicity=0),
             MetricSpec("c", "c", "nces_fw", "data", simplicity=1)]  # fmt: skip
    ms = [{"metric": "a", "trusted": True, "score": 5.0}, {"metric": "b", "trusted": True, "score": 5.0},
          {"metric": "c", "trusted": False, "score": 9.0}]  # fmt: skip
    assert choose(ms, specs) == "b"
    ms[0]["score"] = 6.0
    assert choose(ms, specs) == "a"
    assert choose([{**m, "trusted": False} for m in ms], specs) is None


# ---------------------------------------------------------------- synthetic study


def tiny_cfg(**kw):
    return ValidityConfig(seeds=(0, 1, 2), nulls=("random-decoder", "init"), train_tokens=40960,
                          batch_size=4096, n_bootstrap=100, probing=False, **kw)  # fmt: skip


def write_study(out: Path, cfg: ValidityConfig, layer=6, seeds=(0, 1, 2)):
    """Records where trained SAEs beat the nulls and improve over training."""
    rng = np.random.default_rng(7)
    snaps = snapshot_tokens(cfg)[:-1]
    recs = []
    for s in seeds:
        for ctl in cfg.controls:
            recs += [nces_rec(s, t, 4.0, 1.0, rng, layer=layer, control=ctl) for t in cfg.trained]
            recs += [nces_rec(s, "random-decoder", 1.0, 1.0, rng, layer=layer, control=ctl),
                     nces_rec(s, "init", 1.0, 1.2, rng, layer=layer, control=ctl, tokens=0)]  # fmt: skip
            recs += [nces_rec(s, t, 1.0 + i * 0.7, 1.0, rng, layer=layer, control=ctl, tokens=x,
                              snapshot=True) for t in cfg.trained for i, x in enumerate(snaps)]  # fmt: skip
    for r in recs:
        at = f"@{r['training_tokens']}" if r["snapshot"] else ""
        p = out / f"layer{layer}/seed{r['seed']}/records/nces_{r['sae']}{at}_{r['control']}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(r))


def test_summary_trusts_a_metric_that_separates_and_grows(tmp_path):
    cfg = tiny_cfg()
    write_study(tmp_path, cfg)
    s = summarize(load_records(tmp_path, cfg.train_tokens, cfg.init_null), cfg)
    m = {x["metric"]: x for x in s["sets"]["selection"]["metrics"]}
    assert m["nces[data]"]["checks"]["separation"] is True
    assert m["nces[data]"]["rho"]["topk"]["mean"] > 0.6
    assert s["choice"] in m and m[s["choice"]]["trusted"]
    assert s["confirmation"] is None


def test_confirmation_judges_the_frozen_choice_on_both_sets(tmp_path):
    cfg = tiny_cfg(phase="confirm")
    write_study(tmp_path, cfg)
    write_study(tmp_path, cfg, seeds=(3, 4, 5))
    s = summarize(load_records(tmp_path, cfg.train_tokens, cfg.init_null), cfg, "nces[data]")
    assert s["choice"] == "nces[data]" and s["choice_frozen"]
    # layer 12 has no records: incomplete (None), not failed, and not confirmed
    assert s["confirmation"]["per_set"] == {"confirm layer 6": True, "confirm layer 12": None}
    assert s["confirmation"]["confirmed"] is False


def test_a_confirmation_set_with_a_seed_unmeasured_is_incomplete_not_passed(tmp_path):
    from functools import partial

    from csae_bench.studies.validity.report import records_complete

    cfg = tiny_cfg(phase="confirm")
    complete = partial(records_complete, cfg, tmp_path)
    for layer, seeds in ((6, (0, 1, 2)), (6, (3, 4)), (12, (3, 4, 5))):  # layer 6 lacks seed 5
        write_study(tmp_path, cfg, layer=layer, seeds=seeds)
    records = load_records(tmp_path, cfg.train_tokens, cfg.init_null)
    s = summarize(records, cfg, "nces[data]")
    assert s["confirmation"]["per_set"] == {"confirm layer 6": True, "confirm layer 12": True}
    s = summarize(records, cfg, "nces[data]", complete)  # seeds 3, 4 pass; the set declared 3-5
    assert s["confirmation"]["per_set"] == {"confirm layer 6": None, "confirm layer 12": True}
    assert s["confirmation"]["confirmed"] is False
    write_study(tmp_path, cfg, layer=6, seeds=(5,))
    records = load_records(tmp_path, cfg.train_tokens, cfg.init_null)
    assert summarize(records, cfg, "nces[data]", complete)["confirmation"]["confirmed"] is True


def test_report_keeps_the_criteria_and_replaces_only_the_results_block(tmp_path):
    cfg = tiny_cfg()
    out, docs = tmp_path / "out", tmp_path / "docs"
    write_study(out, cfg)
    docs.mkdir()
    shutil.copy(DOC, docs / "validity.md")
    before = (docs / "validity.md").read_text()
    head = before.split("<!-- validity-results:start -->")[0]
    write_report(out, docs, cfg)
    first = (docs / "validity.md").read_text()
    assert first.startswith(head) and "Not run yet" not in first
    assert "### Selection set: layer 6" in first and "**Choice:**" in first
    assert first.endswith(before.split("<!-- validity-results:end -->")[1])
    write_report(out, docs, cfg)  # the block is replaced, not appended; the choice now frozen
    second = (docs / "validity.md").read_text()
    assert second.count("<!-- validity-results:start -->") == 1 and second.startswith(head)
    assert "(frozen before the confirmation sets were measured)" in second
    assert (docs / "img" / "validity_forest.png").stat().st_size > 1000
    assert (docs / "img" / "validity_vs_tokens.png").exists()
    assert json.loads((out / "validity_choice.json").read_text())["choice"]


def _iia(s, n):
    return {"iia": s / n, "ci_low": 0, "ci_high": 1, "n_success": s, "n": n}


def test_probing_records_keep_the_judged_tasks_every_k_and_the_brackets():
    raw = {"eval_result_details": [
        {"task_name": "a", "judged": True, "verified": True,
         "interchange": {"ceiling": _iia(10, 10), "per_k": [
             {"k": 5, "sae": _iia(9, 10), "resid": _iia(2, 10), "pca": _iia(4, 10),
              "random": _iia(6, 30), "random_per_set": [0.1, 0.2, 0.3]},
             {"k": 1, "sae": _iia(3, 10), "random": _iia(1, 30)}]}},
        {"task_name": "b", "judged": True, "verified": None, "interchange": None},
        {"task_name": "c", "judged": False, "verified": True, "interchange": None}]}  # fmt: skip
    r = probing_record(raw, 6, 0, "topk", 40960, False)
    assert [t["task"] for t in r["tasks"]] == ["a", "b"]
    a = r["tasks"][0]
    assert [x["k"] for x in a["per_k"]] == [1, 5] and a["ceiling"] == [10, 10]
    # three random sets patch the same 10 pairs: one set's trials, the sets' mean success
    assert a["per_k"][1] == {"k": 5, "sae": [9, 10], "random": [2.0, 10], "resid": [2, 10],
                             "pca": [4, 10]}  # fmt: skip
    assert a["per_k"][0]["random"] == [1.0, 30]  # no per-set list: one set
    assert [t["verified"] for t in r["tasks"]] == [1.0, 0.0]
    u = bs.ProbingUnit.from_record(r)  # the smallest k of each task; b has no pairs
    assert u.success_K.tolist() == [3.0, 0.0] and u.n_K.tolist() == [10, 0]
    assert bs.probing_point(u) == {"verified": 0.5, "iia": pytest.approx(0.3)}
    assert bs.ProbingUnit.from_record(r, "pca", 5).success_K.tolist() == [4.0, 0.0]
    assert bs.ProbingUnit.from_record(r, "ceiling").n_K.tolist() == [10, 0]


def probing_rec(seed, sae, sae_iia, *, resid=0.0, tasks=2, n=20, verified=0.0, layer=6,
                snapshot=False):  # fmt: skip
    """A reduced probing record: every task has ``n`` pairs at k 1 and 5; the SAE flips
    ``sae_iia`` of them, random features none, the residual dimensions ``resid``, PCA half."""
    t = lambda s: [round(s * n), n]  # noqa: E731
    per_k = [{"k": k, "sae": t(sae_iia), "random": [0.0, n], "resid": t(resid),
              "pca": t(0.5)} for k in (1, 5)]  # fmt: skip
    return {"layer": layer, "seed": seed, "sae": sae, "snapshot": snapshot,
            "training_tokens": 0 if sae == "init" else 40960,
            "tasks": [{"task": f"t{i}", "verified": verified, "ceiling": [n, n], "per_k": per_k}
                      for i in range(tasks)]}  # fmt: skip


def test_iia_table_averages_seeds_reuses_the_iia_metric_and_reads_brackets_once(recwarn):
    cfg = ValidityConfig(**{**tiny_cfg().__dict__, "probing": True, "seeds": (0, 1)})
    recs = [probing_rec(s, "topk", 0.5 + 0.1 * s, resid=0.25, verified=1.0) for s in (0, 1)]
    recs += [probing_rec(s, "csae", 0.4) for s in (0, 1)]
    recs += [probing_rec(s, "random-decoder", 0.0, resid=0.9) for s in (0, 1)]  # not read
    recs += [probing_rec(0, "init", 0.0), probing_rec(0, "topk", 0.95, snapshot=True)]
    recs += [probing_rec(0, "topk", 0.95, layer=12)]  # another set's
    summary = summarize({"nces": [], "probing": recs}, cfg)
    got = summary["sets"]["selection"]["iia"]
    assert got["ks"] == [1, 5] and got["seeds"] == [0, 1]
    topk = got["saes"]["topk"]
    assert topk["verified"] == [4, 4] and got["saes"]["csae"]["verified"] == [0, 4]
    assert topk["sae"][5]["point"] == pytest.approx(0.55) and topk["sae"][5]["n_seeds"] == 2
    lo, hi = topk["sae"][5]["ci"]
    assert 0.4 < lo <= 0.55 <= hi < 0.7
    metric = next(m for m in summary["sets"]["selection"]["metrics"] if m["metric"] == "iia")
    for sae in ("topk", "csae", "init"):  # one number, one CI, in both tables
        assert got["saes"][sae]["sae"][1]["ci"] == metric["per_sae"][sae]["ci"]
        assert got["saes"][sae]["sae"][1]["point"] == pytest.approx(metric["per_sae"][sae]["point"])
    assert topk["random"][5]["point"] == 0.0 and topk["random"][5]["ci"] == [0.0, 0.0]
    assert got["saes"]["init"]["sae"][1]["n_seeds"] == 1  # seed 1 has no record: not counted
    ind = got["independent"]
    assert ind["resid"][1]["point"] == pytest.approx(0.25)  # from topk's records (trained first)
    assert ind["pca"][5]["point"] == pytest.approx(0.5)
    assert list(ind["ceiling"]) == [1] and ind["ceiling"][1]["point"] == 1.0
    from csae_bench.studies.validity.report import _iia_lines, render

    page = render(summary, cfg, [], Path("out"))
    assert "| patched | verified (task × seed) | k = 1 | k = 5 |" in page
    assert "| topk features | 4/4 | 0.55 [" in page
    assert "| init (null) features | 0/2 | 0.00 [0.00, 0.00] (1 of 2 seeds) |" in page
    assert "| ceiling (whole residual, any k) |  | 1.00 [1.00, 1.00] |  |" in page
    assert _iia_lines(got, cfg, [0, 1, 2])[0].startswith("*Probing records are missing for seed(s) 2:")
    # the SAE-independent rows fall back to another SAE's record where the first has none
    no_topk1 = [r for r in recs if not (r["sae"] == "topk" and r["seed"] == 1)]
    ind = summarize({"nces": [], "probing": no_topk1}, cfg)["sets"]["selection"]["iia"]["independent"]
    assert ind["resid"][1]["n_seeds"] == 2 and ind["resid"][1]["point"] == pytest.approx(0.125)
    empty = summarize({"nces": [], "probing": recs[-1:]}, cfg)["sets"]["selection"]["iia"]
    assert empty["ks"] == [] and _iia_lines(empty, cfg, [0, 1]) == []


# ---------------------------------------------------------------- jobs


def test_jobs_share_one_harvest_per_layer_and_request_snapshots(tmp_path):
    cfg = ValidityConfig(seeds=(0, 1), train_tokens=40960, batch_size=4096, controls=("data",),
                         nulls=("random-decoder", "init"), probing=True, probe_snapshots=False)  # fmt: skip
    work = jobs(cfg, tmp_path)
    kinds = [type(j).__name__ for j in work]
    assert kinds.count("HarvestJob") == 1 and kinds.count("GradientJob") == 1
    trains = [j for j in work if type(j).__name__ == "TrainJob"]
    assert len(trains) == 2 and all(t.harvest is work[0] for t in trains)
    assert all(t.settings["n_snapshots"] == 5 for t in trains)
    from csae_bench.precision import dtype_name, resolve_dtype

    # trained in the default run's precision (bf16 where the CPU is fast at it), not float32
    assert {t.settings["dtype"] for t in trains} == {dtype_name(resolve_dtype("auto", "cpu"))}
    assert set(trains[0].architectures) == {"topk", "csae", "random-decoder", "init"}
    nces = [j for j in work if isinstance(j, NcesTokensJob)]
    snaps = snapshot_tokens(cfg)
    assert len(snaps) == 5 and snaps[-1] == cfg.train_tokens
    # per seed: 4 final SAEs + 2 trained × 4 snapshots (the 5th is the final SAE)
    assert len(nces) == 2 * (4 + 2 * 4)
    snap_jobs = [j for j in nces if j.snapshot]
    assert {j.tokens for j in snap_jobs} == set(snaps[:-1])
    assert all(j.folder.parent.name == "snapshots" and j.n_features == cfg.snapshot_n_features
               for j in snap_jobs)  # fmt: skip
    assert next(j for j in nces if j.sae == "init").tokens == 0
    assert len([j for j in work if type(j).__name__ == "EvalJob"]) == 2 * 4
    confirm = jobs(ValidityConfig(**{**cfg.__dict__, "phase": "confirm"}), tmp_path)
    harvests = [
        j.path.relative_to(tmp_path).as_posix() for j in confirm if type(j).__name__ == "HarvestJob"
    ]
    assert harvests == ["layer6/activations", "layer12/activations"]


def test_a_record_job_is_done_once_its_json_is_valid(tmp_path):
    job = next(j for j in jobs(tiny_cfg(), tmp_path) if isinstance(j, NcesTokensJob))
    assert not job.done()
    job.path.parent.mkdir(parents=True)
    job.path.write_text('{"torn": ')
    assert not job.done()
    job.path.write_text(json.dumps({"ok": 1}))
    assert job.done()

    from csae_bench.pipeline import run_jobs

    assert run_jobs([job], res=None)["skipped"] == 1  # never touches a model


# ---------------------------------------------------------------- capture


def test_token_table_rebuilds_features_and_checks_the_order():
    details = [{"feature_idx": 7, "n_tokens": 2, "effect": 1.5}, {"feature_idx": 3, "n_tokens": 0, "effect": None},
               {"feature_idx": 9, "n_tokens": 1, "effect": 4.0}]  # fmt: skip
    call = {"kl": np.array([1.0, 2.0, 4.0, 0.5, 0.5, 0.5]), "ctx": np.arange(6), "pos": np.arange(6),
            "edit_norm_sq": np.ones(6)}  # fmt: skip
    t = token_table(call, details)
    assert t["feature"] == [0, 0, 2] and t["kl"] == [1.0, 2.0, 4.0] and t["kl_control"] == [0.5] * 3
    details[0]["effect"] = 2.0
    with pytest.raises(CaptureError, match="mislabelled"):
        token_table(call, details)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("control", ["data", "feature"])
def test_capture_on_the_tiny_model_matches_the_public_nces(tiny_model, tiny_tokens, control):
    from helpers import random_sae

    from csae_bench.evals.nces import NCESEvalConfig
    from csae_bench.evals.nces.run import build_engine
    from csae_bench.studies.validity.capture import nces_with_tokens

    hook = "blocks.1.hook_resid_post"
    cfg = NCESEvalConfig(n_features=12, tokens_per_feature=3, n_bootstrap=20, n_frequency_strata=4,
                         hook_name=hook, control=control, compute_attribution=False)  # fmt: skip
    engine = build_engine(tiny_model, hook, tiny_tokens, cfg)
    out = nces_with_tokens(tiny_model, random_sae(), tiny_tokens, hook, cfg, "r", engine)
    n = sum(d["n_tokens"] for d in out["features"])
    assert n > 0 and len(out["tokens"]["kl"]) == n
    assert all(x >= 0 for x in out["tokens"]["edit_norm_sq"])
    pt = bs.nces_point(bs.NcesUnit.from_record(out))
    assert math.isclose(pt["nces"], out["metrics"]["nces_mean"], rel_tol=1e-6, abs_tol=1e-9)


def test_report_only_with_phase_writes_into_out_docs(tmp_path):
    from csae_bench.studies import main

    cfg = tiny_cfg()
    write_study(tmp_path, cfg)
    (tmp_path / "validity_config.json").write_text(json.dumps(cfg.__dict__))
    assert main("validity", ["--out", str(tmp_path), "--report-only", "--phase", "select"]) == 0
    assert "<!-- validity-results:start -->" in (tmp_path / "docs" / "validity.md").read_text()


def test_help_fits_80_columns_and_lists_each_study_and_the_validity_phase(capsys, monkeypatch):
    from csae_bench import cli

    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal's width
    for argv in (["study", "-h"], ["study", "validity", "-h"], ["run", "-h"], ["leaderboard", "-h"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
    out = capsys.readouterr().out
    assert "validity     The validity study (issue 14): do NCES" in out
    assert "ablation     The ablation study" in out and "--phase {select,confirm}" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    with pytest.raises(SystemExit) as exit_:
        cli.main(["study", "validity", "--out", "x", "--phase", "later"])
    assert exit_.value.code == 2 and "invalid choice: 'later'" in capsys.readouterr().err


def test_set_overrides_settings_with_their_types_and_bad_ones_exit_2(tmp_path, capsys):
    from csae_bench import cli
    from csae_bench.studies.harness import parse_settings

    got = parse_settings(
        ValidityConfig, ["n_features=128", "controls=data,feature", "probing=false"]
    )
    assert got == {"n_features": 128, "controls": ("data", "feature"), "probing": False}
    for bad, says in [
        (["--set", "n_feature=1"], "no such setting"),
        (["--set", "n_features=many"], "expected an integer"),
        (["--set", "n_features"], "write FIELD=VALUE"),
        (["--set", "snapshot_n_features=999"], "must not exceed n_features"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["study", "validity", "--out", str(tmp_path), *bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1


def test_selection_is_complete_when_its_records_exist_whatever_their_values(tmp_path):
    """Freezing the choice waits for the records, not for finite values: a constant series has an
    undefined Spearman (e.g. no probing task verified at any snapshot) and must not block it."""
    from csae_bench.studies.validity.report import selection_complete

    cfg = tiny_cfg()
    write_study(tmp_path, cfg)
    assert selection_complete(cfg, tmp_path)
    one = tmp_path / "layer6/seed1/records/nces_topk_data.json"
    rec = json.loads(one.read_text())
    one.unlink()
    assert not selection_complete(cfg, tmp_path)
    one.write_text(json.dumps({**rec, "metrics": {k: float("nan") for k in rec.get("metrics", {})}}))
    assert selection_complete(cfg, tmp_path)


def test_confirmation_tells_a_failed_set_from_an_incomplete_one():
    from csae_bench.studies.validity.summary import confirm

    def one(sep, reseed, mono):
        return {"metrics": [{"metric": "m", "checks": {"separation": sep, "reseed": reseed,
                                                       "monotonic": mono, "power": None}}]}  # fmt: skip

    sets = {"selection": one(True, True, True), "a": one(True, True, True),
            "b": one(True, None, True), "c": one(False, None, True)}  # fmt: skip
    c = confirm("m", sets)
    assert c["per_set"] == {"a": True, "b": None, "c": False} and c["confirmed"] is False
    assert confirm("m", {"selection": sets["a"], "a": sets["a"]})["confirmed"] is True

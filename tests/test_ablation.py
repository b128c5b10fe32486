"""The ablation report is computed from the study's records (no model needed)."""

from __future__ import annotations

import json

from csae_bench.studies.ablation import AblationConfig, summarize, write_report


def _nces(seed, sae, kind, mean, verified=0.0, feats=(0.1, 0.5, 0.9)):
    return {"seed": seed, "sae": sae, "intervention": kind, "seconds": 1.0,
            "metrics": {"nces_mean": mean, "frac_causally_verified": verified, "median_effect": 0.01},
            "features": [{"feature_idx": i, "nces": v + mean, "verified": False, "effect": 1.0, "control_effect": 1.0}
                         for i, v in enumerate(feats)]}


def _core(seed, sae, ce, l0=32.0):
    return {"seed": seed, "sae": sae, "seconds": 1.0, "training": {"wall_seconds": 2.0},
            "metrics": {"sparsity.l0": l0, "model_performance_preservation.ce_loss_score": ce,
                        "reconstruction_quality.explained_variance_mean_centred": 0.8, "misc_metrics.frac_alive": 1.0}}


def _records():
    nces, core = [], []
    for seed in (0, 1):
        for kind, gap in (("zero", 0.2), ("mean", 0.5)):
            nces += [_nces(seed, "topk", kind, 0.1 + gap), _nces(seed, "csae", kind, 0.15 + gap + 0.01 * seed),
                     _nces(seed, "random-decoder", kind, 0.1)]
        nces.append(_nces(seed, "csae-no-causal-term", "zero", 0.2))
        core += [_core(seed, "topk", 0.90), _core(seed, "csae", 0.89 + 0.01 * seed), _core(seed, "random-decoder", 0.5),
                 _core(seed, "csae-no-causal-term", 0.9)]
    return {"nces": nces, "core": core}


def test_summary_picks_the_type_with_the_largest_gap_over_the_null():
    cfg = AblationConfig(interventions=("zero", "mean"), variants={"csae-no-causal-term": {"causal_coeff": 0.0}})
    s = summarize(_records(), cfg)
    assert s["best"]["type"] == "mean"
    zero = next(r for r in s["types"] if r["type"] == "zero")
    assert abs(zero["separation"][0] - (0.2 + 0.25 + 0.2 + 0.26) / 4) < 1e-9  # trained minus null, per SAE and seed
    assert abs(zero["rank_vs_zero"][0] - 1.0) < 1e-9
    assert [round(x, 6) for x in s["verdict"]["nces_gain"]] == [0.05, 0.06]
    assert [round(x, 6) for x in s["verdict"]["ce_gain"]] == [-0.01, 0.0]


def test_report_is_written_with_plots(tmp_path):
    out = tmp_path / "study"
    for rec in _records()["nces"] + _records()["core"]:
        kind = rec.get("intervention")
        name = f"nces_{rec['sae']}_{kind}.json" if kind else f"core_{rec['sae']}.json"
        path = out / f"seed{rec['seed']}" / "evals" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec))
    cfg = AblationConfig(interventions=("zero", "mean"), variants={"csae-no-causal-term": {"causal_coeff": 0.0}})
    doc = write_report(out, tmp_path / "docs", cfg)
    text = doc.read_text()
    assert "**Best separation: `mean`**" in text and "csae-no-causal-term" in text
    assert (tmp_path / "docs" / "img" / "ablation_intervention_types.png").stat().st_size > 1000
    assert (tmp_path / "docs" / "img" / "ablation_causal_parts.png").exists()


def test_jobs_write_the_files_the_report_reads(tmp_path):
    from csae_bench.studies.ablation import jobs

    cfg = AblationConfig(seeds=(0,), interventions=("zero", "clamp:2"), variants={"csae-no-causal-term": {"causal_coeff": 0.0}})
    paths = [str(p.relative_to(tmp_path)) for job in jobs(cfg, tmp_path) for p in job.outputs()]
    assert paths == [
        "seed0/activations/manifest.json", "seed0/gradient_pool.safetensors", "seed0/main/trained.json",
        "seed0/csae-no-causal-term/trained.json",
        "seed0/evals/core_topk.json", "seed0/evals/core_csae.json", "seed0/evals/core_random-decoder.json",
        "seed0/evals/core_csae-no-causal-term.json",
        "seed0/evals/nces_topk_zero.json", "seed0/evals/nces_topk_clamp=2.json",
        "seed0/evals/nces_csae_zero.json", "seed0/evals/nces_csae_clamp=2.json",
        "seed0/evals/nces_random-decoder_zero.json", "seed0/evals/nces_random-decoder_clamp=2.json",
        "seed0/evals/nces_csae-no-causal-term_zero.json",
    ]


def test_report_only_writes_into_out_docs_by_default(tmp_path):
    from csae_bench.studies.ablation import main

    out = tmp_path / "study"
    for rec in _records()["nces"] + _records()["core"]:
        kind = rec.get("intervention")
        name = f"nces_{rec['sae']}_{kind}.json" if kind else f"core_{rec['sae']}.json"
        path = out / f"seed{rec['seed']}" / "evals" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec))
    assert main(["--out", str(out), "--report-only"]) == 0
    assert (out / "docs" / "ablations.md").is_file() and (out / "docs" / "img").is_dir()


def test_studies_are_found_and_dispatched_by_name(tmp_path):
    import pytest

    from csae_bench import studies
    from csae_bench.suite import SuiteError

    assert studies.names() == ["ablation", "csae_sweep", "validity"]
    with pytest.raises(SuiteError, match="studies: ablation, csae_sweep, validity"):
        studies.main("nope", ["--out", str(tmp_path)])

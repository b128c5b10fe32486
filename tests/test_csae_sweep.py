"""The CSAE sweep's bookkeeping: rows, paired comparison with TopK, and the generated report."""

from __future__ import annotations

import json

import pytest

from csae_bench.studies.csae_sweep import SweepConfig, load_records, summarize, write_report
from csae_bench.utils import atomic_write_json


def test_rows_cover_topk_every_coefficient_and_the_variants():
    rows = SweepConfig(coefficients=(10.0, 30.0), variants={"no verification": {"verify_every": 0}}).rows()
    assert rows == {"topk": ("topk", {}), "csae c=10": ("csae", {"causal_coeff": 10.0}),
                    "csae c=30": ("csae", {"causal_coeff": 30.0}),
                    "no verification": ("csae", {"verify_every": 0})}


def _write(out, seed, name, kl, ev=0.8):
    atomic_write_json(out / f"seed{seed}" / name.replace(" ", "_") / "record.json",
                      {"seed": seed, "name": name, "spliced_kl": kl, "explained_variance_mean_centred": ev,
                       "l0": 32.0, "dead_fraction_train": 0.2, "sae_seconds": 20.0})


def test_summary_pairs_each_seed_with_its_own_topk(tmp_path):
    _write(tmp_path, 0, "topk", 1.0)
    _write(tmp_path, 1, "topk", 2.0)
    _write(tmp_path, 0, "csae c=30", 0.9)   # -10% of its seed's TopK
    _write(tmp_path, 1, "csae c=30", 2.2)   # +10%
    rows = {r["name"]: r for r in summarize(load_records(tmp_path))}
    csae = rows["csae c=30"]
    assert csae["kl_vs_topk"][0] == pytest.approx(0.0, abs=1e-12)
    assert csae["kl_lower_on"] == 1 and csae["paired"] == 2
    assert csae["kl"][0] == pytest.approx(1.55)


def test_report_is_written_between_markers_and_keeps_the_prose(tmp_path):
    out, docs = tmp_path / "out", tmp_path / "docs"
    _write(out, 0, "topk", 1.2)
    _write(out, 0, "csae c=30", 1.0, ev=0.6)
    atomic_write_json(out / "sweep_config.json", {"seeds": [0], "coefficients": [30.0]})
    docs.mkdir()
    (docs / "csae.md").write_text("# CSAE\n\nProse before.\n\n<!-- sweep:start -->\nold\n<!-- sweep:end -->\n\nProse after.\n")
    page = write_report(out, docs)
    text = page.read_text()
    assert "Prose before." in text and "Prose after." in text and "old" not in text
    assert "| csae c=30 | 1.000 | -16.7% | 1/1 seeds | 0.600 |" in text
    assert (docs / "img" / "csae_kl_vs_ev.png").stat().st_size > 0
    json.loads((out / "sweep_config.json").read_text())  # untouched


def test_jobs_train_each_row_on_one_shared_stream(tmp_path):
    from csae_bench.pipeline import TrainJob
    from csae_bench.studies.csae_sweep import jobs

    cfg = SweepConfig(seeds=(0, 1), coefficients=(30.0,), variants={})
    work = jobs(cfg, tmp_path)
    paths = [str(p.relative_to(tmp_path)) for job in work for p in job.outputs()]
    assert paths == ["activations/manifest.json", "gradient_pool.safetensors",
                     "seed0/topk/trained.json", "seed0/topk/record.json",
                     "seed0/csae_c_30/trained.json", "seed0/csae_c_30/record.json",
                     "seed1/topk/trained.json", "seed1/topk/record.json",
                     "seed1/csae_c_30/trained.json", "seed1/csae_c_30/record.json"]
    trains = [j for j in work if isinstance(j, TrainJob)]
    assert {id(j.harvest) for j in trains} == {id(work[0])} and trains[1].settings["causal_coeff"] == 30.0


def test_report_only_writes_into_out_docs_by_default(tmp_path):
    from csae_bench.studies.csae_sweep import main

    _write(tmp_path, 0, "topk", 1.2)
    atomic_write_json(tmp_path / "sweep_config.json", {"seeds": [0], "coefficients": [30.0]})
    assert main(["--out", str(tmp_path), "--report-only"]) == 0
    assert "<!-- sweep:start -->" in (tmp_path / "docs" / "csae.md").read_text()

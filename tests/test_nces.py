"""The NCES eval: output format, sampling, scoring, bad input, and the score's sanity."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sae_bench.custom_saes.topk_sae import TopKSAE
from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file
from test_interventions import random_sae

from csae_bench.evals.nces import NCESEvalConfig, NCESEvalOutput, evaluate_sae, run_nces_eval
from csae_bench.evals.nces.output import SCHEMA_PATH, generate_schema
from csae_bench.evals.nces.sampling import stratified_features
from csae_bench.evals.nces.scoring import nces, score_feature, weighted_mean_ci
from csae_bench.interventions import InterventionError

HOOK = "blocks.1.hook_resid_post"


# Tiny ops on a shared 2-core machine run far faster on one thread (fixture in conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


def small_config(**kw) -> NCESEvalConfig:
    return NCESEvalConfig(**{"n_features": 24, "tokens_per_feature": 4, "n_bootstrap": 100,
                             "n_frequency_strata": 4, "hook_name": HOOK, **kw})


@pytest.fixture(scope="module")
def tiny_result(tiny_model, tiny_tokens, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("nces")
    res = run_nces_eval(tiny_model, {"topk_random": random_sae()}, tiny_tokens, small_config(), output_dir=out_dir)
    return res["topk_random"], out_dir / "topk_random_nces.json"


def test_output_validates_against_saebench_format(tiny_result):
    out, path = tiny_result
    validate_eval_output_format_file(str(path), NCESEvalOutput)
    data = json.loads(path.read_text())
    assert data["eval_type_id"] == "nces"
    assert data["eval_config"]["intervention"] == "zero" and data["eval_config"]["effect_window"] == 4
    assert len(data["eval_result_details"]) == out.eval_result_metrics.nces.n_features_sampled
    cost = out.eval_result_metrics.cost
    assert cost.n_interventions > 0 and cost.seconds_exact > 0 and cost.n_eval_tokens == 8 * 32


def test_schema_file_is_generated_and_current(tmp_path):
    fresh = generate_schema(tmp_path / "schema.json")
    assert json.loads(fresh.read_text()) == json.loads(SCHEMA_PATH.read_text()), (
        "eval_output_schema_nces.json is stale: run csae_bench.evals.nces.output.generate_schema()")


def test_existing_result_is_reused(tiny_model, tiny_tokens, tiny_result):
    out, path = tiny_result
    again = run_nces_eval(tiny_model, {"topk_random": random_sae()}, tiny_tokens, small_config(), output_dir=path.parent)
    assert again["topk_random"].eval_id == out.eval_id


def test_registered_with_headline_metrics():
    from csae_bench.evals.registry import EVALS

    spec = EVALS["nces"]
    assert spec.output_cls is NCESEvalOutput
    assert spec.headline["nces.nces_freq_weighted_mean"] == "higher"
    assert set(spec.headline) >= {"nces.nces_mean", "nces.frac_causally_verified", "attribution.attribution_spearman"}


def test_results_are_seeded(tiny_model, tiny_tokens, tiny_result):
    out, _ = tiny_result
    again = evaluate_sae(tiny_model, random_sae(), tiny_tokens, HOOK, small_config())
    a = [d.nces for d in out.eval_result_details]
    b = [d.nces for d in again.eval_result_details]
    assert a == b


def test_features_without_eligible_tokens_are_reported_not_scored(tiny_model, tiny_tokens):
    # W = 29 leaves only positions 1..2 of 32 able to carry an intervention
    out = evaluate_sae(tiny_model, random_sae(), tiny_tokens, HOOK, small_config(effect_window=29, n_features=40))
    m = out.eval_result_metrics.nces
    missing = [d for d in out.eval_result_details if d.status == "no_eligible_tokens"]
    assert missing and m.n_features_no_eligible_tokens == len(missing)
    assert all(d.nces is None and d.n_tokens == 0 and not d.causally_verified for d in missing)
    assert m.n_features_evaluated == len(out.eval_result_details) - len(missing)
    ok = [d.nces for d in out.eval_result_details if d.status == "ok"]
    w = [d.sampling_weight for d in out.eval_result_details if d.status == "ok"]
    assert math.isfinite(m.nces_mean) and m.nces_mean == pytest.approx(np.average(ok, weights=w))


def test_mismatched_sae_is_refused(tiny_model, tiny_tokens):
    with pytest.raises(InterventionError, match="d_in"):
        evaluate_sae(tiny_model, random_sae(d_in=32), tiny_tokens, HOOK, small_config())
    with pytest.raises(InterventionError, match="trained at"):
        evaluate_sae(tiny_model, random_sae(), tiny_tokens, "blocks.2.hook_resid_post", small_config())


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="valid"):
        NCESEvalConfig(intervention="ablate")
    with pytest.raises(ValueError, match="control"):
        NCESEvalConfig(control="gaussian")


def test_stratified_sampling_keeps_rare_features():
    freq = torch.cat([torch.full((1000,), 0.2), torch.full((10,), 1e-4), torch.zeros(5)])
    s = stratified_features(freq, 20, 4, torch.Generator().manual_seed(0))
    assert s.n_alive == 1010 and len(s.feature_idx) == 20
    assert ((s.feature_idx >= 1000) & (s.feature_idx < 1010)).sum() >= 5  # rare ones are in
    assert not (s.feature_idx >= 1010).any()  # dead ones are not
    assert s.weight.sum().item() == pytest.approx(1010)


def test_feature_score_and_bootstrap():
    rng = np.random.default_rng(0)
    E, R = rng.uniform(0.5, 1.0, 8), rng.uniform(0.0, 0.1, 8)
    s = score_feature(E, R, 500, 0.95, rng)
    assert s.nces == pytest.approx((E.mean() - R.mean()) / (E.mean() + R.mean()))
    assert s.ci_low <= s.nces <= s.ci_high and s.ci_low > 0.5
    assert score_feature(np.zeros(3), np.zeros(3), 100, 0.95, rng) is None  # undefined, not 0
    assert np.isnan(nces(0.0, 0.0))
    vals, w = np.array([0.1, 0.5, 0.9]), np.array([1.0, 1.0, 2.0])
    mean, lo, hi = weighted_mean_ci(vals, w, np.array([0, 0, 1]), 200, 0.9, rng)
    assert mean == pytest.approx(0.6) and lo <= mean <= hi


# ------------------------------------------------------------------ the score's sanity (embedded)


def quick_topk_sae(acts: torch.Tensor, d_sae: int = 512, k: int = 16, steps: int = 300, seed: int = 0) -> TopKSAE:
    """A TopK SAE trained for a few seconds on normalized activations, folded back to raw scale
    (TopK/ReLU are positively homogeneous, so only b_enc and b_dec change)."""
    g = torch.Generator().manual_seed(seed)
    mu = acts.mean(0)
    scale = acts.shape[1] ** 0.5 / (acts - mu).norm(dim=1).mean()
    z = (acts - mu) * scale
    sae = TopKSAE(acts.shape[1], d_sae, k, "embedded", 6, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        W = z[torch.randperm(len(z), generator=g)[:d_sae]]
        W = W / W.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for _ in range(steps):
        x = z[torch.randint(len(z), (256,), generator=g)]
        loss = ((sae(x) - x) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
    with torch.no_grad():
        sae.b_enc.div_(scale)
        sae.b_dec.copy_(mu + sae.b_dec / scale)
    return sae


@pytest.mark.slow
def test_trained_features_beat_random_decoder(embedded_model):
    from csae_bench.data import load_tokens
    from csae_bench.evals.nces.run import build_engine
    from csae_bench.training.activations import harvest_activations

    hook = "blocks.6.hook_resid_post"
    train = load_tokens(embedded_model.tokenizer, split="train", context_size=64, n_contexts=48)
    acts = harvest_activations(embedded_model, hook, train, show_progress=False)
    trained = quick_topk_sae(acts)
    fvu = ((trained(acts) - acts) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    assert fvu < 0.3
    random_decoder = quick_topk_sae(acts)
    with torch.no_grad():  # same encoder (same tokens, same activations), random directions
        W = torch.randn(512, 640, generator=torch.Generator().manual_seed(1))
        random_decoder.W_dec.copy_(W / W.norm(dim=1, keepdim=True))
    ev = load_tokens(embedded_model.tokenizer, split="eval", context_size=64, n_contexts=8)
    cfg = NCESEvalConfig(n_features=24, tokens_per_feature=4, effect_window=2, n_bootstrap=200,
                         n_frequency_strata=4, hook_name=hook, compute_attribution=False)
    engine = build_engine(embedded_model, hook, ev, cfg)
    good = evaluate_sae(embedded_model, trained, ev, hook, cfg, "trained", engine).eval_result_metrics.nces
    rand = evaluate_sae(embedded_model, random_decoder, ev, hook, cfg, "random", engine).eval_result_metrics.nces
    # random directions: ≈ 0 (24 features x 4 tokens: a loose tolerance)
    assert abs(rand.nces_mean) < 0.15, f"random directions should score ≈ 0, got {rand.nces_mean:.3f}"
    assert abs(rand.nces_freq_weighted_mean) < 0.25
    # trained features (frequency-weighted headline; rare features of a 300-step SAE are barely trained)
    assert good.nces_freq_weighted_mean > rand.nces_freq_weighted_mean + 0.25, (
        f"trained {good.nces_freq_weighted_mean:.3f} vs random {rand.nces_freq_weighted_mean:.3f}")
    assert good.nces_freq_weighted_mean_ci_low > 0


def test_runs_through_the_registry(tiny_model, tiny_tokens):
    from csae_bench.evals.registry import EVALS, EvalContext

    spec = EVALS["nces"]
    ctx = EvalContext(model=tiny_model, hook_name=HOOK, eval_tokens=tiny_tokens, seed=3, model_name="tiny")
    cfg = spec.make_config(ctx, {"n_features": 8, "tokens_per_feature": 2, "n_bootstrap": 50})
    assert cfg.hook_name == HOOK and cfg.random_seed == 3 and cfg.model_name == "tiny"
    a = spec.run(ctx, random_sae(), "a", cfg)
    b = spec.run(ctx, random_sae(seed=1), "b", cfg)  # reuses the clean pass cached in ctx.cache
    assert sum(isinstance(k, tuple) and k[0] == "nces_engine" for k in ctx.cache) == 1
    assert a.sae_lens_id == "a" and b.eval_result_metrics.nces.n_features_sampled == 8

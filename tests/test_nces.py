"""The NCES eval: output format, sampling, scoring, bad input, and the score's sanity."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import random_sae
from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

from csae_bench.evals.nces import NCESEvalConfig, NCESEvalOutput, evaluate_sae, run_nces_eval
from csae_bench.evals.nces.output import SCHEMA_PATH, generate_schema
from csae_bench.evals.nces.sampling import ActiveTokens, sample_tokens, stratified_features
from csae_bench.evals.nces.scoring import nces, score_feature
from csae_bench.interventions import InterventionError
from csae_bench.stats import weighted_mean_ci

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
    assert data["sae_bench_commit_hash"].startswith("sae-bench==") and "csae_bench_commit_hash" in data
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
    assert next(iter(spec.headline)) == "nces.nces_mean" and spec.headline["nces.nces_mean"] == "higher"
    assert set(spec.headline) >= {"nces.nces_freq_weighted_mean", "nces.frac_causally_verified",
                                  "attribution.attribution_spearman"}


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
    with pytest.raises(ValueError, match="token_sampling='positional': use one of uniform, position"):
        NCESEvalConfig(token_sampling="positional")


def test_stratified_sampling_keeps_rare_features():
    freq = torch.cat([torch.full((1000,), 0.2), torch.full((10,), 1e-4), torch.zeros(5)])
    s = stratified_features(freq, 20, 4, torch.Generator().manual_seed(0))
    assert s.n_alive == 1010 and len(s.feature_idx) == 20
    assert ((s.feature_idx >= 1000) & (s.feature_idx < 1010)).sum() >= 5  # rare ones are in
    assert not (s.feature_idx >= 1010).any()  # dead ones are not
    assert s.weight.sum().item() == pytest.approx(1010)
    few = stratified_features(freq, 3, 8, torch.Generator().manual_seed(0))  # fewer than strata
    assert len(few.feature_idx) == 3 and few.weight.sum().item() == pytest.approx(1010)


def _one_feature(positions) -> ActiveTokens:
    pos = torch.tensor(positions)
    zero = torch.zeros_like(pos)
    return ActiveTokens(zero, pos, zero, torch.tensor([0, len(pos)]))


def test_position_sampling_spreads_tokens_and_keeps_every_token_equally_likely():
    active, feature = _one_feature(list(range(1, 101))), torch.tensor([0])
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):  # one token from each quarter of the positions, every draw
        _, _, pos, _ = sample_tokens(active, feature, 4, gen, by_position=True)
        assert sorted(((pos - 1) // 25).tolist()) == [0, 1, 2, 3]
    counts = torch.zeros(101)
    for _ in range(2000):
        counts[sample_tokens(active, feature, 4, gen, by_position=True)[2]] += 1
    assert counts[1:].min() > 40 and counts[1:].max() < 120  # each of 100 tokens: ~80 (4/100)
    uniform = [sample_tokens(active, feature, 4, gen)[2] for _ in range(200)]
    assert any(((p - 1) // 25).unique().numel() < 4 for p in uniform)  # uniform may cluster


def test_position_sampling_takes_every_token_of_a_rare_feature():
    _, _, pos, owner = sample_tokens(_one_feature([9, 3, 7]), torch.tensor([0]), 4,
                                     torch.Generator().manual_seed(0), by_position=True)
    assert sorted(pos.tolist()) == [3, 7, 9] and owner.tolist() == [0, 0, 0]


def test_position_sampling_runs_end_to_end(tiny_model, tiny_tokens):
    out = evaluate_sae(tiny_model, random_sae(), tiny_tokens, HOOK, small_config(token_sampling="position"))
    assert out.eval_config.token_sampling == "position"
    assert math.isfinite(out.eval_result_metrics.nces.nces_mean)


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


# ------------------------------------------------------------------ the score's sanity (planted)

D_PLANTED, N_READ = 32, 4
"""The planted model's residual width and the dimension of the subspace its later layers read."""


@pytest.fixture(scope="module")
def planted():
    """A tiny float64 model whose layers after ``blocks.0`` and unembedding read only a 4-dim
    subspace of the residual (the other 28 dims are ignored by construction: every weight that reads
    the residual is projected onto the read subspace; no normalization layers mix them back in), and
    a ReLU SAE whose 32 features are exactly an orthonormal basis split into 4 read and 28 ignored
    directions. Known answer: an edit along an ignored direction changes no logit (its effect is
    zero up to float64 rounding of the projection, ~1e-16); an edit along a read direction moves
    the output."""
    from sae_bench.custom_saes.relu_sae import ReluSAE
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    f64 = torch.float64
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=D_PLANTED, n_ctx=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=64,
        act_fn="relu", normalization_type=None, positional_embedding_type="standard", seed=0,
        device="cpu", dtype=f64)
    torch.manual_seed(0)
    model = HookedTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(D_PLANTED, D_PLANTED, generator=gen, dtype=f64))
    reads = Q[:, :N_READ] @ Q[:, :N_READ].T  # projector onto the read subspace
    with torch.no_grad():
        for block in model.blocks[1:]:
            for W in (block.attn.W_Q, block.attn.W_K, block.attn.W_V):
                W.copy_(torch.einsum("de,hef->hdf", reads, W))
            block.mlp.W_in.copy_(reads @ block.mlp.W_in)
        model.unembed.W_U.copy_(4 * reads @ model.unembed.W_U)  # x4: effects well above 1e-3
    sae = ReluSAE(D_PLANTED, D_PLANTED, "planted", 0, torch.device("cpu"), f64)
    with torch.no_grad():
        sae.W_dec.copy_(Q.T)
        sae.W_enc.copy_(Q)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    tokens = torch.randint(0, 64, (8, 32), generator=gen)
    return model, sae, tokens


@pytest.mark.parametrize("control", ["data", "feature", "isotropic"])
def test_nces_ranks_planted_read_directions_above_ignored_ones(planted, control):
    """The engine and NCES must tell a direction the model reads from one it ignores, by margins
    far larger than float rounding (float64 throughout, so no CPU's kernels decide the outcome).

    Margins: a read feature's effect is ≥ 1e-3 nats (measured 1.5e-3..1.3e-2) where an ignored one's
    is ≤ 1e-12 (exactly 0 in exact arithmetic, ~1e-16 measured). With the isotropic control a random
    unit edit puts ~4/32 of its energy in the read subspace, so a read feature's NCES is ≈ 0.78
    (measured 0.70..0.85; asserted ≥ 0.5); the data control (differences of random tokens'
    residuals, about as spread over the 32 dims here) gives 0.79..0.91 (asserted ≥ 0.5); with the
    other-feature control its control is almost always an ignored direction, NCES ≈ 1 (asserted
    ≥ 0.5). An ignored feature scores −1 (its
    control moves the output, it does not) or is not scored (neither moves it), never above −0.99."""
    model, sae, tokens = planted
    hook = "blocks.0.hook_resid_post"
    cfg = NCESEvalConfig(n_features=D_PLANTED, tokens_per_feature=8, n_bootstrap=100,
                         n_frequency_strata=1, hook_name=hook, control=control,
                         compute_attribution=False)
    out = evaluate_sae(model, sae, tokens, hook, cfg, "planted")
    details = {d.feature_idx: d for d in out.eval_result_details}
    assert sorted(details) == list(range(D_PLANTED))  # every feature sampled and active somewhere
    read = [details[i] for i in range(N_READ)]
    ignored = [details[i] for i in range(N_READ, D_PLANTED)]
    assert all(d.status == "ok" and d.effect >= 1e-3 for d in read), [d.effect for d in read]
    assert all(d.nces >= 0.5 for d in read), [d.nces for d in read]
    for d in ignored:
        assert d.effect is None or d.effect <= 1e-12, (d.feature_idx, d.effect)
        assert d.nces is None or d.nces <= -0.99, (d.feature_idx, d.nces)
        assert not d.causally_verified
    scored = [d for d in ignored if d.nces is not None]
    assert len(scored) >= N_READ  # the ranking is tested on real scores, not only on Nones
    assert min(d.nces for d in read) - max(d.nces for d in scored) >= 1.49


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

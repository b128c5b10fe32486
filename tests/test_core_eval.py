"""SAEBench's core eval driven offline, and the labelled mean-centred explained variance."""

from __future__ import annotations

import pytest
import torch
from helpers import random_tokens
from sae_bench.custom_saes.relu_sae import ReluSAE
from sae_bench.evals.core.eval_output import CoreEvalOutput
from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

from csae_bench.activations.harvest import harvest_activations
from csae_bench.evals.core import CsaeCoreEvalOutput
from csae_bench.evals.registry import EvalContext, get_eval
from csae_bench.provenance import git_commit
from csae_bench.reporting.results import flat_metrics

HOOK = "blocks.2.hook_resid_post"


def _relu_sae(d_in: int, d_sae: int, seed: int = 0) -> ReluSAE:
    torch.manual_seed(seed)
    sae = ReluSAE(d_in, d_sae, "tiny", 2, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, d_in), dim=1))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


@pytest.fixture(scope="module")
def ctx(tiny_model):
    toks = random_tokens(16, 32, seed=1)
    return EvalContext(tiny_model, HOOK, toks, model_name="tiny", extra={"sae_release": "test-release"})


def test_core_output_validates_against_saebench_and_ours(ctx, tmp_path):
    spec = get_eval("core")
    out = spec.run(ctx, _relu_sae(64, 256), "relu-d256-s0", spec.make_config(ctx, {"batch_size_prompts": 8}))
    path = tmp_path / "core.json"
    out.to_json_file(str(path))
    validate_eval_output_format_file(str(path), CoreEvalOutput)
    validate_eval_output_format_file(str(path), CsaeCoreEvalOutput)
    flat = flat_metrics({k: vars(v) for k, v in vars(out.eval_result_metrics).items()})
    for metric in spec.headline:
        assert metric in flat and flat[metric] == flat[metric], metric  # present and not NaN
    assert out.sae_lens_id == "relu-d256-s0" and out.sae_lens_release_id == "test-release"
    # the envelope: SAEBench's version in SAEBench's field, our commit in our own
    assert out.sae_bench_commit_hash.startswith("sae-bench==")
    assert out.csae_bench_commit_hash == git_commit()
    assert len(out.eval_result_details) == 256
    # 16 contexts of 32 tokens in batches of 8: one reconstruction batch, two sparsity batches.
    assert out.eval_result_metrics.token_stats.total_tokens_eval_sparsity_variance == 16 * 32


def test_mean_centred_ev_matches_its_definition_on_harvested_activations(ctx):
    """Against an independent computation (sklearn's variance-weighted R², which is exactly
    1 - Σ‖x - x̂‖² / Σ‖x - mean x‖²) on the same non-BOS tokens."""
    from sklearn.metrics import r2_score

    from csae_bench.evals.core.main import mean_centred_explained_variance

    sae = _relu_sae(64, 256)
    acts_ND = harvest_activations(ctx.model, HOOK, ctx.eval_tokens, show_progress=False, drop_bos=False)
    keep = (ctx.eval_tokens != 2).flatten()
    x = acts_ND[keep]
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    expected = r2_score(x.double().numpy(), x_hat.double().numpy(), multioutput="variance_weighted")
    got = mean_centred_explained_variance(sae, ctx.model, HOOK, ctx.eval_tokens, {2})
    assert got == pytest.approx(expected, abs=1e-6)


def test_predicting_the_mean_scores_zero_mean_centred_but_not_saebench(ctx):
    """An SAE whose output is the mean activation explains no variance: the mean-centred EV is 0;
    SAEBench 0.6's explained_variance (spread around ~zero) credits it — hence both, labelled."""
    spec = get_eval("core")
    sae = _relu_sae(64, 256)
    acts = harvest_activations(ctx.model, HOOK, ctx.eval_tokens, show_progress=False, drop_bos=False)
    acts = acts[(ctx.eval_tokens != 2).flatten()]  # the tiny model has no tokenizer: drop BOS here
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.fill_(-1.0)  # no feature ever fires: x_hat = b_dec
        sae.b_dec.copy_(acts.mean(0))
    out = spec.run(ctx, sae, "mean-sae", spec.make_config(ctx, {"batch_size_prompts": 8}))
    rq = out.eval_result_metrics.reconstruction_quality
    assert out.eval_result_metrics.sparsity.l0 == 0
    assert rq.explained_variance_mean_centred == pytest.approx(0.0, abs=1e-5)
    assert rq.explained_variance > 1e-3  # (0.02 here; on real residual streams, with a large mean, far more)


def test_core_failure_raises(ctx):
    spec = get_eval("core")
    sae = _relu_sae(64, 256)
    sae.cfg.hook_name = "blocks.1.hook_resid_post"
    with pytest.raises(ValueError, match="reads blocks.1.hook_resid_post"):
        spec.run(ctx, sae, "wrong-hook", spec.make_config(ctx, {}))


def test_sae_independent_passes_are_computed_once_and_change_no_metric(ctx):
    """SharedPasses: the clean and zero-ablated passes of SAEBench's get_recons_loss are remembered
    in the run's shared cache; a second SAE reuses them and gets exactly the metrics it gets alone."""
    import dataclasses

    spec = get_eval("core")
    cfg = spec.make_config(ctx, {"batch_size_prompts": 8})
    alone = [spec.run(dataclasses.replace(ctx, cache={}), _relu_sae(64, 256, seed=s), f"s{s}", cfg) for s in (0, 1)]
    shared_ctx = dataclasses.replace(ctx, cache={})
    first = spec.run(shared_ctx, _relu_sae(64, 256, seed=0), "s0", cfg)
    passes = {k: v for k, v in shared_ctx.cache.items() if isinstance(k, tuple) and k[:1] == ("core_pass",)}
    assert sorted({k[2] for k in passes}) == ["clean", "residual", "zero_ablated"]
    second = spec.run(shared_ctx, _relu_sae(64, 256, seed=1), "s1", cfg)
    after = {k: v for k, v in shared_ctx.cache.items() if isinstance(k, tuple) and k[:1] == ("core_pass",)}
    assert after.keys() == passes.keys() and all(after[k] is passes[k] for k in passes)  # reused, not recomputed
    for solo, shared in zip(alone, (first, second)):
        for category in ("model_behavior_preservation", "model_performance_preservation", "reconstruction_quality",
                         "sparsity"):
            assert vars(getattr(solo.eval_result_metrics, category)) == vars(getattr(shared.eval_result_metrics, category))
    assert vars(alone[0].eval_result_metrics.model_performance_preservation) != vars(
        alone[1].eval_result_metrics.model_performance_preservation)  # the SAE-dependent pass did run


# ---------------------------------------------------------------- non-finite SAEs and metrics


def test_nan_decoder_row_fails_the_eval_naming_the_sae(ctx):
    """One NaN decoder row: SAEBench would turn every reconstruction metric into its -1 sentinel
    (an mse of -1 ranks first); the eval refuses the SAE before SAEBench runs, naming it."""
    from csae_bench.evals.core.main import NonFiniteSAEError

    spec = get_eval("core")
    sae = _relu_sae(64, 256)
    with torch.no_grad():
        sae.W_dec[7] = float("nan")
    with pytest.raises(NonFiniteSAEError, match=r"SAE nan-row-sae has NaN or infinite weights \(W_dec\)"):
        spec.run(ctx, sae, "nan-row-sae", spec.make_config(ctx, {"batch_size_prompts": 8}))


def test_overflowing_reconstruction_fails_the_eval_naming_the_sae(ctx):
    """Finite weights, infinite output: feature 0 always fires (bias 10, activations ≥ 10) and its
    decoder row is 3e38, so x_hat overflows float32 on every token — refused, SAE named."""
    from csae_bench.evals.core.main import NonFiniteSAEError

    spec = get_eval("core")
    sae = _relu_sae(64, 256)
    with torch.no_grad():
        sae.W_enc[:, 0] = 0.0
        sae.b_enc[0] = 10.0
        sae.W_dec[0] = 3e38
    with pytest.raises(NonFiniteSAEError, match=r"SAE overflow-sae reconstructs 256 of 256 eval activations"):
        spec.run(ctx, sae, "overflow-sae", spec.make_config(ctx, {"batch_size_prompts": 8}))


def test_non_finite_metric_is_kept_non_finite_and_written_as_standard_json(ctx, tmp_path, monkeypatch):
    """A finite SAE whose metrics SAEBench computes as -inf / NaN (the random decoder's
    log(softmax) underflow on Gemma-3): not replaced by SAEBench's -1, named in
    eval_result_unstructured, written as the strings "-inf"/"nan" — standard JSON that validates
    against SAEBench's and our class and reads back as the same non-finite floats."""
    import json

    from pydantic import TypeAdapter

    from csae_bench.evals.core import main as core_main
    from csae_bench.utils import eval_output_json

    real = core_main.sb_core.run_evals

    def underflowing_run_evals(*args, **kwargs):
        metrics, features = real(*args, **kwargs)
        metrics["model_behavior_preservation"]["kl_div_with_sae"] = float("inf")
        metrics["model_behavior_preservation"]["kl_div_score"] = float("-inf")
        metrics["shrinkage"]["relative_reconstruction_bias"] = float("nan")
        return metrics, features

    monkeypatch.setattr(core_main.sb_core, "run_evals", underflowing_run_evals)
    spec = get_eval("core")
    out = spec.run(ctx, _relu_sae(64, 256), "underflow", spec.make_config(ctx, {"batch_size_prompts": 8}))
    mbp = out.eval_result_metrics.model_behavior_preservation
    assert mbp.kl_div_score == float("-inf") and mbp.kl_div_with_sae == float("inf")
    assert out.eval_result_metrics.shrinkage.relative_reconstruction_bias != -1
    assert out.eval_result_unstructured["non_finite_metrics"] == {
        "model_behavior_preservation.kl_div_with_sae": "inf",
        "model_behavior_preservation.kl_div_score": "-inf",
        "shrinkage.relative_reconstruction_bias": "nan",
    }
    text = eval_output_json(out)
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["eval_result_metrics"]["model_behavior_preservation"]["kl_div_score"] == "-inf"
    assert data["eval_result_metrics"]["shrinkage"]["relative_reconstruction_bias"] == "nan"
    path = tmp_path / "core.json"
    path.write_text(text)
    validate_eval_output_format_file(str(path), CoreEvalOutput)
    validate_eval_output_format_file(str(path), CsaeCoreEvalOutput)
    back = TypeAdapter(CsaeCoreEvalOutput).validate_json(text)
    assert back.eval_result_metrics.model_behavior_preservation.kl_div_score == float("-inf")


def test_upstream_per_sae_user_warnings_are_silenced_only_there(ctx, monkeypatch):
    """SAELens's "fewer samples (16) than … training configuration" and torch's "To copy
    construct from a tensor" come once per SAE and cannot be acted on: filtered around the
    upstream calls only (without the filter the same run shows both)."""
    import contextlib
    import warnings

    from csae_bench.evals.core import main as core_main

    spec = get_eval("core")
    cfg = spec.make_config(ctx, {"batch_size_prompts": 8})

    def user_warnings() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            spec.run(ctx, _relu_sae(64, 256), "quiet", cfg)
        return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]

    upstream = ("The training dataset contains fewer samples", "To copy construct from a tensor")
    assert not [m for m in user_warnings() if m.startswith(upstream)]
    monkeypatch.setattr(core_main, "quiet_upstream_warnings", contextlib.nullcontext)
    shown = user_warnings()
    assert all(any(m.startswith(u) for m in shown) for u in upstream)
    with warnings.catch_warnings(record=True) as caught:  # the filter is not left installed
        warnings.simplefilter("always")
        warnings.warn("To copy construct from a tensor, elsewhere", UserWarning, stacklevel=1)
    assert len(caught) == 1


@pytest.mark.integration  # loads the embedded model through the CLI
def test_nan_row_gemma3_sae_folder_exits_2_naming_it(tmp_path, caplog):
    """Issue 17.2 as reported: an SAELens 6 folder for google/gemma-3-270m blocks.6.hook_resid_post
    (d_in 640, d_sae 256, random weights, one NaN decoder row) run through the CLI on the embedded
    model: the job fails naming the SAE; no result file, no leaderboard row."""
    from helpers import write_saelens6_folder

    from csae_bench.run import main

    saes = tmp_path / "saes"
    write_saelens6_folder(saes / "gemma3-nan", 640, 256, "blocks.6.hook_resid_post", "google/gemma-3-270m", nan_row=0)
    out = tmp_path / "out"
    assert main(["--saes", str(saes), "--evals", "core", "--layer", "6", "--out", str(out), "--no-plots"]) == 2
    assert "SAE gemma3-nan has NaN or infinite weights" in caplog.text
    assert not list(out.rglob("*_eval_results.json"))

"""Eval overhead: NCES vs SAEBench core for the same SAE on the same eval tokens (target:
NCES <= 2x core), and how NCES cost grows.

Group ``evals``: both evals through the registry, as ``python -m csae_bench.run`` calls them, on
the session's TopK SAE (d_sae 2048, k 32) and 8 x 128 eval tokens. ``small`` = the CI smoke
suite's settings (evals/smoke.toml); ``default`` = the evals' defaults (what the default run does;
NCES: 128 features x 8 tokens, about 10 minutes on 2 CPU cores) and runs only with
``CSAE_BENCH_DEFAULT_EVALS=1``. NCES time includes its clean pass and attribution. ``test_bench_eval_core_dtype``: core at the
small settings with the model loaded in float32 and in bfloat16 (what ``--dtype auto`` runs core in
on a CPU with native bf16 matmuls; NCES's engine stays float32, docs/precision.md), each after a
warm-up round, so that neither pays the session's first-eval setup.

Group ``nces-scaling``: the NCES eval (exact effects only, no attribution) with one factor changed
at a time from a base of 8 features x 4 tokens, W = 4, 8 x 128 tokens, d_sae 2048: the number of
features, the context length and d_sae (W: the engine benchmark's ``window`` group)."""

from __future__ import annotations

import os

import pytest

HOOK = "blocks.6.hook_resid_post"
ONCE = dict(rounds=1, iterations=1, warmup_rounds=0)
SETTINGS = {
    "small": {"core": {"batch_size_prompts": 2, "n_eval_reconstruction_batches": 1,
                       "n_eval_sparsity_variance_batches": 2},
              "nces": {"n_features": 8, "tokens_per_feature": 4, "n_contexts": 4, "n_bootstrap": 200}},
    "default": {"core": {}, "nces": {}},
}
needs_default = pytest.mark.skipif(not os.environ.get("CSAE_BENCH_DEFAULT_EVALS"),
                                   reason="default-settings evals take ~10 min; set CSAE_BENCH_DEFAULT_EVALS=1")


def _context(model, tokens):
    from csae_bench.evals.registry import EvalContext

    return EvalContext(model=model, hook_name=HOOK, eval_tokens=tokens, model_name="embedded")


def _run_eval(name: str, model, tokens, sae, overrides: dict):
    from csae_bench.evals.registry import get_eval

    spec = get_eval(name)
    ctx = _context(model, tokens)  # a fresh context: no clean pass cached from an earlier round
    return spec.run(ctx, sae, "bench", spec.make_config(ctx, dict(overrides)))


@pytest.mark.benchmark(group="evals")
@pytest.mark.parametrize("settings", ["small", pytest.param("default", marks=needs_default)])
@pytest.mark.parametrize("eval_name", ["core", "nces"])
def test_bench_eval(benchmark, model, eval_tokens, trained_sae, eval_name, settings):
    overrides = SETTINGS[settings][eval_name]
    out = benchmark.pedantic(_run_eval, args=(eval_name, model, eval_tokens, trained_sae, overrides), **ONCE)
    benchmark.extra_info.update(eval=eval_name, settings=settings, overrides=overrides,
                                eval_tokens=int(eval_tokens.numel()))
    if eval_name == "nces":
        cost = out.eval_result_metrics.cost
        benchmark.extra_info.update(interventions=cost.n_interventions, seconds_exact=cost.seconds_exact,
                                    seconds_attribution=cost.seconds_attribution)


@pytest.mark.benchmark(group="evals-dtype")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bench_eval_core_dtype(benchmark, models, eval_tokens, trained_sae, dtype):
    overrides = SETTINGS["small"]["core"]
    benchmark.pedantic(_run_eval, args=("core", models[dtype], eval_tokens, trained_sae, overrides),
                       rounds=1, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(eval="core", settings="small", overrides=overrides, dtype=dtype,
                                eval_tokens=int(eval_tokens.numel()))


@pytest.fixture(scope="module")
def small_sae(model, activation_source, heldout_acts, tmp_path_factory):
    """A TopK SAE of d_sae 512 on the same stream (the d_sae scaling point)."""
    from csae_bench.architectures.export import load_base_sae
    from csae_bench.training import TrainConfig, train_alongside

    cfg = TrainConfig.from_flat(architectures=("topk",), d_sae=512, train_tokens=16_384, batch_size=512, hook_name=HOOK,
                      checkpoint_every=0, show_progress=False, context_size=128)
    return load_base_sae(train_alongside(model, activation_source, cfg, tmp_path_factory.mktemp("sae512"),
                                         heldout_acts=heldout_acts)["topk"])


SCALING = {
    "base": {},
    "features=2x": {"n_features": 16},
    "context=32": {"context": 32},
    "d_sae=512": {"d_sae": 512},
}
"""Scaling row -> what changes from the base (8 features x 4 tokens, W 4, context 128, d_sae 2048)."""


@pytest.mark.benchmark(group="nces-scaling")
@pytest.mark.parametrize("row", list(SCALING))
def test_bench_nces_scaling(benchmark, request, model, eval_tokens, trained_sae, row):
    from csae_bench.evals.nces import NCESEvalConfig, evaluate_sae

    change = dict(SCALING[row])
    tokens = eval_tokens[:, : change.pop("context", eval_tokens.shape[1])]
    sae = request.getfixturevalue("small_sae") if change.pop("d_sae", None) else trained_sae
    config = NCESEvalConfig(hook_name=HOOK, **{"n_features": 8, "tokens_per_feature": 4, "n_bootstrap": 100,
                                               "compute_attribution": False, **change})
    out = benchmark.pedantic(evaluate_sae, args=(model, sae, tokens, HOOK, config), **ONCE)
    cost = out.eval_result_metrics.cost
    benchmark.extra_info.update(row=row, interventions=cost.n_interventions, seconds_exact=cost.seconds_exact,
                                context=int(tokens.shape[1]), d_sae=int(sae.W_dec.shape[0]),
                                window=config.effect_window, n_features=config.n_features)

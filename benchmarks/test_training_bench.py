"""Training overhead of causal verification, side by side on the same tokens (DESIGN §9: CSAE
training wall time <= 1.3x TopK).

Group ``training``: every architecture trained alone on the same cached activation stream
(``TRAIN_TOKENS`` tokens, 64 steps of 512, d_sae 2048, k / target L0 32, one thread budget shared
by the machine), and the CSAE with each causal part switched on and off. The gradient pool the
CSAE's causal term and verification read is a one-off harvest shared by every CSAE of a run;
it is timed on its own (``gradient-pool``) so the report can show the ratio with and without it.
``extra_info["sae_seconds"]`` is the trainer's own per-SAE time (``training_summary.json``), which
excludes normalization and saving.
"""

from __future__ import annotations

import json
import math

import pytest

HOOK = "blocks.6.hook_resid_post"
TRAIN_TOKENS = 32_768  # as the activation_source fixture (benchmarks/conftest.py)

ROUNDS = dict(rounds=3, iterations=1, warmup_rounds=0)
VERIFY_EVERY = 16
"""Verification every 16 of the 64 steps (4 checks): denser than the default run's 1 in 50."""

VARIANTS = {
    "relu": ("relu", {}),
    "topk": ("topk", {}),
    "jumprelu": ("jumprelu", {}),
    "csae-plain": ("csae", {"causal_coeff": 0.0, "verify_every": 0}),
    "csae-causal-term": ("csae", {"verify_every": 0}),
    "csae-per-token-term": ("csae", {"verify_every": 0, "fisher": "per-token"}),
    "csae-verification": ("csae", {"causal_coeff": 0.0}),
    "csae-full": ("csae", {}),
}
"""Benchmark row -> (architecture, TrainConfig overrides); CSAE rows switch its causal parts."""


@pytest.fixture(scope="module")
def gradient_pool(model, train_tokens):
    from csae_bench.activations.gradient_pool import harvest_gradient_pool

    return harvest_gradient_pool(model, HOOK, train_tokens[: math.ceil(1024 / 127)], n_samples=4, seed=0,
                                 show_progress=False)


def _config(arch: str, overrides: dict):
    from csae_bench.training import TrainConfig

    return TrainConfig.from_flat(architectures=(arch,), train_tokens=TRAIN_TOKENS, batch_size=512, hook_name=HOOK,
                       checkpoint_every=0, show_progress=False, context_size=128,
                       **{"verify_every": VERIFY_EVERY, **overrides})


@pytest.mark.benchmark(group="training")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bench_training(benchmark, model, activation_source, heldout_acts, gradient_pool, tmp_path, variant):
    from csae_bench.training import train_alongside

    arch, overrides = VARIANTS[variant]
    cfg = _config(arch, overrides)
    counter = iter(range(100))

    def setup():
        return (model, activation_source, cfg, tmp_path / f"round{next(counter)}"), {
            "gradient_pool": gradient_pool, "heldout_acts": heldout_acts}

    folders = benchmark.pedantic(train_alongside, setup=setup, **ROUNDS)
    summary = json.loads((folders[arch] / "training_summary.json").read_text())
    benchmark.extra_info.update(architecture=arch, overrides=overrides, steps=summary["steps"],
                                tokens=summary["train_tokens"], sae_seconds=summary["wall_seconds"],
                                l0=summary["l0"], ev=summary["explained_variance_mean_centred"])


@pytest.mark.benchmark(group="training")
def test_bench_training_csae_e2e(benchmark, model, activation_source, heldout_acts, gradient_pool, tmp_path):
    """The exact end-to-end KL variant (Braun et al. 2024): runs the model after the hook every step."""
    from csae_bench.training import train_alongside

    cfg = _config("csae", {"e2e_coeff": 1.0, "causal_coeff": 0.0, "verify_every": 0})
    result = benchmark.pedantic(train_alongside, args=(model, activation_source, cfg, tmp_path),
                                kwargs={"gradient_pool": gradient_pool, "heldout_acts": heldout_acts},
                                rounds=1, iterations=1)
    summary = json.loads((result["csae"] / "training_summary.json").read_text())
    benchmark.extra_info.update(architecture="csae", overrides={"e2e_coeff": 1.0}, steps=summary["steps"],
                                sae_seconds=summary["wall_seconds"])


@pytest.mark.benchmark(group="gradient-pool")
def test_bench_gradient_pool(benchmark, model, train_tokens):
    """The CSAE's one-off gradient harvest (1024 tokens x 4 sampled next tokens, the default)."""
    from csae_bench.activations.gradient_pool import harvest_gradient_pool

    toks = train_tokens[: math.ceil(1024 / 127)]
    benchmark.pedantic(harvest_gradient_pool, args=(model, HOOK, toks),
                       kwargs={"n_samples": 4, "seed": 0, "show_progress": False}, rounds=1, iterations=1)
    benchmark.extra_info["tokens"] = int(toks.numel())

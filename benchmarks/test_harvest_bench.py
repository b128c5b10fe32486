"""Harvest throughput (tokens/s), float32 vs bfloat16 weights, side by side in one run.

    tox -e bench -- benchmarks/test_harvest_bench.py

Group ``harvest``: :func:`csae_bench.activations.harvest.harvest_activations` of 32 contexts × 128
tokens in one forward (``batch_contexts=32``, the run's default) at ``blocks.6.hook_resid_post``,
with the embedded Gemma-3-270M loaded in float32 and in bfloat16. ``extra_info``: harvested
(non-BOS) tokens per second, the FLOPs of the forward (``benchmarks/flops.py``: projections, MLP
and dense attention scores of layers 0–6 over all 32 × 128 positions) and peak RSS. Issue 13's
targets: ≥ 9,000 tokens/s at layer 6 in bf16 and ≥ 5× float32 (the report's harvest table).
"""

from __future__ import annotations

import resource

import pytest
import torch
from flops import harvest_flops
from helpers import embedded_tokens

from csae_bench.activations.harvest import harvest_activations

N_CONTEXTS, CONTEXT = 32, 128


@pytest.fixture(scope="module")
def tokens(model):  # the embedded model: benchmarks/conftest.py
    return embedded_tokens(model, split="train", context_size=CONTEXT, n_contexts=N_CONTEXTS)


@pytest.mark.benchmark(group="harvest")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layer", [6])
def test_harvest_throughput(benchmark, models, tokens, layer, dtype):
    model = models[dtype]
    hook = f"blocks.{layer}.hook_resid_post"
    acts = benchmark.pedantic(harvest_activations, args=(model, hook, tokens),
                              kwargs={"batch_contexts": N_CONTEXTS, "show_progress": False,
                                      "dtype": getattr(torch, dtype)},
                              rounds=3, iterations=1, warmup_rounds=1)
    n_tokens = len(acts)
    benchmark.extra_info.update(
        dtype=dtype, layer=layer, tokens=n_tokens, positions_run=int(tokens.numel()),
        tokens_per_s_median=n_tokens / benchmark.stats.stats.median,
        flops=harvest_flops(model.cfg, *tokens.shape, layer),
        peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    assert acts.shape == (n_tokens, model.cfg.d_model)

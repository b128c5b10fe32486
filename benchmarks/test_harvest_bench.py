"""Harvest throughput (tokens/s) and peak memory at a middle layer of the embedded model.

    tox -e bench -- benchmarks/test_harvest_bench.py
"""

from __future__ import annotations

import resource

import pytest
from helpers import embedded_tokens

from csae_bench.activations.harvest import harvest_activations

N_CONTEXTS, CONTEXT = 32, 128


@pytest.fixture(scope="module")
def tokens(model):  # the embedded model: benchmarks/conftest.py
    return embedded_tokens(model, split="train", context_size=CONTEXT, n_contexts=N_CONTEXTS)


@pytest.mark.parametrize("layer", [6])
def test_harvest_throughput(benchmark, model, tokens, layer):
    hook = f"blocks.{layer}.hook_resid_post"
    acts = benchmark.pedantic(harvest_activations, args=(model, hook, tokens),
                              kwargs={"batch_contexts": 8, "show_progress": False}, rounds=3)
    n_tokens = len(acts)
    benchmark.extra_info["tokens"] = n_tokens
    benchmark.extra_info["tokens_per_s_median"] = n_tokens / benchmark.stats.stats.median
    benchmark.extra_info["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert acts.shape == (n_tokens, model.cfg.d_model)

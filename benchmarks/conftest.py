"""Shared fixtures of the benchmark suites (run: ``tox -e bench``; report: ``python benchmarks/report.py``).

Everything runs on the embedded Gemma-3-270M at ``blocks.6.hook_resid_post``, offline. Inputs are
built once per session and shared, so the rows of one run compare like for like."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' helpers

import pytest
import torch
from helpers import embedded_model, embedded_tokens

from csae_bench.allocator import keep_freed_memory

keep_freed_memory()  # as the CLI runs (csae_bench/allocator.py); CSAE_BENCH_KEEP_FREED_MEMORY=0 times glibc's defaults

HOOK = "blocks.6.hook_resid_post"
TRAIN_TOKENS = 32_768
"""Training tokens per SAE in the training benchmark (64 steps of 512)."""
CONTEXT = 128


@pytest.fixture(scope="session")
def model():
    return embedded_model()


@pytest.fixture(scope="session")
def model_bf16():
    """The embedded model with bfloat16 weights (as ``--dtype bfloat16`` / ``auto`` loads it on a
    CPU with native bf16 matmuls): the bf16 rows of the harvest, engine and eval suites."""
    from csae_bench.models import load_model

    return load_model("embedded", "cpu", "bfloat16")


@pytest.fixture(scope="session")
def models(model, model_bf16):
    """dtype name -> the embedded model loaded in that dtype."""
    return {"float32": model, "bfloat16": model_bf16}


@pytest.fixture(scope="session")
def train_tokens(model):
    return embedded_tokens(model, split="train", context_size=CONTEXT,
                           n_contexts=-(-TRAIN_TOKENS // (CONTEXT - 1)), seed=0)


@pytest.fixture(scope="session")
def activation_source(model, train_tokens, tmp_path_factory):
    """The training stream, harvested once (cached on disk) so training rows time only training."""
    from csae_bench.activations.source import ActivationSource

    source = ActivationSource(model, HOOK, train_tokens, seed=0,
                              cache_path=tmp_path_factory.mktemp("acts"))
    source.harvest(show_progress=False)
    return source


@pytest.fixture(scope="session")
def heldout_acts(model):
    from csae_bench.activations.harvest import harvest_activations

    toks = embedded_tokens(model, split="eval", context_size=CONTEXT, n_contexts=8, seed=1)
    return harvest_activations(model, HOOK, toks)


@pytest.fixture(scope="session")
def eval_tokens(model):
    """The eval set of the eval benchmarks (as the run's ``eval_contexts`` x ``context_size``)."""
    return embedded_tokens(model, split="eval", context_size=CONTEXT, n_contexts=8, seed=0)


@pytest.fixture(scope="session")
def trained_sae(model, activation_source, heldout_acts, tmp_path_factory):
    """A TopK SAE (d_sae 2048, k 32) trained on the benchmark stream: the SAE both evals time."""
    from csae_bench.architectures.export import load_base_sae
    from csae_bench.training import TrainConfig, train_alongside

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("eval_sae")
    cfg = TrainConfig.from_flat(architectures=("topk",), train_tokens=TRAIN_TOKENS, batch_size=512, hook_name=HOOK,
                      checkpoint_every=0, show_progress=False, context_size=CONTEXT)
    folders = train_alongside(model, activation_source, cfg, out, heldout_acts=heldout_acts)
    return load_base_sae(folders["topk"])

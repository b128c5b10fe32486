"""Engine speed, side by side on the same interventions (run: pytest benchmarks/ --benchmark-only),
on the embedded model and eval tokens of ``benchmarks/conftest.py``.

Groups: ``engine-vs-naive`` (exact batched engine, truncation-only engine, naive hooked loop, and
attribution), ``window`` (the engine at W = 1, 4, 16), ``engine-dtype`` (the default engine with
the model loaded in float32 vs bfloat16). ``extra_info`` holds interventions per second; the
naive/engine ratio is the speed-up. Engine rows also hold the FLOPs the engine computed
(``benchmarks/flops.py``: each batch's positions through every layer after the hook, attention over
the cached prefix and the batch's own positions; per pooled unembedding pass, every window row
and each distinct clean row of the pool), which the report gives as a fraction of the same run's
matmul peak.

The product keeps the engine in float32 whatever ``--dtype`` says (docs/precision.md: bf16's
rounding swamps feature-sized effects); the bf16 row documents what bf16 would buy."""

from __future__ import annotations

import pytest
import torch
from flops import engine_batch_flops, unembed_flops

from csae_bench.interventions.engine import EffectEngine, EngineConfig
from csae_bench.interventions.reference import naive_effects

HOOK = "blocks.6.hook_resid_post"
N_TOKENS = 16
N_INTERVENTIONS = 2 * N_TOKENS


@pytest.fixture(scope="session")
def bench_interventions(model, eval_tokens):
    """As the NCES eval runs them: at 16 seeded random (context, position) tokens, an edit of a
    typical feature-edit size (norm 150, the median zero-ablation of a TopK SAE at this hook) and
    its random-direction control of equal norm — 32 interventions."""
    from csae_bench.interventions import random_direction_control

    gen = torch.Generator().manual_seed(0)
    ctx = torch.randint(0, len(eval_tokens), (N_TOKENS,), generator=gen)
    pos = torch.randint(1, eval_tokens.shape[1] - 20, (N_TOKENS,), generator=gen)
    edit = 150.0 * torch.nn.functional.normalize(torch.randn(N_TOKENS, model.cfg.d_model, generator=gen), dim=-1)
    ctx, pos = ctx.repeat(2), pos.repeat(2)
    delta = torch.cat([edit, random_direction_control(edit, gen)])
    return ctx, pos, delta

PEDANTIC = dict(rounds=1, iterations=1, warmup_rounds=0)


class CountingEngine(EffectEngine):
    """The engine, recording the FLOPs of each batch it runs and of each pooled unembedding pass
    (``benchmarks/flops.py``)."""

    flops = 0

    def _run_batch(self, sel, p, ctx_idx_M, pos_M, wlen, *rest) -> None:
        pos_b, wlen_b = pos_M[sel], wlen[sel]
        seq = int((pos_b + wlen_b).max()) - p
        self.flops += engine_batch_flops(self.model.cfg, self.layer, len(sel), seq, p)
        super()._run_batch(sel, p, ctx_idx_M, pos_M, wlen, *rest)

    def _unembed_pool(self, pool, kl, dloss, stats) -> None:
        before = stats["rows_unembedded"]
        super()._unembed_pool(pool, kl, dloss, stats)
        self.flops += unembed_flops(self.model.cfg, stats["rows_unembedded"] - before)


def _record(benchmark, n: int) -> None:
    benchmark.extra_info["interventions"] = n
    benchmark.extra_info["interventions_per_second"] = n / benchmark.stats.stats.mean


@pytest.fixture(scope="module")
def engines(model, eval_tokens):
    return {
        "reuse_kv": CountingEngine(model, HOOK, eval_tokens, EngineConfig(window=4)),
        "truncate": CountingEngine(model, HOOK, eval_tokens, EngineConfig(window=4, reuse_kv=False)),
    }


@pytest.mark.benchmark(group="engine-vs-naive")
def test_bench_naive_loop(benchmark, model, eval_tokens, bench_interventions):
    ctx, pos, delta = bench_interventions
    benchmark.pedantic(naive_effects, args=(model, HOOK, eval_tokens, ctx, pos, delta, 4), **PEDANTIC)
    _record(benchmark, N_INTERVENTIONS)


@pytest.mark.benchmark(group="engine-vs-naive")
@pytest.mark.parametrize("variant", ["reuse_kv", "truncate"])
def test_bench_engine_exact(benchmark, engines, bench_interventions, variant):
    ctx, pos, delta = bench_interventions
    engine = engines[variant]
    engine.flops = 0
    result = benchmark.pedantic(engine.effects, args=(ctx, pos, delta), **PEDANTIC)
    _record(benchmark, N_INTERVENTIONS)
    benchmark.extra_info.update(positions_run=result.stats["positions_run"], dtype="float32",
                                flops=engine.flops)


@pytest.mark.benchmark(group="engine-dtype")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bench_engine_dtype(benchmark, models, eval_tokens, bench_interventions, dtype):
    """The default engine (KV reuse + truncation, W = 4) on the same 32 interventions, with the
    model's weights in ``dtype`` (the engine runs in its model's dtype)."""
    ctx, pos, delta = bench_interventions
    engine = CountingEngine(models[dtype], HOOK, eval_tokens, EngineConfig(window=4))
    rounds = dict(rounds=3, iterations=1, warmup_rounds=1)
    result = benchmark.pedantic(engine.effects, args=(ctx, pos, delta), **rounds)
    _record(benchmark, N_INTERVENTIONS)
    benchmark.extra_info.update(positions_run=result.stats["positions_run"], dtype=dtype,
                                flops=engine.flops // (rounds["rounds"] + rounds["warmup_rounds"]))


@pytest.mark.benchmark(group="engine-vs-naive")
def test_bench_attribution(benchmark, model, eval_tokens, bench_interventions):
    ctx, pos, delta = bench_interventions
    engine = EffectEngine(model, HOOK, eval_tokens, EngineConfig(window=4))

    def attribute():
        engine._grad_NTD = None  # time the backward pass, not the cache
        return engine.attribution(ctx, pos, delta)

    benchmark.pedantic(attribute, **PEDANTIC)
    _record(benchmark, N_INTERVENTIONS)


@pytest.mark.benchmark(group="window")
@pytest.mark.parametrize("window", [1, 4, 16])
def test_bench_window(benchmark, model, eval_tokens, bench_interventions, window):
    ctx, pos, delta = bench_interventions
    engine = EffectEngine(model, HOOK, eval_tokens, EngineConfig(window=window))
    benchmark.pedantic(engine.effects, args=(ctx, pos, delta), **PEDANTIC)
    _record(benchmark, N_INTERVENTIONS)

"""The machine's matmul peak per dtype, measured in the same run as the other suites, so their
achieved FLOP/s can be given as a fraction of it (``python benchmarks/report.py``).

Group ``matmul-peak``: ``torch.mm`` of ``4096 × 640 @ 640 × 2048`` (an SAE-step-sized product
at Gemma-3-270M's d_model) and ``512 × 640 @ 640 × 262144`` (the unembedding of 512 rows), in
float32 and bfloat16, at the session's torch thread count. ``extra_info["gflops"]`` is FLOPs
(2·M·K·N) over the median round; the report's peak for a dtype is the ``4096 × 640 × 2048`` row.
"""

from __future__ import annotations

import pytest
import torch

SHAPES = {"sae": (4096, 640, 2048), "unembed": (512, 640, 262_144)}
ROUNDS = {"sae": dict(rounds=10, iterations=1, warmup_rounds=2),
          "unembed": dict(rounds=3, iterations=1, warmup_rounds=1)}


@pytest.mark.benchmark(group="matmul-peak")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_bench_matmul_peak(benchmark, shape, dtype):
    m, k, n = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(getattr(torch, dtype))
    b = torch.randn(k, n, generator=gen).to(getattr(torch, dtype))
    out = torch.empty(m, n, dtype=a.dtype)
    benchmark.pedantic(torch.mm, args=(a, b), kwargs={"out": out}, **ROUNDS[shape])
    flops = 2 * m * k * n
    benchmark.extra_info.update(dtype=dtype, shape=f"{m}x{k}@{k}x{n}", flops=flops,
                                gflops=flops / benchmark.stats.stats.median / 1e9,
                                threads=torch.get_num_threads())

"""csae_bench.precision: the auto choice, its fallback, and the names a user may give."""

import logging

import pytest
import torch

from csae_bench import precision
from csae_bench.errors import BadInputError


def test_auto_falls_back_to_float32_without_native_bf16(monkeypatch, caplog):
    """A CPU without AMX/AVX512-BF16 gets float32, with one log line saying how to force bf16."""
    monkeypatch.setattr(precision, "_cpu_has_fast_bf16", lambda: False)
    precision._log_choice.cache_clear()
    with caplog.at_level(logging.INFO, logger="csae_bench.precision"):
        assert precision.resolve_dtype("auto", "cpu") is torch.float32
        assert precision.resolve_dtype(None, "cpu") is torch.float32
    lines = [r.getMessage() for r in caplog.records if "Precision auto" in r.getMessage()]
    assert len(lines) == 1 and "float32" in lines[0] and "--dtype bfloat16" in lines[0]


def test_auto_picks_bf16_with_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_has_fast_bf16", lambda: True)
    precision._log_choice.cache_clear()
    assert precision.resolve_dtype("auto", "cpu") is torch.bfloat16


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_named_dtypes_are_taken_as_given(monkeypatch, name):
    monkeypatch.setattr(precision, "_cpu_has_fast_bf16", lambda: False)
    dtype = precision.resolve_dtype(name, "cpu")
    assert dtype is getattr(torch, name) and precision.dtype_name(dtype) == name


def test_unknown_dtype_is_bad_input():
    with pytest.raises(BadInputError, match="use one of auto, float32"):
        precision.resolve_dtype("fp8", "cpu")


def test_autocast_runs_matmuls_in_bf16_and_is_off_for_float32():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with precision.autocast(torch.bfloat16):
        assert (a @ b).dtype is torch.bfloat16
    with precision.autocast(torch.float32):
        assert (a @ b).dtype is torch.float32

"""Numeric precision per stage: which dtype the model, the SAE matmuls and stored activations use.

``auto`` (the default) means bfloat16 where the hardware runs it fast — a CPU with AMX-BF16 or
AVX512-BF16, a CUDA GPU with bf16 — and float32 elsewhere; the choice is logged once per process.
Measured on the development CPUs (docs/precision.md): bf16 matmuls run 4.8× (AVX512-BF16) to 7×
(AMX) faster than float32 on 2 cores.

What stays float32 whatever the setting, and why (numbers in docs/precision.md):
- SAE master weights, optimizer state and loss reductions (mixed precision: only matmuls run in
  bf16, under ``torch.autocast``);
- the NCES intervention engine's layers: a bf16 forward computes ``f(h + δ) − f(h)`` with a
  rounding error relative to ``f(h)``, not to the difference, so feature-sized edits (≈ 1 % of the
  residual norm) get effects off by ~75 % — far above the 10 % budget.
"""

from __future__ import annotations

import logging
from functools import cache

import torch

from csae_bench.errors import BadInputError

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes a user may name (``auto`` is resolved by :func:`resolve_dtype`)."""
CHOICES = ("auto", *DTYPES)


class PrecisionError(BadInputError, ValueError):
    """An unknown dtype name."""


def _cpu_has_fast_bf16() -> bool:
    # torch's own ISA probes (torch/cpu/__init__.py); private names, so tolerate their absence.
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def has_fast_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` runs bfloat16 matmuls natively (AMX/AVX512-BF16 CPU, bf16 CUDA GPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_fast_bf16()
    return False


@cache
def _log_choice(device_type: str, dtype: torch.dtype, fast: bool) -> None:
    # once per (device, outcome) per process: the choice is a fact about the machine, not the job
    if fast:
        logger.info("Precision auto on %s: bfloat16 (the hardware runs bf16 matmuls natively).",
                    device_type)
    else:
        logger.info(
            "Precision auto on %s: float32 (no native bf16 matmuls found; "
            "pass --dtype bfloat16 to force it).",
            device_type,
        )


def resolve_dtype(name: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype that ``name`` (``auto``/``None``, ``float32``, ``bfloat16``, ``float16`` or a
    ``torch.dtype``) means on ``device``. Raises :class:`PrecisionError` for an unknown name."""
    if isinstance(name, torch.dtype):
        return name
    if name is None or name == "auto":
        device = torch.device(device)
        fast = has_fast_bf16(device)
        dtype = torch.bfloat16 if fast else torch.float32
        _log_choice(device.type, dtype, fast)
        return dtype
    if name not in DTYPES:
        raise PrecisionError(f"Unknown dtype {name!r}: use one of {', '.join(CHOICES)}.")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def autocast(dtype: torch.dtype, device: str | torch.device = "cpu"):
    """``torch.autocast`` for SAE training matmuls in ``dtype`` (a no-op context for float32):
    master weights and optimizer state stay float32."""
    device = torch.device(device)
    enabled = dtype in (torch.bfloat16, torch.float16)
    return torch.autocast(device.type, dtype=dtype if enabled else torch.bfloat16, enabled=enabled)

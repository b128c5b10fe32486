"""Keep freed tensor memory in the process, so large CPU tensors are not faulted in page by page.

PyTorch's CPU tensors come from ``malloc``. glibc serves a request above its mmap threshold
(adaptive, capped at 32 MiB on 64-bit) with a fresh ``mmap`` and unmaps it on ``free``, and trims
freed memory at the top of its heap; either way the next tensor of that size is faulted in by the
kernel one 4 KiB page at a time. An SAE training step allocates several ``[4096, d_sae]`` float32
tensors (32 MiB at d_sae 2048), the intervention engine ``[rows, vocab_chunk]`` logits, so each
step paid for its memory again: ``benchmarks/test_training_bench.py::test_bench_training_dtype``
(d_sae 2048, batch 4096) ran 1.2–2.3× faster per step in bf16, up to 1.5× in float32, with the
two settings below (docs/overhead.md).

PyTorch's CPU performance guide recommends preloading jemalloc or tcmalloc for the same reason;
``mallopt`` gets glibc to keep the memory without a preload (Linux with glibc only; elsewhere
nothing changes). The cost: memory freed by a job stays with the process until it exits, so the
resident set stays at its high-water mark instead of falling back between jobs.
``CSAE_BENCH_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30
"""Requests below 1 GiB come from the heap (accepted by glibc 2.36, Debian 12; a glibc that refuses
it is left as it was, and :func:`keep_freed_memory` returns ``False``)."""
_TRIM_THRESHOLD = 2**31 - 1
"""Free memory at the heap's top kept up to 2 GiB (mallopt takes an ``int``)."""

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to serve large requests from its heap and not to trim it (once per
    process; later calls return the first answer). Returns whether the settings took effect:
    ``False`` off glibc, when ``CSAE_BENCH_KEEP_FREED_MEMORY=0``, or when ``mallopt`` refuses."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("CSAE_BENCH_KEEP_FREED_MEMORY", "1") == "0" or sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl's mallopt does nothing
    except (OSError, AttributeError):
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    logger.debug("glibc malloc keeps freed memory: %s", _done)
    return _done

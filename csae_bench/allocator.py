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
``CSAE_BENCH_KEEP_FREED_MEMORY=0`` turns it off (the Ray executor passes it on to its workers).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

KEEP_FREED_MEMORY_ENV = "CSAE_BENCH_KEEP_FREED_MEMORY"
"""Set to ``0`` to leave glibc's malloc settings alone (the Ray executor passes it to workers)."""
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLDS = (1 << 30, 32 << 20)
"""Requests below 1 GiB come from the heap where glibc accepts it (2.36, Debian 12, does); older
glibc caps the threshold at ``HEAP_MAX_SIZE / 2`` = 32 MiB, the fallback."""
_TRIM_THRESHOLD = 2**31 - 1
"""Free memory at the heap's top kept up to 2 GiB (mallopt takes an ``int``)."""

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to serve large requests from its heap and not to trim it (once per
    process; later calls return the first answer). Returns whether both settings took effect:
    ``False`` off glibc, when ``CSAE_BENCH_KEEP_FREED_MEMORY=0``, or when ``mallopt`` refuses one
    (the other may then still apply)."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1") == "0" or sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl's mallopt does nothing
    except (OSError, AttributeError):
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mmap_ok = any(libc.mallopt(_M_MMAP_THRESHOLD, size) for size in _MMAP_THRESHOLDS)
    trim_ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    _done = mmap_ok and trim_ok
    logger.debug("glibc malloc keeps freed memory: %s", _done)
    return _done

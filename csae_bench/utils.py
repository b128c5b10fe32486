"""Small shared helpers: atomic writes, standard JSON, seeding. (Provenance — commit and versions —
is :mod:`csae_bench.provenance`; its two helpers are re-exported here for existing callers.)"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csae_bench.provenance import git_commit, versions  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically, on
    error it is removed — a crash never leaves a half-written file where a result should be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600; a result file gets the permissions open() would give it
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process umask, read without setting it (``os.umask`` would change it for every thread
    for a moment); 0o022 where ``/proc`` does not say."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


NON_FINITE_KEY = "non_finite_values"


def _non_finite_name(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def replace_non_finite(obj: Any, as_string: bool = False, _path: str = "") -> tuple[Any, dict]:
    """A copy of ``obj`` (nested dicts, lists, tuples) with every NaN/±inf float replaced.

    Replacement: ``None`` (JSON null), or with ``as_string`` the strings ``"nan"``, ``"inf"``,
    ``"-inf"``, which pydantic's float fields (SAEBench's output classes) read back as the same
    float. Returns ``(copy, {"dotted.path": "nan"|"inf"|"-inf"})``, list items as ``[i]``.
    """
    found: dict[str, str] = {}
    if isinstance(obj, float) and not math.isfinite(obj):
        found[_path] = _non_finite_name(obj)
        return (found[_path] if as_string else None), found
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out[key], sub = replace_non_finite(
                value, as_string, f"{_path}.{key}" if _path else str(key)
            )
            found.update(sub)
        return out, found
    if isinstance(obj, list | tuple):
        items = []
        for i, value in enumerate(obj):
            item, sub = replace_non_finite(value, as_string, f"{_path}[{i}]")
            items.append(item)
            found.update(sub)
        return items, found
    return obj, found


def standard_json(obj: Any, indent: int = 2) -> str:
    """``obj`` as standard JSON (no ``NaN``/``Infinity``, which browsers and Node reject).

    A non-finite float becomes ``null`` and, when ``obj`` is a dict, is named under
    ``non_finite_values`` (``{"dotted.path": "nan"|"inf"|"-inf"}``) so a reader knows a value was
    there and what it was; a warning is logged."""
    clean, found = replace_non_finite(obj)
    if found:
        logger.warning("Non-finite values written as null: %s", found)
        if isinstance(clean, dict):
            clean[NON_FINITE_KEY] = {**clean.get(NON_FINITE_KEY, {}), **found}
    return json.dumps(clean, indent=indent, default=str, allow_nan=False)


def eval_output_json(output: Any, indent: int = 2) -> str:
    """A SAEBench eval output (pydantic dataclass) as standard JSON that still validates against
    its class: SAEBench's metric fields are required floats, so a non-finite value is written as
    the string ``"nan"``/``"inf"``/``"-inf"`` (read back as that float by pydantic) — never as a
    plausible number and never as non-standard JSON."""
    from dataclasses import asdict

    clean, _ = replace_non_finite(asdict(output), as_string=True)
    return json.dumps(clean, indent=indent, default=str, allow_nan=False)


def atomic_write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as standard JSON (see :func:`standard_json`) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(standard_json(obj))


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cached(cache: dict | None, key: Any, make: Callable[[], Any]) -> Any:
    """``make()``, kept in ``cache`` under ``key`` when there is a cache (the evals' per-run
    cache, :attr:`csae_bench.evals.registry.EvalContext.cache`)."""
    if cache is None:
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc's ``malloc_trim``; a no-op
    elsewhere). Loading a model leaves GBs of freed-but-kept allocator arenas behind (measured:
    loading the embedded model in float32 peaks at 2.7 GB RSS for 1.7 GB of weights); without
    this a run that loads a second model holds both loads' leftovers."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

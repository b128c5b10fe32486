"""Training checkpoints: one file for all SAEs trained alongside, written atomically.

The file is a safetensors file: every tensor of the state is a safetensors tensor, everything
else (steps, floats, optimizer hyper-parameters, the identity) is JSON in its header. Nothing is
unpickled on reading, so a checkpoint planted in a shared results folder cannot run code.
Tensors and JSON floats round-trip exactly, so a resumed run continues bit for bit.

A checkpoint records who wrote it (model name, hook, d_in and the run-defining config fields);
resuming under different ones raises :class:`CheckpointMismatchError` instead of silently mixing
runs. Every tensor is checked to be finite before writing, so a diverged SAE never lands on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from csae_bench.errors import BadInputError, JobFailedError
from csae_bench.utils import atomic_path

CHECKPOINT_FORMAT = 2  # 1 was a pickle (torch.save), never read any more
RUN_DEFINING_FIELDS = (
    "architectures",
    "d_sae",
    "target_l0",
    "batch_size",
    "train_tokens",
    "seed",
    "lr",
    "hook_name",
    "model_name",
)
"""TrainConfig fields that must be identical to continue a run from its checkpoint."""

_STATE_KEY = "csae_bench_state"


class CheckpointMismatchError(BadInputError, RuntimeError):
    """A checkpoint belongs to another run (model, hook or settings) or is not a checkpoint."""


class NonFiniteError(JobFailedError, RuntimeError):
    """NaN/inf found in activations, a loss or weights; the message names the step and SAE."""


def _non_finite(obj: Any, prefix: str = "") -> list[str]:
    if isinstance(obj, torch.Tensor):
        return [prefix] if obj.is_floating_point() and not torch.isfinite(obj).all() else []
    if isinstance(obj, dict):
        return [
            p for k, v in obj.items() for p in _non_finite(v, f"{prefix}.{k}" if prefix else str(k))
        ]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _non_finite(v, f"{prefix}[{i}]")]
    return []


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON skeleton of ``obj``; tensors move to ``tensors`` under a numbered key. Tuples and
    dicts with non-string keys (optimizer state is keyed by int) are tagged to come back as such."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()  # clone: no shared storage
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _flatten(v, tensors) for k, v in obj.items()}}
        return {"__items__": [[k, _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__dict__" in obj:
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"].items()}
    if "__items__" in obj:
        return {k: _unflatten(v, tensors) for k, v in obj["__items__"]}
    if "__tuple__" in obj:
        return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    raise ValueError(f"unknown entry {sorted(obj)}")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (with ``identity`` and ``step`` keys) atomically as safetensors + JSON,
    refusing non-finite tensors (:class:`NonFiniteError`). Values: tensors, dicts, lists, tuples,
    str/int/float/bool/None."""
    from safetensors.torch import save_file

    bad = _non_finite(state.get("archs", {}))
    if bad:
        raise NonFiniteError(
            f"Refusing to write checkpoint {path} at step {state.get('step')}: non-finite values in "
            f"{', '.join(bad[:5])}. Lower the learning rate or check the activations."
        )
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten({"format": CHECKPOINT_FORMAT, **state}, tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_STATE_KEY: json.dumps(skeleton)})


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state written by :func:`save_checkpoint`, tensors on the CPU. Never unpickles:
    anything but a safetensors file with our JSON header raises :class:`CheckpointMismatchError`
    (exit 2) saying to delete it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        state = _unflatten(json.loads(meta[_STATE_KEY]), tensors)
    except Exception as err:  # safetensors raises its own error types for a non-safetensors file
        raise CheckpointMismatchError(
            f"Checkpoint {path} is not a csae_bench safetensors checkpoint and was not read "
            f"({type(err).__name__}: {err}). Delete it (training restarts) or pass resume=False."
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(
            f"Checkpoint {path} has format {state.get('format') if isinstance(state, dict) else None}, "
            f"expected {CHECKPOINT_FORMAT}. Delete it or pass resume=False."
        )
    return state


def load_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """:func:`read_checkpoint`, then check it was written by a run with this ``identity``
    (:class:`CheckpointMismatchError` listing the differences otherwise)."""
    state = read_checkpoint(path)
    theirs = state.get("identity", {})
    diffs = [
        f"{k}: checkpoint {theirs.get(k)!r} vs now {v!r}"
        for k, v in identity.items()
        if _norm(theirs.get(k)) != _norm(v)
    ]
    if diffs:
        raise CheckpointMismatchError(
            f"Checkpoint {path} is from a different run ({'; '.join(diffs)}). Use another output "
            "folder, delete the checkpoint, or pass resume=False to start over."
        )
    return state


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v

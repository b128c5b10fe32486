"""Training checkpoints: one file for all SAEs trained alongside, written atomically.

A checkpoint records who wrote it (model name, hook, d_in and the run-defining config fields);
resuming under different ones raises :class:`CheckpointMismatchError` instead of silently mixing
runs. Every tensor is checked to be finite before writing, so a diverged SAE never lands on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from csae_bench.utils import atomic_path

CHECKPOINT_FORMAT = 1
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


class CheckpointMismatchError(RuntimeError):
    """A checkpoint belongs to another run (model, hook or settings)."""


class NonFiniteError(RuntimeError):
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


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (with ``identity`` and ``step`` keys) atomically, refusing non-finite tensors."""
    bad = _non_finite(state.get("archs", {}))
    if bad:
        raise NonFiniteError(
            f"Refusing to write checkpoint {path} at step {state.get('step')}: non-finite values in "
            f"{', '.join(bad[:5])}. Lower the learning rate or check the activations."
        )
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)


def load_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint and check it was written by a run with this ``identity``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointMismatchError(
            f"Checkpoint {path} is unreadable ({type(err).__name__}: {err}). Delete it or pass "
            "resume=False to start over."
        ) from err
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(
            f"Checkpoint {path} has format {state.get('format')}, "
            f"expected {CHECKPOINT_FORMAT}. Delete it or pass resume=False."
        )
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

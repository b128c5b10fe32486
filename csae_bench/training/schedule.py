"""The learning-rate schedule shared by every SAE of a run: linear warm-up, constant, linear decay
to 0 (per-architecture rates in ``TrainConfig.arch_lr`` scale the same shape)."""

from __future__ import annotations

from csae_bench.training.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``cfg.n_steps``.

    Warm-up: ``lr · (step + 1) / W`` for the first ``W = max(1, ⌊n · warmup_frac⌋)`` steps; decay:
    ``lr · (n − step) / max(1, ⌊n · decay_frac⌋)`` from step ``n − ⌊n · decay_frac⌋`` on (reaching
    ``lr / D`` at the last step, not 0); ``lr`` in between."""
    n = cfg.n_steps
    warm = max(1, int(n * cfg.warmup_frac))
    decay_start = n - int(n * cfg.decay_frac)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if step >= decay_start:
        return cfg.lr * (n - step) / max(1, n - decay_start)
    return cfg.lr

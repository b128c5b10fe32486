"""The learning-rate schedule shared by every SAE of a run, from torch's own schedulers (as SAELens's
``training/optim.py`` builds it): linear warm-up, constant, linear decay toward 0. Each SAE's
optimizer gets its own scheduler (per-architecture rates in ``TrainConfig.arch_lr`` set the base
rate; the shape is the same), and its state goes into the checkpoint with the optimizer's.

With ``n = cfg.n_steps``, ``W = max(1, ⌊n · warmup_frac⌋)`` and ``D = ⌊n · decay_frac⌋``, step
``t`` (0-based) runs at ``lr · (t + 1) / W`` for ``t < W``, ``lr`` until ``n − D``, then
``lr · (n − t) / D`` (the last step at ``lr / D``, never 0). torch's ``LinearLR`` computes this
recursively; it matches the closed form to ~1e-12 relative (``tests/test_training.py``).
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, LinearLR, LRScheduler, SequentialLR

from csae_bench.training.config import TrainConfig


def lr_scheduler(optimizer: Optimizer, cfg: TrainConfig) -> SequentialLR:
    """The schedule above for ``optimizer`` (whose ``lr`` is the base rate); call ``.step()``
    after every ``optimizer.step()``."""
    n = cfg.n_steps
    warm = max(1, int(n * cfg.warmup_frac))
    decay_start = n - int(n * cfg.decay_frac)
    schedulers: list[LRScheduler] = []
    milestones: list[int] = []
    if warm > 1:
        schedulers.append(
            LinearLR(optimizer, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1)
        )
    if decay_start > warm or not schedulers:
        if schedulers:
            milestones.append(warm)
        schedulers.append(ConstantLR(optimizer, factor=1.0, total_iters=0))
    if decay_start < n:
        milestones.append(decay_start)
        schedulers.append(
            LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=n - decay_start)
        )
    return SequentialLR(optimizer, schedulers, milestones)

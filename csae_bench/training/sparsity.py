"""Online calibration of a sparsity coefficient toward a target L0 (matched-L0 comparisons).

ReLU (L1) and JumpReLU (L0 via a straight-through estimator) have no ``k``: their L0 follows from
a penalty coefficient. :class:`L0Controller` is a multiplicative (log-space proportional)
controller: after every step it multiplies the coefficient by ``exp(gain * clip(log(L0_ema /
target), ±max_log_step))`` — up when the smoothed L0 is above the target, down when below. It runs
for the whole training (the L0 a penalty gives drifts as the SAE learns) and freezes over the last
``freeze_frac`` of the steps so the final SAE is trained at a fixed coefficient; the L0 reached is
reported next to the target, never assumed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class L0Controller:
    """Multiplicative controller of a sparsity coefficient (state is plain numbers: checkpointable)."""

    coefficient: float
    """Current penalty coefficient."""
    target_l0: float
    """L0 (active features per token) to steer toward."""
    gain: float = 0.03
    """Log-coefficient change per step per unit of log(L0/target)."""
    ema: float = 0.9
    """Smoothing of the measured L0 (weight of the previous value)."""
    max_log_step: float = 1.0
    """Clip on |log(L0/target)| so a wild early L0 cannot blow the coefficient up."""
    l0_ema: float | None = None
    """Smoothed L0 (None before the first step)."""
    frozen: bool = False
    """Set by the trainer for the final phase: the coefficient no longer changes."""

    def __post_init__(self) -> None:
        if self.coefficient <= 0 or self.target_l0 <= 0:
            raise ValueError(
                f"coefficient={self.coefficient} and target_l0={self.target_l0} must be > 0."
            )

    def update(self, l0: float) -> float:
        """Record this step's mean L0 and return the coefficient for the next step."""
        self.l0_ema = l0 if self.l0_ema is None else self.ema * self.l0_ema + (1 - self.ema) * l0
        if not self.frozen:
            err = math.log(max(self.l0_ema, 1e-3) / self.target_l0)
            err = max(-self.max_log_step, min(self.max_log_step, err))
            self.coefficient *= math.exp(self.gain * err)
        return self.coefficient

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> L0Controller:
        return cls(**state)

"""Training options of every architecture: the base class, and the options of SAELens's own
architectures (``relu``, ``topk``, ``jumprelu``; the CSAE's and the random decoder's sit in their own
modules).

Each options dataclass holds what is particular to one architecture, as SAELens nests it in the
architecture's training config (``StandardTrainingSAEConfig.l1_coefficient``,
``TopKTrainingSAEConfig.k``, ``JumpReLUTrainingSAEConfig.jumprelu_bandwidth``...), with the field
names of that SAELens config. :meth:`ArchitectureOptions.sae_config` turns them into the keyword
arguments of the SAELens training config; fields marked ``trainer_only`` are read by the trainer
instead (e.g. the CSAE's gradient-pool size). Defaults are the CPU run's (the embedded model).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def trainer_only(default: Any) -> Any:
    """A dataclass field the trainer reads, not passed to the SAELens training config."""
    return field(default=default, metadata={"trainer_only": True})


@dataclass
class ArchitectureOptions:
    """Base of every architecture's training options."""

    def sae_config(self, *, target_l0: int, seed: int) -> dict[str, Any]:
        """Keyword arguments of the SAELens training config (besides ``d_in`` / ``d_sae``).

        ``target_l0`` (active features per token) and ``seed`` are the run's; architectures that
        derive an option from them (``k``, a decoder seed) override this."""
        del target_l0, seed
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not f.metadata.get("trainer_only")
        }


@dataclass
class ReLUOptions(ArchitectureOptions):
    """``relu``: SAELens's standard SAE (ReLU encoder, L1 penalty)."""

    l1_coefficient: float = 2.0
    """Initial L1 coefficient (steered toward ``target_l0`` when ``TrainConfig.calibrate_l0``)."""


@dataclass
class JumpReLUOptions(ArchitectureOptions):
    """``jumprelu``: SAELens's JumpReLU SAE (L0 penalty through a straight-through estimator)."""

    l0_coefficient: float = 0.05
    """Initial L0 coefficient (steered toward ``target_l0`` when ``TrainConfig.calibrate_l0``)."""
    jumprelu_init_threshold: float = 0.1
    """Initial threshold, in normalized activation units (then calibrated on the first batch)."""
    jumprelu_bandwidth: float = 0.05
    """Bandwidth of the straight-through estimator's kernel."""
    jumprelu_ste_to_input: bool = True
    """Pass the L0 penalty's straight-through gradient to the encoder too (Anthropic's variant).
    With False (DeepMind's) only the threshold learns sparsity, and Adam moves it by about lr per
    step: far too slow to reach the target L0 in a short CPU run (a 250-step run ended at L0 447
    for a target of 32)."""


@dataclass
class TopKOptions(ArchitectureOptions):
    """``topk``: SAELens's TopK SAE; ``k`` is the run's ``target_l0``."""

    aux_loss_coefficient: float = 1 / 32
    """Weight of SAELens's AuxK dead-feature loss (OpenAI's 1/32)."""

    def sae_config(self, *, target_l0: int, seed: int) -> dict[str, Any]:
        return {"k": target_l0, **super().sae_config(target_l0=target_l0, seed=seed)}

"""Moved: the CSAE's causal terms live in :mod:`csae_bench.architectures.csae_losses`. This alias
keeps ``from csae_bench.training.causal import ...`` working for callers not yet updated."""

from csae_bench.architectures.csae_losses import (
    end_to_end_kl,
    fisher_faithfulness,
    fisher_nces,
    mean_fisher_factor,
    metric_faithfulness,
    sensitive_directions,
    spliced_kl,
)

__all__ = [
    "end_to_end_kl",
    "fisher_faithfulness",
    "fisher_nces",
    "mean_fisher_factor",
    "metric_faithfulness",
    "sensitive_directions",
    "spliced_kl",
]

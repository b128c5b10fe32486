"""Training SAEs alongside on one activation stream.

Modules, in the order a run uses them: :mod:`.config` (:class:`TrainConfig`, per-architecture
options nested), :mod:`.scaling` (activation normalization), :mod:`.schedule` (learning rate),
:mod:`.state` (one SAE's optimizer, controller, counters), :mod:`.sparsity` (the L0 controller),
:mod:`.dead_features` (resampling and re-initialization), :mod:`.causal_pool` (the CSAE's
gradient pool), :mod:`.display`, :mod:`.checkpoint` (resume state), :mod:`.finalize` (saved
folder and summary), :mod:`.snapshots` (SAEs kept at log-spaced steps) and :mod:`.loop`
(:func:`train_alongside`). :mod:`.causal` holds the CSAE's loss terms.
"""

from csae_bench.training.causal_pool import POOL_NAME
from csae_bench.training.checkpoint import CheckpointMismatchError, NonFiniteError
from csae_bench.training.config import TrainConfig, TrainingError
from csae_bench.training.finalize import SUMMARY_NAME
from csae_bench.training.loop import CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME, train_alongside

__all__ = [
    "CHECKPOINT_NAME",
    "LEGACY_CHECKPOINT_NAME",
    "POOL_NAME",
    "SUMMARY_NAME",
    "CheckpointMismatchError",
    "NonFiniteError",
    "TrainConfig",
    "TrainingError",
    "train_alongside",
]

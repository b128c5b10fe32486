"""Settings and results of the effect engine (:mod:`csae_bench.interventions.engine`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from csae_bench.interventions.types import InterventionError


@dataclass
class EngineConfig:
    """Settings of the effect engine."""

    window: int | None = 4
    """Effect window ``W``: KL summed over the predictions at ``t .. t+W−1``. ``None`` = to the
    end of the context (positions with a true next token)."""
    vocab_chunk: int = 4096
    """Vocabulary columns unembedded at once (memory ``rows × vocab_chunk``). 4096 keeps a chunk's
    logits of a few hundred rows near the CPU's cache; 16384 was 1.3× slower per intervention
    (embedded Gemma-3-270M, 240 interventions, ``benchmarks/test_engine_bench.py`` setup)."""
    memory_budget_mb: float = 1024.0
    """Working memory for one intervention batch (sets the batch size) and for one unembedding
    pass (caps ``unembed_rows``)."""
    max_batch: int = 512
    """Upper bound on interventions per batch."""
    max_span: int = 8
    """Largest distance between the earliest and latest intervention position in one batch; a
    larger span recomputes more clean positions, a smaller one runs more, smaller batches."""
    reuse_kv: bool = True
    """Reuse the clean keys/values of positions before the batch's earliest position. ``False``
    recomputes each sequence from position 0 (truncation only), for comparison."""
    context_batch: int = 8
    """Contexts per batch for the clean pass and the attribution backward pass."""
    unembed_rows: int = 512
    """Window rows pooled over intervention batches before one pass over the vocabulary (the
    distinct clean rows of the pool ride along). More rows per pass amortize reading ``W_U``;
    memory ``rows × vocab_chunk`` of logits and their float64 accumulators, capped by
    ``memory_budget_mb``."""

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 1:
            raise InterventionError(
                f"window={self.window}: use W ≥ 1, or None for the rest of the context."
            )
        if (
            self.vocab_chunk < 1
            or self.max_batch < 1
            or self.unembed_rows < 1
            or self.max_span < 0
            or self.memory_budget_mb <= 0
        ):
            raise InterventionError(
                "vocab_chunk, max_batch, unembed_rows and memory_budget_mb must be positive, max_span ≥ 0."
            )


@dataclass
class Effects:
    """Per-intervention results of :meth:`EffectEngine.effects` (all ``[M]`` unless noted)."""

    kl: Tensor
    """KL(clean ‖ intervened) summed over the window."""
    dloss: Tensor
    """Change of the true next-token loss (intervened − clean), summed over the window."""
    n_positions: Tensor
    """Window positions counted for each intervention."""
    dx_first: Tensor | None = None
    """``[M, d_model]`` change of the final normalized residual at position ``t`` (its logit
    change is ``dx · W_U``); kept when ``record_dx``."""
    stats: dict = field(default_factory=dict)
    """Work done: ``batches``, ``positions_run`` (forward positions), ``positions_full_rerun``
    (what one full forward per intervention would have run), ``unembed_passes``,
    ``rows_unembedded`` (window rows plus each pass's distinct clean rows), ``oom_retries``."""

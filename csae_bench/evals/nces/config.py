"""NCES eval settings, in SAEBench's config format (pydantic dataclass, a title and description
per field)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import BaseEvalConfig

from csae_bench.evals.nces.sampling import TOKEN_SAMPLING
from csae_bench.interventions.controls import get_control
from csae_bench.interventions.types import make_intervention


@dataclass
class NCESEvalConfig(BaseEvalConfig):
    model_name: str = Field(
        default="embedded",
        title="Model Name",
        description="The model the SAE belongs to (as the run names it).",
    )
    hook_name: str = Field(
        default="",
        title="Hook Name",
        description="The hook point the SAE reads and the interventions patch (filled in from the run).",
    )
    intervention: str = Field(
        default="zero",
        title="Intervention Type",
        description="How a feature is changed: zero, mean (over active tokens), mean_all, resample, clamp:<alpha>.",
    )
    control: str = Field(
        default="feature",
        title="Control Direction",
        description="The equal-size control edit R_i is measured with: 'feature' (default) = the decoder row of a random other alive feature of the same SAE, inactive at that token, with the same coefficient: does the active feature's direction matter more here than the dictionary's inactive directions? A dictionary of exchangeable random rows (random-decoder, permuted-decoder, init) scores NCES ≈ 0 by construction, so the nulls test specificity within a dictionary (see docs/validity.md); 'data' = a direction from the data shared by every SAE: the normalised difference of the clean residuals of a random pair of eval tokens, one fixed seeded set with one direction per eval token, the same for every SAE on this model, hook, eval tokens and seed (so a null dictionary's NCES is measured, not fixed by construction; random directions move the model more than data directions of equal norm, so random dictionaries score high against it: see docs/nces.md); 'isotropic' = a seeded random unit vector.",
    )
    effect_window: int | None = Field(
        default=4,
        title="Effect Window W",
        description="KL is summed over the next-token predictions at t..t+W-1; null = to the end of the context.",
    )
    n_features: int = Field(
        default=48,  # CPU default run budget (~12 minutes for everything, docs/default_run.md); the GPU suites sample 512
        title="Features Sampled",
        description="Alive features sampled (stratified by activation frequency, seeded).",
    )
    n_frequency_strata: int = Field(
        default=8,
        title="Frequency Strata",
        description="Equal-width strata of log activation frequency (empty ones dropped); features are sampled equally from each so rare features are represented, and reweighted in the means.",
    )
    tokens_per_feature: int = Field(
        default=5,  # CPU default run budget; the GPU suites use 16
        title="Tokens per Feature",
        description="Active tokens sampled per feature (fewer when the feature has fewer eligible active tokens).",
    )
    token_sampling: str = Field(
        default="uniform",
        title="Token Sampling",
        description="How a feature's tokens are drawn from its eligible active tokens: 'uniform' (at random) or 'position' (sorted by position, cut into tokens_per_feature equal-count strata, one token drawn from each: the same mean over active tokens, with the positions spread).",
    )
    min_tokens_for_verification: int = Field(
        default=3,
        title="Minimum Tokens for Verification",
        description="A feature with fewer sampled tokens gets an NCES but cannot be causally verified (its bootstrap CI is not meaningful).",
    )
    tau: float = Field(
        default=0.5,
        title="Verification Threshold tau",
        description="A feature is causally verified when the lower end of its NCES bootstrap CI exceeds tau.",
    )
    n_bootstrap: int = Field(
        default=1000,
        title="Bootstrap Resamples",
        description="Bootstrap resamples for the per-feature and aggregate confidence intervals.",
    )
    confidence_level: float = Field(
        default=0.95,
        title="Confidence Level",
        description="Two-sided level of the percentile bootstrap confidence intervals.",
    )
    n_contexts: int | None = Field(
        default=None,
        title="Eval Contexts",
        description="Eval contexts used (the first n of the run's eval tokens); null = all.",
    )
    compute_attribution: bool = Field(
        default=True,
        title="Compute Attribution",
        description="Also compute first-order attribution estimates (one backward pass) and their rank correlation with the exact effects.",
    )
    vocab_chunk: int = Field(
        default=4096,
        title="Vocabulary Chunk",
        description="Vocabulary columns unembedded at once by the engine.",
    )
    memory_budget_mb: float = Field(
        default=1024.0,
        title="Memory Budget (MiB)",
        description="Working memory for one intervention batch (sets the batch size) and for one unembedding pass.",
    )
    max_span: int = Field(
        default=8,
        title="Max Position Span per Batch",
        description="Largest distance between intervention positions stacked in one batch.",
    )
    reuse_kv: bool = Field(
        default=True,
        title="Reuse Clean Keys/Values",
        description="Reuse the clean keys/values of positions before each batch instead of re-running them.",
    )
    random_seed: int = Field(
        default=42,
        title="Random Seed",
        description="Seed for feature and token sampling, resampling, control directions (the data control's direction set included) and bootstrap.",
    )

    @model_validator(mode="after")
    def _check(self):
        make_intervention(self.intervention)  # raises with the valid names
        get_control(self.control)  # raises with the valid names
        if self.effect_window is not None and self.effect_window < 1:
            raise ValueError(f"effect_window={self.effect_window}: use W >= 1 or null.")
        if self.n_features < 1 or self.tokens_per_feature < 1 or self.n_frequency_strata < 1:
            raise ValueError("n_features, tokens_per_feature and n_frequency_strata must be >= 1.")
        if self.token_sampling not in TOKEN_SAMPLING:
            raise ValueError(
                f"token_sampling={self.token_sampling!r}: use one of {', '.join(TOKEN_SAMPLING)}."
            )
        if not 0 < self.confidence_level < 1:
            raise ValueError(f"confidence_level={self.confidence_level} must lie in (0, 1).")
        if self.n_bootstrap < 10:
            raise ValueError(f"n_bootstrap={self.n_bootstrap} is too few; use at least 10.")
        return self

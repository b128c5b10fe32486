"""NCES eval output in SAEBench's format: flat metric groups, per-feature details, provenance."""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import (
    DEFAULT_DISPLAY,
    BaseEvalOutput,
    BaseMetricCategories,
    BaseMetrics,
    BaseResultDetail,
)

from csae_bench.evals import _envelope
from csae_bench.evals._envelope import CSAE_BENCH_COMMIT_FIELD, SAE_BENCH_COMMIT_FIELD
from csae_bench.evals.nces.config import NCESEvalConfig

EVAL_TYPE_ID_NCES = "nces"
SCHEMA_PATH = Path(__file__).with_name(f"eval_output_schema_{EVAL_TYPE_ID_NCES}.json")


@dataclass
class NCESMetrics(BaseMetrics):
    nces_freq_weighted_mean: float | None = Field(
        title="NCES (Frequency-Weighted Mean)",
        description="Mean of NCES_i = (E_i - R_i) / (E_i + R_i) over alive features, weighted by activation frequency (stratified-sample estimate). Higher is better; 0 = no more effect than the control edit of equal norm (eval_config.control: by default the decoder row of a random other feature of the same SAE, inactive at that token).",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    nces_freq_weighted_mean_ci_low: float | None = Field(
        title="NCES (Frequency-Weighted) CI Low",
        description="Lower end of the bootstrap CI over features.",
    )
    nces_freq_weighted_mean_ci_high: float | None = Field(
        title="NCES (Frequency-Weighted) CI High",
        description="Upper end of the bootstrap CI over features.",
    )
    nces_mean: float | None = Field(
        title="NCES (Unweighted Mean)",
        description="Unweighted mean of NCES_i over alive features (stratified-sample estimate); the leaderboard's headline NCES. Higher is better; 0 = no more effect than the control edit of equal norm (with the default 'feature' control, what a dictionary of random directions scores by construction).",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    nces_mean_ci_low: float | None = Field(
        title="NCES (Unweighted) CI Low", description="Lower end of the bootstrap CI over features."
    )
    nces_mean_ci_high: float | None = Field(
        title="NCES (Unweighted) CI High",
        description="Upper end of the bootstrap CI over features.",
    )
    frac_causally_verified: float | None = Field(
        title="Fraction Causally Verified",
        description="Fraction of alive features whose NCES bootstrap CI lower end exceeds tau (stratified-sample estimate). Higher is better.",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    median_effect: float | None = Field(
        title="Median Effect E_i",
        description="Median over evaluated features of the mean KL (nats, summed over the window) of the intervention.",
    )
    median_control_effect: float | None = Field(
        title="Median Control Effect R_i",
        description="Median over evaluated features of the mean KL of the control edit of equal norm (see eval_config.control).",
    )
    mean_delta_loss: float | None = Field(
        title="Mean Delta Loss",
        description="Mean over evaluated features of the change in true next-token loss (summed over the window) caused by the intervention.",
    )
    effect_consistency: float | None = Field(
        title="Effect Consistency",
        description="Mean over features of the mean pairwise cosine similarity, across contexts, of the intervention's logit-change vectors at the intervened position, minus the same for the control edits (eval_config.control).",
    )
    n_alive_features: int = Field(
        title="Alive Features", description="Features active on at least one eval token."
    )
    n_dead_features: int = Field(
        title="Dead Features", description="Features never active on the eval tokens (not scored)."
    )
    n_features_sampled: int = Field(
        title="Features Sampled", description="Alive features sampled for intervention."
    )
    n_features_evaluated: int = Field(
        title="Features Evaluated",
        description="Sampled features with an NCES (the others are reported with their status).",
    )
    n_features_no_eligible_tokens: int = Field(
        title="Features Without Eligible Tokens",
        description="Sampled features active only at positions where no full effect window fits (e.g. BOS or the context end); reported, not scored.",
    )
    n_features_no_effect: int = Field(
        title="Features With No Effect",
        description="Sampled features whose intervention and control both had zero effect (NCES undefined); reported, not scored.",
    )


@dataclass
class NCESAttributionMetrics(BaseMetrics):
    attribution_spearman: float | None = Field(
        title="Attribution vs Exact Spearman (Delta Loss)",
        description="Spearman rank correlation between first-order attribution estimates (grad of the total loss at the hook times the edit) and the exact change in loss, over the sampled feature interventions. Higher is better.",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    attribution_spearman_abs_vs_kl: float | None = Field(
        title="|Attribution| vs Exact KL Spearman",
        description="Spearman rank correlation between |attribution| and the exact KL effect (attribution as a screen for large effects).",
    )


@dataclass
class NCESCostMetrics(BaseMetrics):
    n_interventions: int = Field(
        title="Interventions", description="Exact interventions run (features and controls)."
    )
    n_eval_tokens: int = Field(
        title="Eval Tokens",
        description="Eval tokens (contexts x context size) the clean pass ran over.",
    )
    seconds_total: float = Field(
        title="Seconds (Total)", description="Wall time of the whole eval."
    )
    seconds_clean_pass: float = Field(
        title="Seconds (Clean Pass)",
        description="Clean residual, keys/values and feature statistics.",
    )
    seconds_exact: float = Field(
        title="Seconds (Exact Effects)", description="Wall time of the exact engine."
    )
    seconds_attribution: float = Field(
        title="Seconds (Attribution)", description="Wall time of the attribution backward passes."
    )
    interventions_per_second: float = Field(
        title="Interventions per Second",
        description="Exact interventions per second of engine time.",
    )
    positions_run: int = Field(
        title="Positions Run",
        description="Sequence positions the engine ran through the layers after the hook.",
    )
    positions_full_rerun: int = Field(
        title="Positions of a Full Re-Run",
        description="Positions the same interventions would need without key/value reuse and truncation (each intervened sequence from position 0 to t+W).",
    )


@dataclass
class NCESMetricCategories(BaseMetricCategories):
    nces: NCESMetrics = Field(
        title="NCES",
        description="Normalized causal effect score and related metrics.",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    attribution: NCESAttributionMetrics = Field(
        title="Attribution",
        description="Agreement of first-order attribution with exact effects.",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    cost: NCESCostMetrics = Field(title="Cost", description="Tokens and time spent.")


@dataclass
class NCESFeatureDetail(BaseResultDetail):
    feature_idx: int = Field(title="Feature Index", description="")
    frequency: float = Field(
        title="Activation Frequency",
        description="Fraction of eval tokens where the feature is active.",
    )
    stratum: int = Field(
        title="Frequency Stratum",
        description="Index of its non-empty log-frequency stratum (0 = rarest).",
    )
    sampling_weight: float = Field(
        title="Sampling Weight",
        description="Alive features this sampled feature stands for (stratum size / stratum sample).",
    )
    status: str = Field(title="Status", description="ok | no_eligible_tokens | no_effect.")
    n_tokens: int = Field(title="Tokens", description="Active tokens intervened on.")
    effect: float | None = Field(title="E_i", description="Mean KL of the intervention.")
    control_effect: float | None = Field(
        title="R_i", description="Mean KL of the control edit of equal norm."
    )
    nces: float | None = Field(title="NCES_i", description="(E_i - R_i) / (E_i + R_i).")
    nces_ci_low: float | None = Field(
        title="NCES_i CI Low", description="Bootstrap over the feature's tokens."
    )
    nces_ci_high: float | None = Field(
        title="NCES_i CI High", description="Bootstrap over the feature's tokens."
    )
    causally_verified: bool = Field(
        title="Causally Verified",
        description="CI lower end > tau (and at least min_tokens_for_verification tokens).",
    )
    delta_loss: float | None = Field(
        title="Delta Loss", description="Mean change of the true next-token loss."
    )
    control_delta_loss: float | None = Field(
        title="Control Delta Loss",
        description="Mean change of the true next-token loss under the control.",
    )
    consistency: float | None = Field(
        title="Consistency",
        description="Mean pairwise cosine of logit-change vectors across contexts.",
    )
    control_consistency: float | None = Field(
        title="Control Consistency", description="The same for the control."
    )


@dataclass(config=ConfigDict(title="NCES"))
class NCESEvalOutput(BaseEvalOutput[NCESEvalConfig, NCESMetricCategories, NCESFeatureDetail]):
    """
    Normalized causal effect score: for each sampled feature, the output KL of intervening on it at
    active tokens, against a control edit of equal norm at the same tokens (by default along the
    decoder row of a random other feature of the same SAE, inactive at that token)
    (NCES = (E - R) / (E + R)), computed exactly by csae_bench's batch-wise intervention engine.
    """

    eval_config: NCESEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: NCESMetricCategories
    eval_result_details: list[NCESFeatureDetail] = Field(
        default_factory=list,
        title="Per-Feature NCES Results",
        description="One object per sampled feature.",
    )
    eval_type_id: str = Field(
        default=EVAL_TYPE_ID_NCES, title="Eval Type ID", description="The type of the evaluation"
    )
    sae_bench_commit_hash: str = SAE_BENCH_COMMIT_FIELD
    csae_bench_commit_hash: str | None = CSAE_BENCH_COMMIT_FIELD


def generate_schema(path: str | Path = SCHEMA_PATH) -> Path:
    """Write the JSON schema of :class:`NCESEvalOutput` the way SAEBench does for its own evals."""
    return _envelope.generate_schema(NCESEvalOutput, path)

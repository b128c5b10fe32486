"""Settings of the causal probing eval (``csae_probing``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import BaseEvalConfig

from csae_bench.evals.probing.tasks import DEFAULT_TASKS

EVAL_TYPE_ID_CSAE_PROBING = "csae_probing"


@dataclass
class ProbingEvalConfig(BaseEvalConfig):
    tasks: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TASKS),
        title="Tasks",
        description="Probing tasks: templated (sv_agreement, pronoun_gender, city_country), "
        "vader_sentiment, vader_domain:<movie|tweet|amazon|nyt> (one source against the rest), or "
        "a JSONL file with 'text' and 'label' fields (two labels, or '<file>.jsonl:<label>').",
    )
    examples_per_class: int = Field(
        default=80,  # CPU default run budget (~12 minutes for everything, docs/default_run.md); the GPU suites use 100
        title="Examples per Class",
        description="At most this many examples of each label per task (sampled with random_seed).",
    )
    test_fraction: float = Field(
        default=0.4,
        title="Test Fraction",
        description="Fraction of each class held out: probes are fitted on the rest and scored on it; "
        "causal verification runs on it.",
    )
    ks: list[int] = Field(
        default_factory=lambda: [1, 2, 5, 10],
        title="Probe Sizes k",
        description="Numbers of inputs (SAE features or residual dimensions) selected by mean "
        "difference for the k-sparse probes.",
    )
    verify_k: int = Field(
        default=5,
        title="Verified Set Size",
        description="Number of top mean-difference features intervened on in causal verification.",
    )
    interventions: list[str] = Field(
        default_factory=lambda: ["zero", "clamp:2"],
        title="Interventions",
        description="Interventions used for verification (csae_bench.interventions specs). 'zero' "
        "sets the features to 0; 'clamp:<a>' sets the features that point to the wrong label to "
        "a times their maximum on the task (steering against the label).",
    )
    n_random_sets: int = Field(
        default=3,  # CPU default run budget; the GPU suites use 8
        title="Random Feature Sets",
        description="Random sets of verify_k active features (one per seed) that the selected set "
        "is compared with.",
    )
    min_active_fraction: float = Field(
        default=0.05,
        title="Active Feature Threshold",
        description="A feature counts as active on a task (eligible for the random control) when "
        "it fires on at least this fraction of the task's training examples.",
    )
    max_verify_examples: int = Field(
        default=32,
        title="Verification Examples",
        description="At most this many test examples (balanced by label) per task in causal "
        "verification; the same examples are the base prompts of the interchange interventions.",
    )
    n_bootstrap: int = Field(
        default=1000,
        title="Bootstrap Resamples",
        description="Resamples of (random sets, examples) for the confidence interval of the "
        "selected-minus-random effect.",
    )
    min_relative_effect: float = Field(
        default=0.05,
        title="Minimum Relative Effect",
        description="A task passes an intervention when the lower end of the confidence interval of "
        "(selected − random effect) exceeds this fraction of the mean |clean margin| (0: any "
        "significant difference passes).",
    )
    confidence: float = Field(
        default=0.95,
        title="Confidence Level",
        description="Level of the bootstrap confidence interval.",
    )
    min_clean_accuracy: float = Field(
        default=0.8,
        title="Minimum Clean Accuracy",
        description="A task whose behaviour the model gets right less often than this (templated: "
        "the correct continuation wins; text tasks: the later-layer probe is right) is reported "
        "but not used to judge SAEs.",
    )
    behaviour_layer_offset: int = Field(
        default=4,
        title="Behaviour Probe Layer Offset",
        description="Text tasks: the behaviour probe reads the residual this many blocks after the "
        "SAE's hook (capped at the last block).",
    )
    max_tokens: int = Field(
        default=40,
        title="Max Tokens",
        description="Texts are cut to this many tokens (BOS included).",
    )
    batch_size: int = Field(
        default=32,
        title="Batch Size",
        description="Texts per forward pass.",
    )
    interchange: bool = Field(
        default=True,
        title="Interchange Interventions",
        description="On tasks with counterfactual pairs (the templated ones), measure "
        "interchange-intervention accuracy (IIA): the top-k features' values from the "
        "counterfactual prompt, patched into the base prompt, must flip the answer to the "
        "counterfactual's; with a whole-residual ceiling and random-feature, residual-dimension and "
        "principal-direction brackets of the same k (docs/probing.md).",
    )
    interchange_position: Literal["varied", "last"] = Field(
        default="varied",
        title="Interchange Position",
        description="Where the interchange patches the hook: 'varied', the one token where base "
        "and counterfactual differ (the subject, the name, the city); 'last', the answer position, "
        "where the probes read (the patched features and dimensions are then the k-sparse probes' "
        "own). Either way they are selected by the probes' class-mean-difference rule on the train "
        "examples' reads at that position.",
    )
    interchange_random_sets: int = Field(
        default=3,
        title="Interchange Random Sets",
        description="Seeded sets of k random active SAE features per k (the IIA bracket; mean ± sd "
        "over the sets).",
    )
    random_seed: int = Field(
        default=0,
        title="Random Seed",
        description="Seed for example sampling, splits, random feature sets and the bootstrap.",
    )

    @model_validator(mode="after")
    def _check(self) -> ProbingEvalConfig:
        if not self.tasks:
            raise ValueError("tasks is empty: name at least one probing task.")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks={self.ks}: give positive probe sizes.")
        if self.verify_k < 1:
            raise ValueError(f"verify_k={self.verify_k} must be at least 1.")
        if self.n_random_sets < 2:
            raise ValueError(
                f"n_random_sets={self.n_random_sets}: use at least 2 random sets for a confidence interval."
            )
        if self.interchange_random_sets < 3:
            raise ValueError(
                f"interchange_random_sets={self.interchange_random_sets}: use at least 3 random sets."
            )
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction={self.test_fraction} must be in (0, 1).")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence={self.confidence} must be in (0, 1).")
        if self.examples_per_class < 10:
            raise ValueError(f"examples_per_class={self.examples_per_class}: use at least 10.")
        return self

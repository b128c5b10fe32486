"""Result format of the causal probing eval, in SAEBench's eval-output schema."""

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
from csae_bench.evals.probing.config import EVAL_TYPE_ID_CSAE_PROBING, ProbingEvalConfig

_JUDGED = " Mean over the tasks the model solves."


def _acc(who: str, k: int | None, display: bool = False, judged: bool = True):
    what = (
        f"the top {k} {'SAE features' if who == 'sae' else 'residual-stream dimensions'} by class-mean difference"
        if k
        else "the full residual stream"
    )
    return Field(
        default=None,
        title=f"{'SAE' if who == 'sae' else 'LLM'} {'Top ' + str(k) + ' ' if k else ''}Test Accuracy",
        description=f"Test accuracy of a logistic probe on {what}." + (_JUDGED if judged else ""),
        json_schema_extra=DEFAULT_DISPLAY if display else None,
    )


@dataclass
class ProbingAccuracyMetrics(BaseMetrics):
    sae_top_1_test_accuracy: float | None = _acc("sae", 1, display=True)
    sae_top_2_test_accuracy: float | None = _acc("sae", 2)
    sae_top_5_test_accuracy: float | None = _acc("sae", 5, display=True)
    sae_top_10_test_accuracy: float | None = _acc("sae", 10)
    llm_top_1_test_accuracy: float | None = _acc("llm", 1)
    llm_top_2_test_accuracy: float | None = _acc("llm", 2)
    llm_top_5_test_accuracy: float | None = _acc("llm", 5)
    llm_top_10_test_accuracy: float | None = _acc("llm", 10)
    llm_test_accuracy: float | None = _acc("llm", None, display=True)


@dataclass
class CausalVerificationMetrics(BaseMetrics):
    fraction_tasks_verified: float | None = Field(
        default=None,
        title="Fraction of Tasks Verified",
        description="Fraction of the tasks the model solves on which intervening on the top-k "
        "selected features moves the behaviour more than random active features (bootstrap CI "
        "of the difference above min_relative_effect · mean |clean margin|) under every configured intervention. Higher is better.",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    mean_causal_effect_size: float | None = Field(
        default=None,
        title="Mean Causal Effect Size vs Random",
        description="(mean effect of the selected features − mean effect of random active "
        "features) / mean |clean margin|, averaged over judged tasks and interventions: the "
        "fraction of the model's clean margin the selected features remove beyond random ones. "
        "Higher is better.",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    mean_cohens_dz: float | None = Field(
        default=None,
        title="Mean Cohen's d_z",
        description="Per-example (selected − random) effect difference over its standard "
        "deviation, averaged over judged tasks and interventions.",
    )


@dataclass
class TaskCountMetrics(BaseMetrics):
    n_tasks: int = Field(title="Tasks", description="Tasks evaluated.")
    n_tasks_judged: int = Field(
        title="Tasks Judged",
        description="Tasks whose behaviour the model gets right at least min_clean_accuracy of "
        "the time; only these enter the means.",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    mean_model_clean_accuracy: float = Field(
        title="Mean Model Clean Accuracy",
        description="Mean over all tasks of how often the clean model's behaviour sides with the label.",
    )


def _iia(who: str, k: int | None, display: bool = False):
    what = {
        "sae": f"the top {k} SAE features (the probe's selection)",
        "random": f"{k} random active SAE features (mean over the seeded sets)",
        "resid": f"the top {k} residual dimensions by class-mean difference",
        "pca": f"the top {k} principal directions of the residual",
        "ceiling": "the whole residual vector",
    }[who]
    return Field(
        default=None,
        title=f"IIA {who} {'top ' + str(k) if k else ''}".strip(),
        description=f"Interchange-intervention accuracy when patching {what} from the "
        "counterfactual run at the interchange position: fraction of pairs whose answer flips to "
        "the counterfactual's." + _JUDGED + " Higher is better.",
        json_schema_extra=DEFAULT_DISPLAY if display else None,
    )


@dataclass
class InterchangeMetrics(BaseMetrics):
    sae_iia_top_1: float | None = _iia("sae", 1, display=True)
    sae_iia_top_2: float | None = _iia("sae", 2)
    sae_iia_top_5: float | None = _iia("sae", 5, display=True)
    sae_iia_top_10: float | None = _iia("sae", 10)
    random_iia_top_1: float | None = _iia("random", 1)
    random_iia_top_2: float | None = _iia("random", 2)
    random_iia_top_5: float | None = _iia("random", 5)
    random_iia_top_10: float | None = _iia("random", 10)
    resid_iia_top_1: float | None = _iia("resid", 1)
    resid_iia_top_2: float | None = _iia("resid", 2)
    resid_iia_top_5: float | None = _iia("resid", 5)
    resid_iia_top_10: float | None = _iia("resid", 10)
    pca_iia_top_1: float | None = _iia("pca", 1)
    pca_iia_top_2: float | None = _iia("pca", 2)
    pca_iia_top_5: float | None = _iia("pca", 5)
    pca_iia_top_10: float | None = _iia("pca", 10)
    ceiling_iia: float | None = _iia("ceiling", None, display=True)
    n_tasks_with_pairs: int = Field(
        default=0,
        title="Tasks with Pairs",
        description="Judged tasks with at least one counterfactual pair the model answers "
        "correctly in both versions; the IIA means are over these.",
    )


@dataclass
class ProbingMetricCategories(BaseMetricCategories):
    probing: ProbingAccuracyMetrics = Field(
        title="k-Sparse Probing", description="Probe accuracies.", json_schema_extra=DEFAULT_DISPLAY
    )
    causal: CausalVerificationMetrics = Field(
        title="Causal Verification",
        description="Do the selected features cause the behaviour they detect?",
        json_schema_extra=DEFAULT_DISPLAY,
    )
    tasks: TaskCountMetrics = Field(title="Tasks", description="Which tasks the model solves.")
    interchange: InterchangeMetrics = Field(
        default_factory=InterchangeMetrics,
        title="Interchange Interventions",
        description="Interchange-intervention accuracy (Geiger et al.; MIB 2025) on tasks with "
        "counterfactual pairs.",
        json_schema_extra=DEFAULT_DISPLAY,
    )


@dataclass
class ProbeAccuracyDetail:
    k: int | None = Field(
        title="k", description="Probe size; null for the full residual-stream probe."
    )
    sae_test_accuracy: float | None = Field(
        title="SAE Test Accuracy", description="Probe on the top-k SAE features."
    )
    llm_test_accuracy: float | None = Field(
        title="LLM Test Accuracy",
        description="Probe on the top-k residual dimensions (all of them when k is null).",
    )
    sae_features: list[int] = Field(
        default_factory=list,
        title="SAE Features",
        description="Selected features, largest |mean difference| first.",
    )


@dataclass
class InterventionVerificationDetail:
    intervention: str = Field(title="Intervention", description="Intervention spec.")
    effect_selected: float = Field(
        title="Effect of Selected Features",
        description="Mean over examples of clean − edited signed margin.",
    )
    effect_random: float = Field(
        title="Effect of Random Features", description="Same, averaged over the random active sets."
    )
    effect_random_per_set: list[float] = Field(
        title="Effect per Random Set", description="One value per random seed."
    )
    difference: float = Field(
        title="Selected − Random", description="effect_selected − effect_random."
    )
    ci_low: float = Field(
        title="CI Low",
        description="Lower end of the bootstrap confidence interval of the difference.",
    )
    ci_high: float = Field(
        title="CI High",
        description="Upper end of the bootstrap confidence interval of the difference.",
    )
    relative_effect: float = Field(
        title="Relative Effect", description="difference / mean |clean margin|."
    )
    cohens_dz: float = Field(
        title="Cohen's d_z", description="Mean / sd of the per-example differences."
    )
    passed: bool = Field(
        title="Passed", description="ci_low > min_relative_effect · mean |clean margin|."
    )
    n_examples: int = Field(title="Examples", description="Test examples the interventions ran on.")


@dataclass
class IIAEstimate:
    iia: float | None = Field(
        title="IIA", description="Fraction of pairs whose patched answer is the counterfactual's."
    )
    ci_low: float | None = Field(title="CI Low", description="Wilson interval, lower end.")
    ci_high: float | None = Field(title="CI High", description="Wilson interval, upper end.")
    n_success: int = Field(title="Flipped", description="Pairs (× sets) whose answer flipped.")
    n: int = Field(title="Trials", description="Pairs (× random sets, for the random bracket).")


@dataclass
class InterchangeKDetail:
    k: int = Field(
        title="k", description="Patched dimensions (features, residual dims, directions)."
    )
    sae: IIAEstimate = Field(title="SAE Features", description="The top-k selected features.")
    sae_features: list[int] = Field(title="SAE Features", description="The patched features.")
    random: IIAEstimate | None = Field(
        default=None,
        title="Random Features",
        description="k random active features, pooled over the sets (null: too few active).",
    )
    random_mean: float | None = Field(
        default=None, title="Random Mean", description="Mean IIA over the random sets."
    )
    random_sd: float | None = Field(
        default=None, title="Random SD", description="Sample sd of the IIA over the random sets."
    )
    random_per_set: list[float] = Field(
        default_factory=list, title="Random per Set", description="IIA of each random set."
    )
    resid: IIAEstimate | None = Field(
        default=None,
        title="Residual Dimensions",
        description="The k residual dimensions with the largest |class-mean difference| on the "
        "train reads (the residual probe's selection at 'last').",
    )
    resid_dims: list[int] = Field(
        default_factory=list, title="Residual Dimensions", description="The patched dimensions."
    )
    pca: IIAEstimate | None = Field(
        default=None,
        title="Principal Directions",
        description="The projection onto the top-k principal directions of the train reads.",
    )


@dataclass
class InterchangeDetail:
    position: str = Field(title="Position", description="'last' (answer) or 'varied' token.")
    n_candidates: int = Field(title="Candidates", description="Test examples paired.")
    n_unaligned: int = Field(
        title="Unaligned",
        description="Dropped: no counterfactual of the same token length differing at one token.",
    )
    n_incorrect: int = Field(
        title="Incorrect", description="Dropped: the model answers a version wrong."
    )
    n_pairs: int = Field(title="Pairs", description="Pairs the IIA is measured on.")
    ceiling: IIAEstimate | None = Field(
        default=None, title="Ceiling", description="The whole residual vector patched."
    )
    per_k: list[InterchangeKDetail] = Field(
        default_factory=list, title="Per k", description="One entry per probe size k."
    )
    note: str = Field(default="", title="Note", description="Why something is missing, if so.")


@dataclass
class ProbingResultDetail(BaseResultDetail):
    task_name: str = Field(title="Task", description="Task name.")
    source: str = Field(
        title="Source", description="templated, or the labelled set the task comes from."
    )
    label_names: list[str] = Field(title="Labels", description="Names of labels 0 and 1.")
    read: str = Field(title="Read Position", description="'last' token or 'mean' over tokens.")
    behaviour: str = Field(
        title="Behaviour",
        description="logit_diff (correct − incorrect next token) or later_probe (probe logit at a later layer).",
    )
    behaviour_detail: str = Field(
        title="Behaviour Detail", description="Answer tokens or the probe's layer."
    )
    n_train: int = Field(title="Train Examples", description="Examples the probes were fitted on.")
    n_test: int = Field(title="Test Examples", description="Examples the probes were scored on.")
    model_clean_accuracy: float = Field(
        title="Model Clean Accuracy",
        description="How often the clean behaviour sides with the label (test split).",
    )
    model_mean_clean_margin: float = Field(
        title="Mean Clean Margin",
        description="Mean signed clean margin on the verification examples.",
    )
    judged: bool = Field(
        title="Judged",
        description="Model clean accuracy ≥ min_clean_accuracy; otherwise the task is reported but not used.",
    )
    probes: list[ProbeAccuracyDetail] = Field(
        default_factory=list,
        title="Probes",
        description="One entry per k (and the full residual probe).",
    )
    n_active_features: int = Field(
        default=0,
        title="Active Features",
        description="Features active on ≥ min_active_fraction of train examples (the random control's pool).",
    )
    verification: list[InterventionVerificationDetail] = Field(
        default_factory=list,
        title="Verification",
        description="One entry per intervention; empty when the task is not judged.",
    )
    verified: bool | None = Field(
        default=None,
        title="Verified",
        description="Passed every intervention; null when not judged.",
    )
    interchange: InterchangeDetail | None = Field(
        default=None,
        title="Interchange Interventions",
        description="IIA with its ceiling and brackets; null for tasks without pairs or not judged.",
    )
    note: str = Field(
        default="", title="Note", description="Why a task was not judged or verified, if so."
    )


@dataclass(config=ConfigDict(title="Causal Probing"))
class ProbingEvalOutput(
    BaseEvalOutput[ProbingEvalConfig, ProbingMetricCategories, ProbingResultDetail]
):
    """
    Targeted probing that checks causality: k-sparse probes find the SAE features that predict a
    label (templated tasks whose label decides the next token, VADER sentiment and domain), then
    intervening on those features must move the model's behaviour more than intervening on random
    active features.
    """

    eval_config: ProbingEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: ProbingMetricCategories
    eval_result_details: list[ProbingResultDetail] = Field(
        default_factory=list,
        title="Per-Task Results",
        description="Probe accuracies and causal verification for each task.",
    )
    eval_type_id: str = Field(default=EVAL_TYPE_ID_CSAE_PROBING)
    sae_bench_commit_hash: str = SAE_BENCH_COMMIT_FIELD
    csae_bench_commit_hash: str | None = CSAE_BENCH_COMMIT_FIELD


SCHEMA_PATH = Path(__file__).with_name(f"eval_output_schema_{EVAL_TYPE_ID_CSAE_PROBING}.json")


def generate_schema(path: str | Path = SCHEMA_PATH) -> Path:
    """Write the JSON schema of :class:`ProbingEvalOutput` the way SAEBench does for its own evals."""
    return _envelope.generate_schema(ProbingEvalOutput, path)

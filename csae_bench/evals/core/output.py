"""The core eval's output: SAEBench's ``CoreEvalOutput`` with one added, labelled metric (and
csae_bench's commit, :mod:`csae_bench.evals._envelope`).

``reconstruction_quality.explained_variance_mean_centred`` sits next to SAEBench's own
``explained_variance``. SAEBench 0.6's denominator is ``E‖x‖²`` minus the square of the mean
*squared* activation, which is (nearly) the spread around zero rather than around the mean
activation; ours is ``1 - Σ‖x - x̂‖² / Σ‖x - mean(x)‖²`` over the same tokens. The file still
validates against SAEBench's ``CoreEvalOutput`` (the extra field is ignored there) and against
:class:`CsaeCoreEvalOutput` (where it is required).
"""

from __future__ import annotations

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import DEFAULT_DISPLAY
from sae_bench.evals.core.eval_output import (
    CoreEvalOutput,
    CoreMetricCategories,
    ReconstructionQualityMetrics,
)

from csae_bench.evals._envelope import CSAE_BENCH_COMMIT_FIELD, SAE_BENCH_COMMIT_FIELD


@dataclass
class CsaeReconstructionQualityMetrics(ReconstructionQualityMetrics):
    explained_variance_mean_centred: float = Field(
        title="Explained Variance (mean-centred, csae_bench)",
        description=(
            "1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the same tokens as "
            "explained_variance (special tokens excluded). Added by csae_bench: SAEBench 0.6's "
            "explained_variance does not centre on the mean activation."
        ),
        json_schema_extra=DEFAULT_DISPLAY,
    )


@dataclass
class CsaeCoreMetricCategories(CoreMetricCategories):
    reconstruction_quality: CsaeReconstructionQualityMetrics = Field(
        title="Reconstruction Quality",
        description="Metrics related to how well the SAE reconstructs the original activation",
    )


@dataclass(config=ConfigDict(title="Core (csae_bench)"))
class CsaeCoreEvalOutput(CoreEvalOutput):
    """SAEBench's core eval output plus a mean-centred explained variance (eval type ``core``)."""

    eval_result_metrics: CsaeCoreMetricCategories
    sae_bench_commit_hash: str = SAE_BENCH_COMMIT_FIELD
    csae_bench_commit_hash: str | None = CSAE_BENCH_COMMIT_FIELD

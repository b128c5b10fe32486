"""Causal probing eval (``csae_probing``, docs/probing.md): k-sparse probes find the SAE features that
predict a label; intervening on them must move the behaviour the label drives more than
intervening on random active features. See ``docs/probing.md``."""

from __future__ import annotations

from typing import Any

from csae_bench.evals.probing.config import EVAL_TYPE_ID_CSAE_PROBING, ProbingEvalConfig
from csae_bench.evals.probing.output import ProbingEvalOutput
from csae_bench.evals.probing.run import run
from csae_bench.evals.registry import EvalContext, EvalSpec, register_eval


def make_config(ctx: EvalContext, overrides: dict[str, Any]) -> ProbingEvalConfig:
    """The default config for a run, seeded from the context; ``overrides`` set any field."""
    return ProbingEvalConfig(**{"random_seed": ctx.seed, **overrides})


SPEC = register_eval(
    EvalSpec(
        eval_type_id=EVAL_TYPE_ID_CSAE_PROBING,
        config_cls=ProbingEvalConfig,
        output_cls=ProbingEvalOutput,
        run=run,
        headline={
            "probing.sae_top_1_test_accuracy": "higher",
            "probing.sae_top_5_test_accuracy": "higher",
            "causal.fraction_tasks_verified": "higher",
            "causal.mean_causal_effect_size": "higher",
            "interchange.sae_iia_top_1": "higher",
        },
        make_config=make_config,
        context_fields=frozenset({"random_seed"}),
        description="Targeted probing with causal verification of the selected features.",
        hook_kinds=("hook_resid_pre", "hook_resid_post"),  # model_io.resume reads both
    )
)

__all__ = [
    "EVAL_TYPE_ID_CSAE_PROBING",
    "ProbingEvalConfig",
    "ProbingEvalOutput",
    "SPEC",
    "make_config",
    "run",
]

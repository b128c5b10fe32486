"""The NCES eval (``eval_type_id = "nces"``): normalized causal effect score of SAE features."""

from csae_bench.evals.nces.config import NCESEvalConfig
from csae_bench.evals.nces.output import EVAL_TYPE_ID_NCES, NCESEvalOutput
from csae_bench.evals.nces.run import evaluate_sae, run, run_nces_eval
from csae_bench.evals.registry import EvalSpec, register_eval


def _make_config(ctx, overrides: dict) -> NCESEvalConfig:
    base = {"model_name": ctx.model_name, "hook_name": ctx.hook_name, "random_seed": ctx.seed}
    return NCESEvalConfig(**{**base, **overrides})


SPEC = register_eval(
    EvalSpec(
        eval_type_id=EVAL_TYPE_ID_NCES,
        config_cls=NCESEvalConfig,
        output_cls=NCESEvalOutput,
        run=run,
        headline={  # the first is the leaderboard's NCES (table, L0-vs-NCES plot, ~null flag)
            "nces.nces_mean": "higher",
            "nces.nces_freq_weighted_mean": "higher",
            "nces.frac_causally_verified": "higher",
            "attribution.attribution_spearman": "higher",
        },
        make_config=_make_config,
        context_fields=frozenset({"model_name", "hook_name", "random_seed"}),
        description="Normalized causal effect score: feature interventions vs equal-norm control edits (by default the decoder row of a random other feature of the same SAE, inactive at that token).",
    )
)

__all__ = [
    "EVAL_TYPE_ID_NCES",
    "NCESEvalConfig",
    "NCESEvalOutput",
    "SPEC",
    "evaluate_sae",
    "run",
    "run_nces_eval",
]

"""Run SAEBench's core eval (``sae_bench.evals.core.main.run_evals``) offline.

SAEBench's own driver (``multiple_evals``) loads the model from the hub and turns any exception
into an empty result; this wrapper instead hands ``run_evals`` our model object and an
``ActivationsStore`` over the eval tokens held in memory, and lets failures raise.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import torch
from sae_bench.evals.core import main as sb_core
from sae_bench.evals.core.eval_config import CoreEvalConfig
from sae_bench.sae_bench_utils.general_utils import load_and_format_sae

from csae_bench import hooks
from csae_bench.errors import SaeMismatchError
from csae_bench.evals._envelope import envelope
from csae_bench.evals.core.output import (
    CsaeCoreEvalOutput,
    CsaeCoreMetricCategories,
    CsaeReconstructionQualityMetrics,
)
from csae_bench.evals.core.shared_passes import SharedPasses
from csae_bench.evals.registry import EvalContext, EvalSpec, register_eval
from csae_bench.metrics import explained_variance_mean_centred

logger = logging.getLogger(__name__)


CORE_PROMPTS_PER_BATCH = 4
"""Contexts per SAEBench core batch when a suite does not say (memory: see make_core_config)."""


def make_core_config(ctx: EvalContext, overrides: dict[str, Any]) -> CoreEvalConfig:
    """Every core metric on, sized for the eval tokens in ``ctx``; ``overrides`` win."""
    n_ctx, ctx_len = ctx.eval_tokens.shape
    # 4 prompts per batch: SAEBench holds several full-vocabulary logit tensors per batch (8 × 128
    # × 262,144 logits of Gemma-3 put the default run's peak RSS 3.3 GB higher); the CE-loss score
    # still reads 8 contexts, in two batches.
    per_batch = int(overrides.get("batch_size_prompts", min(CORE_PROMPTS_PER_BATCH, n_ctx)))
    settings: dict[str, Any] = dict(
        model_name=ctx.model_name,
        batch_size_prompts=per_batch,
        n_eval_reconstruction_batches=max(1, min(8, n_ctx) // per_batch),
        n_eval_sparsity_variance_batches=max(1, n_ctx // per_batch),
        dataset=str(ctx.extra.get("corpus", "csae_bench eval tokens")),
        context_size=ctx_len,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
        compute_featurewise_weight_based_metrics=True,
        exclude_special_tokens_from_reconstruction=True,
        llm_dtype=str(next(ctx.run_model().parameters()).dtype).removeprefix("torch."),
    )
    settings.update(overrides)
    return CoreEvalConfig(**settings)


class _BatchRecorder:
    """Wraps ``ActivationsStore.get_batch_tokens`` to keep every batch SAEBench draws, so the
    mean-centred explained variance is computed on exactly the tokens of SAEBench's own."""

    def __init__(self, store) -> None:
        self.batches: list[torch.Tensor] = []
        self._inner = store.get_batch_tokens
        store.get_batch_tokens = self

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        batch = self._inner(*args, **kwargs)
        self.batches.append(batch)
        return batch


@contextlib.contextmanager
def quiet_upstream_warnings() -> Iterator[None]:
    """Silence two per-SAE ``UserWarning``s of SAELens/torch that a user cannot act on: the
    ActivationsStore's "fewer samples (N) than … (its default training budget)" — the eval set is
    in memory and is meant to be small — and torch's "To copy construct from a tensor" about a
    copy made inside the upstream code. Every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"The training dataset contains fewer samples", category=UserWarning
        )
        warnings.filterwarnings(
            "ignore", message=r"To copy construct from a tensor", category=UserWarning
        )
        yield


class NonFiniteSAEError(SaeMismatchError):
    """The SAE's weights or its reconstruction of the eval activations hold NaN or ±inf: an SAE
    that cannot be evaluated as given (bad input, exit 2, one line naming it).

    Raised before SAEBench runs: SAEBench would replace the resulting NaN metrics by ``-1``, which
    reads as a real (even the best) ``mse``, CE-loss score or explained variance."""


def check_finite_sae(sae, sae_id: str, model, hook_name: str, tokens_BT: torch.Tensor) -> None:
    """Raise :class:`NonFiniteSAEError` naming ``sae_id`` if a parameter of ``sae`` or its
    reconstruction ``decode(encode(x))`` of the activations at ``hook_name`` on ``tokens_BT``
    ``[batch, ctx]`` is not finite."""
    bad = [name for name, p in sae.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteSAEError(
            f"SAE {sae_id} has NaN or infinite weights ({', '.join(bad)}); it cannot be "
            "evaluated. Re-export or retrain it."
        )
    layer = hooks.layer_of_hook(hook_name)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens_BT, names_filter=[hook_name], stop_at_layer=layer + 1, prepend_bos=False
        )
        x_ND = cache[hook_name].flatten(0, -2).to(sae.W_dec.device, sae.W_dec.dtype)
        n_bad = int((~torch.isfinite(sae.decode(sae.encode(x_ND)))).any(-1).sum())
    if n_bad:
        raise NonFiniteSAEError(
            f"SAE {sae_id} reconstructs {n_bad} of {x_ND.shape[0]} eval activations at "
            f"{hook_name} as NaN or infinity; it cannot be evaluated. Check its dtype and "
            "normalization settings."
        )


def non_finite_metrics(metrics: dict[str, Any]) -> dict[str, str]:
    """``{"category.metric": "nan"|"inf"|"-inf"}`` for the non-finite values of SAEBench's
    metrics dict (before its NaN→-1 replacement, which would hide them)."""
    from csae_bench.utils import replace_non_finite

    return replace_non_finite(metrics)[1]


@torch.no_grad()
def mean_centred_explained_variance(
    sae, model, hook_name: str, tokens_BT: torch.Tensor, ignore: set[int | None]
) -> float:
    """``1 - Σ‖x - x̂‖² / Σ‖x - mean(x)‖²`` (float64) over the non-special tokens of ``tokens_BT``
    (:func:`csae_bench.metrics.explained_variance_mean_centred`)."""
    layer = hooks.layer_of_hook(hook_name)
    _, cache = model.run_with_cache(
        tokens_BT, names_filter=[hook_name], stop_at_layer=layer + 1, prepend_bos=False
    )
    keep_BT = hooks.keep_mask(tokens_BT, ignore)
    x_ND = cache[hook_name][keep_BT].to(sae.W_dec.device, sae.W_dec.dtype)
    x_hat_ND = sae.decode(sae.encode(x_ND))
    return explained_variance_mean_centred(x_ND, x_hat_ND, dtype=torch.float64)


def run_core_eval(ctx: EvalContext, sae, sae_id: str, config: CoreEvalConfig) -> CsaeCoreEvalOutput:
    """SAEBench core metrics for ``sae`` on ``ctx.eval_tokens``; raises on any failure —
    :class:`NonFiniteSAEError` (naming ``sae_id``) for non-finite weights or reconstructions.
    A non-finite metric of a finite SAE is kept as is and named in
    ``eval_result_unstructured["non_finite_metrics"]``."""
    import datasets
    from sae_lens import ActivationsStore

    release = str(ctx.extra.get("sae_release", "custom"))
    _, sae, _ = load_and_format_sae(release, sae, ctx.device)  # fills cfg fields SAEBench reads
    run_model = ctx.run_model()  # the run's model (loads it, releasing the engine's, if needed)
    llm_dtype = next(run_model.parameters()).dtype
    if sae.W_dec.dtype != llm_dtype:
        # SAEBench's runners put the SAE in the model's dtype (sae.to(device, llm_dtype) in
        # sae_bench/evals/core/main.py); its splice hooks do not cast, so a bf16 model needs a
        # bf16 SAE. The mean-centred EV below accumulates in float64 regardless.
        sae = sae.to(dtype=llm_dtype)
    if sae.cfg.context_size is None:
        sae.cfg.context_size = sae.cfg.metadata.context_size = config.context_size
    if sae.cfg.hook_name != ctx.hook_name:
        raise SaeMismatchError(
            f"SAE {sae_id} reads {sae.cfg.hook_name}, but this run evaluates {ctx.hook_name}; "
            "pass SAEs trained on the run's hook (--layer)."
        )
    n_needed = config.batch_size_prompts * max(
        config.n_eval_reconstruction_batches, config.n_eval_sparsity_variance_batches
    )
    if n_needed > len(ctx.eval_tokens):
        logger.warning(
            "core: %d contexts requested per phase but only %d eval contexts; SAEBench "
            "will cycle through them.",
            n_needed,
            len(ctx.eval_tokens),
        )
    dataset = datasets.Dataset.from_dict(
        {"tokens": ctx.eval_tokens[:, : config.context_size].tolist()}
    )
    with quiet_upstream_warnings():
        store = ActivationsStore.from_sae(
            run_model,
            sae,
            dataset=dataset,
            context_size=config.context_size,
            store_batch_size_prompts=config.batch_size_prompts,
            device=ctx.device,
        )
    recorder = _BatchRecorder(store)
    ignore = hooks.special_token_ids(run_model, ctx.eval_tokens)
    # clean and zero-ablated passes computed once per run
    model = SharedPasses(run_model, ctx.cache)
    # before SAEBench, whose NaN→-1 would make a broken SAE look best; not in seconds_total
    check_finite_sae(
        sae, sae_id, model, ctx.hook_name, ctx.eval_tokens[: config.batch_size_prompts]
    )
    start = time.perf_counter()
    with quiet_upstream_warnings():
        metrics, feature_metrics = sb_core.run_evals(
            sae, store, model, config, ignore_tokens=ignore
        )
    if not metrics:
        raise RuntimeError(
            f"SAEBench core eval computed no metrics for {sae_id}; check the config flags."
        )
    if config.compute_variance_metrics:
        sv_batches = recorder.batches[-config.n_eval_sparsity_variance_batches :]
        metrics["reconstruction_quality"]["explained_variance_mean_centred"] = (
            mean_centred_explained_variance(
                sae, model, ctx.hook_name, torch.cat(sv_batches), ignore
            )
        )
    if (
        config.compute_featurewise_density_statistics
        and config.compute_featurewise_weight_based_metrics
    ):
        metrics["misc_metrics"] = sb_core.calculate_misc_metrics(feature_metrics)
        details = sb_core.convert_feature_metrics(
            sb_core.replace_nans_with_negative_one(feature_metrics)
        )
    else:
        details = []
    # Not SAEBench's NaN→-1 replacement on the metrics: -1 reads as a real value (the best mse).
    # A non-finite metric of a finite SAE (e.g. kl_div_score = -inf from SAEBench's
    # log(softmax) underflow) stays non-finite: the result file stores it as the string "-inf",
    # which SAEBench's float fields accept, and the leaderboard shows it as null with a flag.
    non_finite = non_finite_metrics(metrics)
    if non_finite:
        logger.warning("core: non-finite metrics for %s: %s", sae_id, non_finite)
    seconds = time.perf_counter() - start
    logger.info("core eval of %s took %.1f s", sae_id, seconds)
    categories = CsaeCoreMetricCategories(
        **{
            name: (CsaeReconstructionQualityMetrics if name == "reconstruction_quality" else cls)(
                **metrics.get(name, {})
            )
            for name, cls in _CATEGORY_CLASSES.items()
        }
    )
    return CsaeCoreEvalOutput(
        eval_config=config,
        eval_result_metrics=categories,
        eval_result_details=details,
        # seconds_total is read by the overhead checks
        eval_result_unstructured={"seconds_total": seconds, "non_finite_metrics": non_finite},
        **envelope(sae, sae_id, release),
    )


# Which metric category each SAEBench ``compute_*`` flag fills.
_FLAG_CATEGORY = {
    "compute_kl": "model_behavior_preservation",
    "compute_ce_loss": "model_performance_preservation",
    "compute_l2_norms": "shrinkage",
    "compute_sparsity_metrics": "sparsity",
    "compute_variance_metrics": "reconstruction_quality",
    "compute_featurewise_density_statistics": "misc_metrics",
    "compute_featurewise_weight_based_metrics": "misc_metrics",
}


def check_core_overrides(overrides: dict[str, Any]) -> None:
    """Reject a ``compute_*`` flag set false when the metrics it fills are required fields of
    SAEBench's output classes (the result could not validate, after all the work). A flag this
    table does not know is rejected too rather than trusted. Raises ``ValueError`` naming the key.
    """
    for key, value in overrides.items():
        if not key.startswith("compute_") or value is not False:
            continue
        category = _FLAG_CATEGORY.get(key)
        cls = _CATEGORY_CLASSES.get(category) if category else None
        required = (
            [n for n, f in cls.__pydantic_fields__.items() if f.is_required()] if cls else ["?"]
        )
        if required:
            raise ValueError(
                f"[evals.core] {key} = false cannot be used: SAEBench's core output requires "
                f"the metrics it computes ({category or 'unknown category'}: "
                f"{', '.join(required[:3])}...). Remove the key."
            )


_CATEGORY_CLASSES = {
    "model_behavior_preservation": sb_core.ModelBehaviorPreservationMetrics,
    "model_performance_preservation": sb_core.ModelPerformancePreservationMetrics,
    "reconstruction_quality": sb_core.ReconstructionQualityMetrics,
    "shrinkage": sb_core.ShrinkageMetrics,
    "sparsity": sb_core.SparsityMetrics,
    "token_stats": sb_core.TokenStatsMetrics,
    "misc_metrics": sb_core.MiscMetrics,
}

CORE_SPEC = register_eval(
    EvalSpec(
        eval_type_id="core",
        config_cls=CoreEvalConfig,
        output_cls=CsaeCoreEvalOutput,
        run=run_core_eval,
        headline={
            "model_performance_preservation.ce_loss_score": "higher",
            "model_behavior_preservation.kl_div_score": "higher",
            "reconstruction_quality.explained_variance_mean_centred": "higher",
            "reconstruction_quality.explained_variance": "higher",
            "reconstruction_quality.mse": "lower",
            "misc_metrics.frac_alive": "higher",
        },
        make_config=make_core_config,
        # every field but `verbose` is sized or fixed by make_core_config; suite overrides count
        context_fields=frozenset(f.name for f in fields(CoreEvalConfig)) - {"verbose"},
        description="SAEBench core: reconstruction, sparsity, CE/KL preservation (+ mean-centred EV).",
        # SAEBench's core eval splices any d_model-wide hook of a block.
        hook_kinds=(
            "hook_resid_pre",
            "hook_resid_mid",
            "hook_resid_post",
            "hook_mlp_out",
            "hook_attn_out",
        ),
        check_overrides=check_core_overrides,
    )
)

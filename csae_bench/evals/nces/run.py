"""Run the NCES eval for SAEs at one hook of a model (docs/nces.md).

For each sampled alive feature ``i`` and each of its sampled active tokens, the engine measures the
exact effect (KL over the window) of the intervention ``h + (f'_i − f_i) d_i`` and of a control edit
of the same norm at the same token; ``NCES_i = (E_i − R_i)/(E_i + R_i)``. The control direction is
``config.control`` (:mod:`csae_bench.interventions.controls`): by default (``"feature"``) the
decoder row of a random other alive feature of the same SAE inactive at that token; ``"data"`` the
token's direction in one fixed, seeded set of data directions (normalised differences of the clean
residuals of random pairs of eval tokens) shared by every SAE evaluated on the same model, hook,
eval tokens and seed — computed once per run and kept in the eval's shared cache
(:func:`data_control_directions`); ``"isotropic"`` a seeded random unit vector (the original design's
original control; docs/nces.md says why the default is ``"feature"``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from csae_bench import hooks
from csae_bench.evals._envelope import envelope
from csae_bench.evals.nces.config import NCESEvalConfig
from csae_bench.evals.nces.output import (
    NCESAttributionMetrics,
    NCESCostMetrics,
    NCESEvalOutput,
    NCESFeatureDetail,
    NCESMetricCategories,
    NCESMetrics,
)
from csae_bench.evals.nces.sampling import collect_active, sample_tokens, stratified_features
from csae_bench.evals.nces.scoring import (
    logit_gram,
    mean_pairwise_cosine,
    score_feature,
)
from csae_bench.interventions.controls import (
    NEEDS_DATA_DIRECTIONS,
    DataDirections,
    data_directions,
    get_control,
)
from csae_bench.interventions.engine import EffectEngine, EngineConfig, check_sae_matches
from csae_bench.interventions.types import feature_edit_BTD, make_intervention
from csae_bench.stats import spearman, weighted_mean_ci
from csae_bench.utils import cached

logger = logging.getLogger(__name__)


def engine_config(config: NCESEvalConfig) -> EngineConfig:
    return EngineConfig(
        window=config.effect_window,
        vocab_chunk=config.vocab_chunk,
        memory_budget_mb=config.memory_budget_mb,
        max_span=config.max_span,
        reuse_kv=config.reuse_kv,
    )


def build_engine(
    model, hook_name: str, tokens: Tensor, config: NCESEvalConfig, cache: dict | None = None
) -> EffectEngine:
    """The engine (clean pass) for these tokens and settings; reused across SAEs through ``cache``."""
    tokens = tokens[: config.n_contexts] if config.n_contexts else tokens
    key = (
        "nces_engine",
        id(model),
        hook_name,
        tokens.shape,
        config.effect_window,
        config.vocab_chunk,
        config.memory_budget_mb,
        config.max_span,
        config.reuse_kv,
        int(tokens.sum()),
    )
    if cache is not None and key in cache:
        return cache[key]
    engine = EffectEngine(model, hook_name, tokens, engine_config(config))
    if cache is not None:
        for old in [k for k in cache if isinstance(k, tuple) and k[:1] == ("nces_engine",)]:
            del cache[old]  # hold one clean pass at a time
        cache[key] = engine
    return engine


def data_control_directions(
    model, engine: EffectEngine, counted_NT: Tensor, seed: int, cache: dict | None = None
) -> DataDirections:
    """The ``data`` control's direction set for ``engine``'s hook and tokens and ``seed``
    (:func:`~csae_bench.interventions.controls.data_directions` of its clean residuals; the
    ``counted_NT`` mask excludes BOS), reused from ``cache`` by every SAE evaluated on them."""
    toks = engine.tokens
    key = (
        "nces_data_control",
        id(model),
        engine.hook_name,
        tuple(toks.shape),
        int(toks.sum()),
        seed,
    )
    if cache is not None and key in cache:
        return cache[key]
    dirs = data_directions(engine.h_clean_NTD, counted_NT, seed)
    if cache is not None:
        for old in [k for k in cache if isinstance(k, tuple) and k[:1] == ("nces_data_control",)]:
            del cache[old]  # one direction set held at a time, as one clean pass is
        cache[key] = dirs
    return dirs


def evaluate_sae(
    model,
    sae,
    tokens: Tensor,
    hook_name: str,
    config: NCESEvalConfig,
    sae_id: str = "sae",
    engine: EffectEngine | None = None,
    cache: dict | None = None,
) -> NCESEvalOutput:
    """NCES of one SAE at ``hook_name`` on eval ``tokens`` ``[n_ctx, ctx]`` (BOS first).

    ``cache``: shared across SAEs (the eval context's), so the ``data`` control's direction set is
    computed once per model, hook, tokens and seed (:func:`data_control_directions`)."""
    t_start = time.perf_counter()
    check_sae_matches(sae, model, hook_name, sae_id)
    if engine is None:
        engine = build_engine(model, hook_name, tokens, config)
    elif engine.hook_name != hook_name:
        raise ValueError(f"The engine was built for {engine.hook_name!r}, not {hook_name!r}.")
    toks = engine.tokens
    ctx_len = toks.shape[1]
    gen = torch.Generator().manual_seed(config.random_seed)
    rng = np.random.default_rng(config.random_seed)

    # which tokens count (not BOS) and which can carry an intervention (a full window fits)
    positions = torch.arange(ctx_len, device=toks.device)
    counted = (positions > 0)[None, :] & hooks.non_bos_mask(model, toks)
    eligible = counted & (positions <= engine.max_position())[None, :]
    active, stats = collect_active(sae, engine.h_clean_NTD, eligible, counted, config.random_seed)
    intervention = make_intervention(config.intervention).fit_stats(stats)
    frequency = stats.frequency_F.cpu()
    sample = stratified_features(frequency, config.n_features, config.n_frequency_strata, gen)
    feat_M, ctx_M, pos_M, owner_M = sample_tokens(
        active,
        sample.feature_idx,
        config.tokens_per_feature,
        gen,
        by_position=config.token_sampling == "position",
    )
    M = len(feat_M)
    with torch.no_grad():
        h_M1D = engine.h_clean_NTD[ctx_M, pos_M][:, None]
        f_M1F = sae.encode(h_M1D.to(sae.W_dec.dtype))
        delta_MD = feature_edit_BTD(
            sae,
            h_M1D,
            feat_M[:, None, None].to(h_M1D.device),
            intervention,
            feature_acts=f_M1F,
            generator=gen,
        )[:, 0]
        data_MD = None
        if config.control in NEEDS_DATA_DIRECTIONS:
            dirs = data_control_directions(model, engine, counted, config.random_seed, cache)
            data_MD = dirs.at(ctx_M, pos_M)
        control_MD = get_control(config.control)(
            sae,
            delta_MD,
            feat_M,
            f_M1F[:, 0],
            gen,
            alive_F=stats.count_active_F > 0,
            data_MD=data_MD,
        )
    t_clean = time.perf_counter() - t_start

    t0 = time.perf_counter()
    eff = engine.effects(
        torch.cat([ctx_M, ctx_M]),
        torch.cat([pos_M, pos_M]),
        torch.cat([delta_MD, control_MD]),
        record_dx=True,
    )
    t_exact = time.perf_counter() - t0
    kl, kl_ctrl = eff.kl[:M].cpu().numpy(), eff.kl[M:].cpu().numpy()
    dloss, dloss_ctrl = eff.dloss[:M].cpu().numpy(), eff.dloss[M:].cpu().numpy()
    dx, dx_ctrl = eff.dx_first[:M], eff.dx_first[M:]

    t0 = time.perf_counter()
    attr_metrics = NCESAttributionMetrics(
        attribution_spearman=None, attribution_spearman_abs_vs_kl=None
    )
    if config.compute_attribution and M:
        attr = engine.attribution(ctx_M, pos_M, delta_MD).cpu()
        attr_metrics = NCESAttributionMetrics(
            attribution_spearman=_finite(
                spearman(attr.detach().double().cpu().numpy(), np.asarray(dloss, dtype=float))
            ),
            attribution_spearman_abs_vs_kl=_finite(
                spearman(attr.detach().abs().double().cpu().numpy(), np.asarray(kl, dtype=float))
            ),
        )
    t_attr = time.perf_counter() - t0

    G = cached(cache, ("nces_logit_gram", id(model)), lambda: logit_gram(model))
    details: list[NCESFeatureDetail] = []
    owner = owner_M.numpy()
    for j, f in enumerate(sample.feature_idx.tolist()):
        rows = np.nonzero(owner == j)[0]
        base = dict(
            feature_idx=f,
            frequency=float(frequency[f]),
            stratum=int(sample.stratum[j]),
            sampling_weight=float(sample.weight[j]),
            n_tokens=len(rows),
        )
        score = (
            score_feature(kl[rows], kl_ctrl[rows], config.n_bootstrap, config.confidence_level, rng)
            if len(rows)
            else None
        )
        if score is None:
            details.append(
                NCESFeatureDetail(
                    **base,
                    status="no_eligible_tokens" if not len(rows) else "no_effect",
                    effect=None,
                    control_effect=None,
                    nces=None,
                    nces_ci_low=None,
                    nces_ci_high=None,
                    causally_verified=False,
                    delta_loss=None,
                    control_delta_loss=None,
                    consistency=None,
                    control_consistency=None,
                )
            )
            continue
        rows_t = torch.as_tensor(rows)
        details.append(
            NCESFeatureDetail(
                **base,
                status="ok",
                effect=score.effect,
                control_effect=score.control_effect,
                nces=score.nces,
                nces_ci_low=_finite(score.ci_low),
                nces_ci_high=_finite(score.ci_high),
                causally_verified=bool(
                    len(rows) >= config.min_tokens_for_verification and score.ci_low > config.tau
                ),
                delta_loss=float(dloss[rows].mean()),
                control_delta_loss=float(dloss_ctrl[rows].mean()),
                consistency=mean_pairwise_cosine(dx[rows_t], G),
                control_consistency=mean_pairwise_cosine(dx_ctrl[rows_t], G),
            )
        )

    nces_metrics = _aggregate(
        details, sample.n_alive, stats.frequency_F.numel() - sample.n_alive, config, rng
    )
    cost = NCESCostMetrics(
        n_interventions=2 * M,
        n_eval_tokens=int(toks.numel()),
        seconds_total=time.perf_counter() - t_start,
        seconds_clean_pass=t_clean,
        seconds_exact=t_exact,
        seconds_attribution=t_attr,
        interventions_per_second=2 * M / t_exact if t_exact > 0 else 0.0,
        positions_run=int(eff.stats["positions_run"]),
        positions_full_rerun=int(eff.stats["positions_full_rerun"]),
    )
    return NCESEvalOutput(
        eval_config=config,
        eval_result_metrics=NCESMetricCategories(
            nces=nces_metrics, attribution=attr_metrics, cost=cost
        ),
        eval_result_details=details,
        eval_result_unstructured={
            "intervention": intervention.name,
            "control": config.control,
            "engine_stats": eff.stats,
            "hook_name": hook_name,
        },
        **envelope(sae, sae_id, "csae_bench"),
    )


def _aggregate(
    details: list[NCESFeatureDetail],
    n_alive: int,
    n_dead: int,
    config: NCESEvalConfig,
    rng: np.random.Generator,
) -> NCESMetrics:
    ok = [d for d in details if d.status == "ok"]
    vals = np.array([d.nces for d in ok], dtype=np.float64)
    w = np.array([d.sampling_weight for d in ok], dtype=np.float64)
    freq = np.array([d.frequency for d in ok], dtype=np.float64)
    strata = np.array([d.stratum for d in ok])
    verified = np.array([d.causally_verified for d in ok], dtype=np.float64)
    wm = weighted_mean_ci(vals, w * freq, strata, config.n_bootstrap, config.confidence_level, rng)
    um = weighted_mean_ci(vals, w, strata, config.n_bootstrap, config.confidence_level, rng)
    cons = [
        d.consistency - d.control_consistency
        for d in ok
        if d.consistency is not None and d.control_consistency is not None
    ]
    med = lambda xs: float(np.median(xs)) if len(xs) else None  # noqa: E731
    return NCESMetrics(
        nces_freq_weighted_mean=wm[0],
        nces_freq_weighted_mean_ci_low=wm[1],
        nces_freq_weighted_mean_ci_high=wm[2],
        nces_mean=um[0],
        nces_mean_ci_low=um[1],
        nces_mean_ci_high=um[2],
        frac_causally_verified=float((verified * w).sum() / w.sum()) if len(ok) else None,
        median_effect=med([d.effect for d in ok]),
        median_control_effect=med([d.control_effect for d in ok]),
        mean_delta_loss=float(np.mean([d.delta_loss for d in ok])) if ok else None,
        effect_consistency=float(np.mean(cons)) if cons else None,
        n_alive_features=n_alive,
        n_dead_features=n_dead,
        n_features_sampled=len(details),
        n_features_evaluated=len(ok),
        n_features_no_eligible_tokens=sum(d.status == "no_eligible_tokens" for d in details),
        n_features_no_effect=sum(d.status == "no_effect" for d in details),
    )


def _finite(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


# ---------------------------------------------------------------------- entry points


def run(ctx, sae, sae_id: str, config: NCESEvalConfig) -> NCESEvalOutput:
    """Registry entry point: NCES of ``sae`` on the run's model, hook and eval tokens. The clean
    pass, loss gradients and the ``data`` control's directions are shared by the SAEs evaluated at
    the same hook (``ctx.cache``). Runs on ``ctx.intervention_model()`` (float32 unless the run
    says otherwise)."""
    model = ctx.intervention_model()
    engine = build_engine(model, ctx.hook_name, ctx.eval_tokens, config, cache=ctx.cache)
    return evaluate_sae(model, sae, ctx.eval_tokens, ctx.hook_name, config, sae_id, engine, ctx.cache)


def run_nces_eval(
    model,
    saes: Mapping[str, object],
    tokens: Tensor,
    config: NCESEvalConfig | None = None,
    hook_name: str | None = None,
    output_dir: str | Path | None = None,
    force_rerun: bool = False,
) -> dict[str, NCESEvalOutput]:
    """NCES of several SAEs (``{sae_id: BaseSAE}``) on a model object and eval tokens.

    ``hook_name`` defaults to each SAE's ``cfg.hook_name``; SAEs at one hook share one clean pass
    and one ``data`` control direction set.
    With ``output_dir``, each result is written atomically to ``{sae_id}_nces.json`` and an existing
    file is loaded instead of rerun unless ``force_rerun``. (The pipeline writes SAEBench's
    ``<release>_<sae_id>_eval_results.json`` instead; this helper is for direct API use.)"""
    from dataclasses import replace

    from csae_bench.utils import atomic_write_text, eval_output_json

    config = config or NCESEvalConfig()
    results: dict[str, NCESEvalOutput] = {}
    engines: dict = {}
    cache: dict = {}  # the data control's directions, shared by the SAEs
    for sae_id, sae in saes.items():
        hook = hook_name or sae.cfg.hook_name
        path = Path(output_dir) / f"{sae_id}_nces.json" if output_dir else None
        if path is not None and path.exists() and not force_rerun:
            import json

            results[sae_id] = NCESEvalOutput(**json.loads(path.read_text()))
            continue
        cfg = replace(config, hook_name=hook)
        engine = engines.get(hook) or build_engine(model, hook, tokens, cfg)
        engines = {hook: engine}  # one clean pass held at a time
        out = evaluate_sae(model, sae, tokens, hook, cfg, sae_id, engine, cache)
        if path is not None:
            atomic_write_text(path, eval_output_json(out))
        results[sae_id] = out
    return results

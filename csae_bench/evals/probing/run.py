"""The ``csae_probing`` eval: per task, k-sparse probes on SAE features and on the residual stream,
then causal verification of the selected features against random active ones.

Work that does not depend on the SAE (tokens, the residual at the hook, the clean behaviour, the
residual-stream probes, the later-layer behaviour probe) is done once per task and kept in memory
for the same model (:func:`prepared_task`), so the SAEs evaluated after the first skip it.
"""

from __future__ import annotations

import logging
import random
import time
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from csae_bench.errors import SaeMismatchError
from csae_bench.evals._envelope import envelope
from csae_bench.evals.probing import interchange as iia
from csae_bench.evals.probing import model_io as io
from csae_bench.evals.probing.config import ProbingEvalConfig
from csae_bench.evals.probing.output import (
    CausalVerificationMetrics,
    InterventionVerificationDetail,
    ProbeAccuracyDetail,
    ProbingAccuracyMetrics,
    ProbingEvalOutput,
    ProbingMetricCategories,
    ProbingResultDetail,
    TaskCountMetrics,
)
from csae_bench.evals.probing.probe import ProbeResult, k_sparse_probes, mean_diff, select_top_k
from csae_bench.evals.probing.tasks import ProbingTask, TaskSplit, load_task, split_task
from csae_bench.evals.probing.verify import (
    Behaviour,
    VerificationError,
    compare_effects,
    edit_residual,
    fit_intervention,
    fit_later_probe_behaviour,
    logit_diff_behaviour,
    random_active_sets,
)

logger = logging.getLogger(__name__)


@dataclass
class PreparedTask:
    """Everything about a task that does not depend on the SAE."""

    task: ProbingTask
    split: TaskSplit
    labels_N: Tensor
    chunks: list[tuple[Tensor, io.Batch, slice]]
    """Residual at the hook ``[b, T, D]`` per batch of examples, with its tokens and rows."""
    resid_pooled_ND: Tensor
    behaviour: Behaviour
    clean_margin_N: Tensor
    clean_accuracy: float
    llm_probes: list[ProbeResult]
    verify_rows: tuple[int, ...]
    pairs: iia.Pairs | None = None
    """Counterfactual pairs and the SAE-independent interchange work (tasks with pairs, when
    ``cfg.interchange``)."""


def _verify_rows(task: ProbingTask, split: TaskSplit, n_max: int, seed: int) -> tuple[int, ...]:
    rng = random.Random(seed)
    rows: list[int] = []
    for cls in (0, 1):
        idx = [i for i in split.test if task.labels[i] == cls]
        rows += rng.sample(idx, min(len(idx), n_max // 2))
    return tuple(sorted(rows))


@torch.no_grad()
def prepare_task(model, hook_name: str, task: ProbingTask, cfg: ProbingEvalConfig) -> PreparedTask:
    split = split_task(task, cfg.test_fraction, cfg.random_seed)
    labels = torch.tensor(task.labels)
    tokens = io.tokenize(model, task.texts, cfg.max_tokens)
    start = io.resume_layer(model, hook_name)
    later_stop = min(model.cfg.n_layers, start + cfg.behaviour_layer_offset)
    chunks, pooled, later = [], [], []
    for rows in io.batched(len(task.texts), cfg.batch_size):
        batch = tokens[rows]
        resid = io.residual_at(model, hook_name, batch)
        chunks.append((resid, batch, rows))
        pooled.append(io.pool(resid, batch, task.read).float().cpu())
        if not task.has_logit_behaviour:
            later.append(
                io.pool(io.resume(model, hook_name, resid, later_stop), batch, task.read)
                .float()
                .cpu()
            )
    resid_pooled = torch.cat(pooled)
    train, test = list(split.train), list(split.test)
    if task.has_logit_behaviour:
        assert task.answers is not None
        behaviour = logit_diff_behaviour(model, hook_name, task.answers)
        clean = torch.cat([behaviour.signed(model, r, b, labels[rows]) for r, b, rows in chunks])
    else:
        later_ND = torch.cat(later)
        behaviour = fit_later_probe_behaviour(
            model, hook_name, task.read, later_stop, later_ND[train], labels[train]
        )
        raw = behaviour.probe_logit(later_ND)
        clean = torch.where(labels == 1, raw, -raw)
    llm_probes = k_sparse_probes(
        resid_pooled[train], labels[train], resid_pooled[test], labels[test], cfg.ks, full=True
    )
    verify_rows = _verify_rows(task, split, cfg.max_verify_examples, cfg.random_seed)
    pairs = None
    if cfg.interchange and task.has_pairs:
        pairs = iia.prepare_pairs(
            model, hook_name, task, split, verify_rows, chunks, clean, behaviour, cfg
        )
    return PreparedTask(
        task,
        split,
        labels,
        chunks,
        resid_pooled,
        behaviour,
        clean,
        float((clean[test] > 0).float().mean()),
        llm_probes,
        verify_rows,
        pairs,
    )


_PREPARED: dict[tuple, PreparedTask] = {}
_PREPARED_FOR: list[weakref.ref] = []  # the model the cache belongs to


def clear_cache() -> None:
    """Drop the SAE-independent work kept for the current model."""
    _PREPARED.clear()
    _PREPARED_FOR.clear()


def prepared_task(model, hook_name: str, name: str, cfg: ProbingEvalConfig) -> PreparedTask:
    """:func:`prepare_task` for a task by name, kept in memory for the same model, hook and
    settings, so every SAE evaluated after the first (each in its own eval job) skips it."""
    if not _PREPARED_FOR or _PREPARED_FOR[0]() is not model:
        clear_cache()
        _PREPARED_FOR.append(weakref.ref(model))
    key = (
        name,
        hook_name,
        cfg.examples_per_class,
        cfg.test_fraction,
        cfg.random_seed,
        cfg.max_tokens,
        cfg.max_verify_examples,
        cfg.behaviour_layer_offset,
        tuple(cfg.ks),
        cfg.batch_size,
        cfg.interchange,
        cfg.interchange_position,
        cfg.confidence,
    )
    if key not in _PREPARED:
        task = load_task(name, cfg.examples_per_class, cfg.random_seed)
        _PREPARED[key] = prepare_task(model, hook_name, task, cfg)
    return _PREPARED[key]


@torch.no_grad()
def _sae_pooled(sae, prep: PreparedTask) -> Tensor:
    out = []
    for resid, batch, _ in prep.chunks:
        feats = sae.encode(resid.to(sae.W_dec.dtype))
        out.append(io.pool(feats, batch, prep.task.read).float().cpu())
    return torch.cat(out)


def _verify_subset(
    prep: PreparedTask, rows: tuple[int, ...], batch_size: int
) -> list[tuple[Tensor, io.Batch, Tensor]]:
    """Residuals of the verification examples, re-batched and right-padded (``[b, T, D]``, tokens,
    labels)."""
    by_row = io.by_row(prep.chunks)
    out = []
    for sl in io.batched(len(rows), batch_size):
        chosen = rows[sl]
        lengths = torch.tensor([len(by_row[r][1]) for r in chosen])
        width = int(lengths.max())
        resid = torch.zeros(
            len(chosen), width, by_row[chosen[0]][0].shape[-1], dtype=by_row[chosen[0]][0].dtype
        )
        tokens = torch.zeros(len(chosen), width, dtype=torch.long)
        for i, r in enumerate(chosen):
            resid[i, : lengths[i]] = by_row[r][0]
            tokens[i, : lengths[i]] = by_row[r][1]
        out.append((resid, io.Batch(tokens, lengths), prep.labels_N[list(chosen)]))
    return out


def verify_features(
    model,
    sae,
    prep: PreparedTask,
    selected: Tensor,
    sign_K: Tensor,
    random_sets: list[Tensor],
    random_signs: list[Tensor],
    cfg: ProbingEvalConfig,
) -> list[InterventionVerificationDetail]:
    """Causal verification of ``selected`` against ``random_sets`` under each intervention."""
    rows = prep.verify_rows
    subset = _verify_subset(prep, rows, cfg.batch_size)
    clean = prep.clean_margin_N[list(rows)]
    is_train = torch.zeros(len(prep.labels_N), dtype=torch.bool)
    is_train[list(prep.split.train)] = True
    train_chunks = [(r, b, is_train[sl]) for r, b, sl in prep.chunks]
    details = []
    for spec in cfg.interventions:
        intervention = fit_intervention(spec, sae, train_chunks, prep.task.read)

        def effect(idx: Tensor, sign: Tensor, intervention=intervention) -> Tensor:
            edited = [
                prep.behaviour.signed(
                    model,
                    edit_residual(sae, r, b, y, prep.task.read, idx, sign, intervention),
                    b,
                    y,
                )
                for r, b, y in subset
            ]
            return clean - torch.cat(edited)

        delta_sel = effect(selected, sign_K)
        delta_rand = torch.stack([effect(idx, s) for idx, s in zip(random_sets, random_signs)])
        details.append(
            compare_effects(
                spec,
                delta_sel,
                delta_rand,
                clean,
                cfg.n_bootstrap,
                cfg.confidence,
                cfg.random_seed,
                cfg.min_relative_effect,
            )
        )
    return details


def evaluate_task(model, sae, prep: PreparedTask, cfg: ProbingEvalConfig) -> ProbingResultDetail:
    """Probes and causal verification of one SAE on one prepared task."""
    task, labels = prep.task, prep.labels_N
    train, test = list(prep.split.train), list(prep.split.test)
    feats = _sae_pooled(sae, prep)
    sae_probes = k_sparse_probes(feats[train], labels[train], feats[test], labels[test], cfg.ks)
    llm_by_k = {p.k: p for p in prep.llm_probes}
    probes = [
        ProbeAccuracyDetail(
            k=p.k,
            sae_test_accuracy=p.test_accuracy,
            llm_test_accuracy=llm_by_k[p.k].test_accuracy if p.k in llm_by_k else None,
            sae_features=list(p.indices),
        )
        for p in sae_probes
    ]
    probes.append(
        ProbeAccuracyDetail(
            k=None, sae_test_accuracy=None, llm_test_accuracy=llm_by_k[None].test_accuracy
        )
    )
    judged = prep.clean_accuracy >= cfg.min_clean_accuracy
    active_F = (feats[train] > 0).float().mean(0) >= cfg.min_active_fraction
    detail = dict(
        task_name=task.name,
        source=task.source,
        label_names=list(task.label_names),
        read=task.read,
        behaviour=prep.behaviour.kind,
        behaviour_detail=(
            f"answers {list(task.answers)}"
            if task.answers
            else f"probe on the residual before block {prep.behaviour.stop_at_layer}"
        ),
        n_train=len(train),
        n_test=len(test),
        model_clean_accuracy=prep.clean_accuracy,
        model_mean_clean_margin=float(prep.clean_margin_N[list(prep.verify_rows)].mean()),
        judged=judged,
        probes=probes,
        n_active_features=int(active_F.sum()),
    )
    if not judged:
        note = f"model clean accuracy {prep.clean_accuracy:.2f} < min_clean_accuracy {cfg.min_clean_accuracy}: the model does not do this task"
        return ProbingResultDetail(**detail, note=note)
    if prep.pairs is not None:
        probe_feats = feats[train] if task.read == "last" else None
        detail["interchange"] = iia.evaluate(model, sae, prep.pairs, probe_feats, cfg)
    diff_F = mean_diff(feats[train], labels[train])
    selected = select_top_k(feats[train], labels[train], min(cfg.verify_k, feats.shape[1]))
    try:
        random_sets = random_active_sets(
            active_F, selected, len(selected), cfg.n_random_sets, cfg.random_seed
        )
    except VerificationError as err:
        return ProbingResultDetail(**detail, note=str(err))
    sign = lambda idx: torch.sign(diff_F[idx]).long()  # noqa: E731
    verification = verify_features(
        model, sae, prep, selected, sign(selected), random_sets, [sign(s) for s in random_sets], cfg
    )
    return ProbingResultDetail(
        **detail, verification=verification, verified=all(v.passed for v in verification)
    )


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def aggregate(details: list[ProbingResultDetail]) -> ProbingMetricCategories:
    judged = [d for d in details if d.judged]

    def acc(who: str, k: int | None) -> float | None:
        vals = []
        for d in judged:
            for p in d.probes:
                v = p.sae_test_accuracy if who == "sae" else p.llm_test_accuracy
                if p.k == k and v is not None:
                    vals.append(v)
        return _mean(vals)

    verified = [d for d in judged if d.verified is not None]
    effects = [v for d in verified for v in d.verification]
    return ProbingMetricCategories(
        probing=ProbingAccuracyMetrics(
            **{f"sae_top_{k}_test_accuracy": acc("sae", k) for k in (1, 2, 5, 10)},
            **{f"llm_top_{k}_test_accuracy": acc("llm", k) for k in (1, 2, 5, 10)},
            llm_test_accuracy=acc("llm", None),
        ),
        causal=CausalVerificationMetrics(
            fraction_tasks_verified=_mean([float(bool(d.verified)) for d in judged])
            if judged
            else None,
            mean_causal_effect_size=_mean([v.relative_effect for v in effects]),
            mean_cohens_dz=_mean([v.cohens_dz for v in effects]),
        ),
        interchange=iia.means(judged),
        tasks=TaskCountMetrics(
            n_tasks=len(details),
            n_tasks_judged=len(judged),
            mean_model_clean_accuracy=_mean([d.model_clean_accuracy for d in details]) or 0.0,
        ),
    )


def run(ctx, sae, sae_id: str, config: ProbingEvalConfig) -> ProbingEvalOutput:
    """Evaluate ``sae`` on every task of ``config`` (see the module docstring)."""
    hook_name = getattr(getattr(sae, "cfg", None), "hook_name", None) or ctx.hook_name
    if ctx.hook_name and hook_name != ctx.hook_name:
        raise SaeMismatchError(
            f"SAE {sae_id} reads {hook_name} but the eval context is for {ctx.hook_name}; evaluate it with a context for its own hook."
        )
    t0 = time.time()
    details = []
    # one model for probe data and verification (an intervention: float32, docs/precision.md)
    model = ctx.intervention_model()
    for name in config.tasks:
        prep = prepared_task(model, hook_name, name, config)
        details.append(evaluate_task(model, sae, prep, config))
        logger.info(
            "csae_probing %s on %s: clean acc %.2f, verified %s",
            sae_id,
            name,
            details[-1].model_clean_accuracy,
            details[-1].verified,
        )
    return ProbingEvalOutput(
        eval_config=config,
        eval_result_metrics=aggregate(details),
        eval_result_details=details,
        eval_result_unstructured={"seconds": time.time() - t0, "hook_name": hook_name},
        **envelope(sae, sae_id, None),
    )

"""Which jobs a run has: :func:`plan` lists them in dependency order; the checks refuse a run
that cannot work before any of it starts."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from csae_bench.pipeline.jobs import EvalJob, GradientJob, HarvestJob, Job, TrainJob
from csae_bench.pipeline.layout import (
    GRADIENT_POOL_NAME,
    SAES_DIR,
    eval_result_path,
    external_release,
    harvest_dir,
    run_dir,
    sae_id,
    sae_release,
)
from csae_bench.suite import RunConfig, SuiteError, eval_type_id


def train_settings(cfg: RunConfig, hook_name: str, seed: int) -> dict[str, Any]:
    """Keyword arguments of the trainer's ``TrainConfig`` for one seed (``dtype``: the run's
    precision, ``auto`` resolved for the device)."""
    from csae_bench.precision import dtype_name, resolve_dtype

    return {
        "dtype": dtype_name(resolve_dtype(cfg.dtype, cfg.device)),
        "architectures": list(cfg.architectures),
        "d_sae": cfg.d_sae,
        "train_tokens": cfg.train_tokens,
        "batch_size": cfg.batch_size,
        "seed": seed,
        "hook_name": hook_name,
        "model_name": model_display_name(cfg.model),
        "context_size": cfg.context_size,
        "heldout_corpus": cfg.corpus,
        **cfg.train,
    }


def model_display_name(model: str) -> str:
    """The model's id where it resolves offline (``embedded`` ->
    ``google/gemma-3-270m-q4_k_m-dequantized``, others their TransformerLens name), else what the
    user typed."""
    from csae_bench.models import ModelLoadError, resolve_model

    try:
        return resolve_model(model).model_id  # issue 16: the embedded model says it is dequantized
    except ModelLoadError:
        return model


def gradient_job(
    settings: dict[str, Any], hook_name: str, seed: int, folder: Path, context_size: int
) -> GradientJob | None:
    """The CSAE's gradient harvest as its own file-producing job — the same pool the trainer would
    harvest itself (its ``grad_tokens`` / ``n_grad_samples`` / ``seed``, contexts counted as the
    trainer counts them: every position, BOS included), kept on disk so that a killed run does not
    harvest it again. None when the CSAE has no causal parts."""
    from csae_bench.data import contexts_for_tokens
    from csae_bench.training import TrainConfig

    tc = TrainConfig.from_flat(**settings)
    csae = tc.options["csae"]
    if not csae.needs_gradient_pool:
        return None
    return GradientJob(
        hook_name,
        seed,
        folder / GRADIENT_POOL_NAME,
        contexts_for_tokens(csae.grad_tokens, context_size, bos_counts=True),
        {"n_samples": csae.n_grad_samples, "show_progress": tc.show_progress},
    )


def check_train_settings(cfg: RunConfig, hook_name: str) -> None:
    """Build the trainer's config once up front, so a bad [train] value fails before any work."""
    from csae_bench.training import TrainConfig

    try:
        TrainConfig.from_flat(**train_settings(cfg, hook_name, cfg.seeds[0]))
    except (TypeError, ValueError) as err:
        raise SuiteError(f"Invalid training settings: {err}") from None


def plan(
    cfg: RunConfig,
    hook_name: str,
    external_saes: Iterable[tuple[str, Path, str]] = (),
    releases: Iterable[tuple[Any, str]] = (),
) -> list[Job]:
    """Every job of a run in dependency order. ``external_saes``: ``(sae_id, folder, hook)`` of
    already-trained SAEs (``--saes``); when given, nothing is trained. ``releases``:
    ``(ReleaseSAE, hook)`` of SAELens pretrained SAEs (``releases.prepare_releases``),
    evaluated under their own release and id; they stop training only when ``--saes`` named them."""
    out = Path(cfg.out)
    jobs: list[Job] = []
    # (release, sae id, folder, hook, seed, training tokens) of every SAE to evaluate
    targets: list[tuple[str, str, Path, str, int, int | None]] = []
    external = list(external_saes)
    if external:
        release = external_release(cfg)
        targets = [
            (release, sid, folder, hook, cfg.seeds[0], None) for sid, folder, hook in external
        ]
    elif cfg.trains:
        # one harvest for every seed: seeds vary the SAEs' init and data order, not the data
        harvest = HarvestJob(hook_name, 0, harvest_dir(out, cfg.model, hook_name))
        jobs.append(harvest)
        for seed in cfg.seeds:
            rd = run_dir(out, cfg.model, hook_name, seed)
            settings = train_settings(cfg, hook_name, seed)
            gradients = (
                gradient_job(settings, hook_name, seed, rd, cfg.context_size)
                if "csae" in cfg.architectures
                else None
            )
            saes_dir = rd / SAES_DIR
            train = TrainJob(harvest, gradients, list(cfg.architectures), settings, saes_dir)
            jobs += [*([gradients] if gradients else []), train]
            for arch in cfg.architectures:
                targets.append(
                    (
                        sae_release(cfg.model, hook_name),
                        sae_id(arch, cfg.d_sae, seed),
                        saes_dir / arch,
                        hook_name,
                        seed,
                        cfg.train_tokens,
                    )
                )
    # issue 16: SAELens releases, named by their release and id (folder: where the hub keeps it).
    targets += [
        (rel.release, rel.sae_id, Path(rel.repo_id) / rel.path, hook, cfg.seeds[0], None)
        for rel, hook in releases
    ]
    pretrained = {(rel.release, rel.sae_id): rel.spec for rel, _ in releases}
    for name in cfg.evals:
        for release, sid, folder, hook, seed, n_tok in targets:
            jobs.append(
                EvalJob(
                    name,
                    folder,
                    release,
                    sid,
                    hook,
                    seed,
                    eval_result_path(out, eval_type_id(name), release, sid),
                    dict(cfg.eval_settings.get(name, {})),
                    n_tok,
                    pretrained.get((release, sid)),
                )
            )
    return jobs


def resolve_sae_folders(jobs: list[Job]) -> None:
    """Point eval jobs at the folders the trainer reported (in ``trained.json``)."""
    by_dir = {}
    for job in jobs:
        if isinstance(job, TrainJob):
            by_dir[job.saes_dir] = job.finished()
    for job in jobs:
        if isinstance(job, EvalJob) and job.sae_folder.parent in by_dir:
            arch = job.sae_folder.name
            job.sae_folder = by_dir[job.sae_folder.parent].get(arch, job.sae_folder)


def check_unique_outputs(jobs: list[Job]) -> None:
    """Refuse a plan in which two jobs write one file: the second would be skipped as done."""
    seen: dict[Path, Job] = {}
    for job in jobs:
        for path in job.outputs():
            if path in seen:
                raise SuiteError(
                    f"{seen[path].describe()} and {job.describe()} would both write {path}; "
                    "give the SAEs distinct ids (folder names) or use separate --out folders."
                )
            seen[path] = job

"""The job graph behind ``python -m csae_bench.run``: harvest -> train -> eval -> leaderboard.

Every job is a small picklable dataclass that reads and writes files in the results folder and is
skipped when its output already exists (docs/architecture.md). The package, in the order of the flow:

* :mod:`~csae_bench.pipeline.layout` — where every file lives (names, paths, SAE discovery);
* :mod:`~csae_bench.pipeline.resources` — the model and token sets jobs share in one process;
* :mod:`~csae_bench.pipeline.jobs` — :class:`HarvestJob`, :class:`GradientJob`,
  :class:`TrainJob`, :class:`EvalJob`, each resumed through :meth:`Job.done`;
* :mod:`~csae_bench.pipeline.plan` — :func:`plan` lists a run's jobs in dependency order;
* :mod:`~csae_bench.pipeline.runner` — :func:`run_jobs` runs them one after another here.

Because jobs only communicate through files, another engine (the Ray executor, a SLURM array)
can fan one stage's jobs out over many machines by calling ``job.run(Resources(cfg))`` remotely.
A kill at any point leaves only whole files (every write is atomic), so re-running resumes.
The names below are the package's public surface: ``from csae_bench.pipeline import X``.
"""

from csae_bench.pipeline.jobs import (
    EvalJob,
    GradientJob,
    HarvestJob,
    Job,
    PipelineError,
    TrainJob,
    as_dict,
)
from csae_bench.pipeline.layout import (
    ACTIVATIONS_NAME,
    GRADIENT_POOL_NAME,
    MANIFEST_NAME,
    SAE_FILES,
    SAES_DIR,
    SOURCES_NAME,
    claim_release,
    eval_result_path,
    external_release,
    find_saes,
    is_sae_folder,
    is_valid_json,
    model_slug,
    parse_sae_id,
    run_dir,
    sae_id,
    sae_release,
)
from csae_bench.pipeline.plan import (
    check_train_settings,
    check_unique_outputs,
    gradient_job,
    model_display_name,
    plan,
    resolve_sae_folders,
    train_settings,
)
from csae_bench.pipeline.resources import Resources, load_sae
from csae_bench.pipeline.runner import run_jobs, skip_if_done

__all__ = [
    "ACTIVATIONS_NAME",
    "GRADIENT_POOL_NAME",
    "MANIFEST_NAME",
    "SAES_DIR",
    "SAE_FILES",
    "SOURCES_NAME",
    "EvalJob",
    "GradientJob",
    "HarvestJob",
    "Job",
    "PipelineError",
    "Resources",
    "TrainJob",
    "as_dict",
    "check_train_settings",
    "check_unique_outputs",
    "claim_release",
    "eval_result_path",
    "external_release",
    "find_saes",
    "gradient_job",
    "is_sae_folder",
    "is_valid_json",
    "load_sae",
    "model_display_name",
    "model_slug",
    "parse_sae_id",
    "plan",
    "resolve_sae_folders",
    "run_dir",
    "run_jobs",
    "sae_id",
    "sae_release",
    "skip_if_done",
    "train_settings",
]

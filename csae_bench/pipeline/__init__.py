"""The job graph behind ``python -m csae_bench.run``: harvest -> train -> eval -> leaderboard.

Every job is a small picklable dataclass that reads and writes files in the results folder and is
skipped when its output already exists (DESIGN §10). :func:`plan` lists the jobs of a run in
dependency order; :func:`run_jobs` runs them one after another in this process. Because jobs only
communicate through files, an existing engine (Ray tasks, a SLURM array through submitit) can fan
out one stage's jobs over many machines later by calling ``job.run(Resources(cfg))`` remotely —
nothing here schedules work itself.

Results layout (SAEBench's naming for result files)::

    <out>/<model>/<hook>/seed<k>/activations.safetensors     harvested training activations
    <out>/<model>/<hook>/seed<k>/gradient_pool.safetensors   sampled-token gradients (csae only)
    <out>/<model>/<hook>/seed<k>/saes/<arch>/                trained SAEs, SAELens format
    <out>/<model>/<hook>/seed<k>/saes/trained.json           which architectures finished
    <out>/eval_results/<eval_type_id>/<release>_<sae_id>_eval_results.json
    <out>/leaderboard.json, <out>/plots/*.png

A kill at any point leaves only whole files (every write is atomic), so re-running resumes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from csae_bench.errors import BadInputError, JobFailedError, SaeMismatchError, one_line
from csae_bench.suite import RunConfig, SuiteError, eval_type_id
from csae_bench.utils import atomic_path, atomic_write_json, eval_output_json, seed_everything

logger = logging.getLogger(__name__)

SAE_FILES = ("cfg.json", "sae_weights.safetensors")
"""Files every finished SAELens-format SAE folder holds."""


class PipelineError(JobFailedError, RuntimeError):
    """A job could not run; the message says which one and what to do."""


# ---------------------------------------------------------------- names and paths


def model_slug(model: str) -> str:
    """A folder-safe name for ``--model`` (a local path becomes its folder name)."""
    path = Path(model).expanduser()
    name = path.name if path.exists() else model
    return name.replace("/", "_").replace(" ", "_")


def sae_release(model: str, hook_name: str) -> str:
    """SAEBench ``sae_lens_release_id`` of the SAEs this project trains."""
    return f"csae_bench-{model_slug(model)}-{hook_name}"


def sae_id(arch: str, d_sae: int, seed: int) -> str:
    """SAEBench ``sae_lens_id`` of one trained SAE (parsed back by the leaderboard)."""
    return f"{arch}-d{d_sae}-s{seed}"


def parse_sae_id(sid: str) -> tuple[str, int, int] | None:
    """``(arch, d_sae, seed)`` of an id :func:`sae_id` made; None for any other SAE id."""
    import re

    m = re.fullmatch(r"(?P<arch>[a-z][a-z0-9_-]*?)-d(?P<d_sae>\d+)-s(?P<seed>\d+)", sid)
    return None if m is None else (m["arch"], int(m["d_sae"]), int(m["seed"]))


def eval_result_path(out: Path, eval_type: str, release: str, sae: str) -> Path:
    """Where SAEBench would put this result: ``eval_results/<type>/<release>_<sae_id>_eval_results.json``."""
    from sae_bench.sae_bench_utils.general_utils import get_results_filepath

    return Path(get_results_filepath(str(out / "eval_results" / eval_type), release, sae))


def run_dir(out: Path, model: str, hook_name: str, seed: int) -> Path:
    return out / model_slug(model) / hook_name / f"seed{seed}"


def is_sae_folder(folder: Path) -> bool:
    return all((folder / f).is_file() for f in SAE_FILES)


def is_valid_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


# ---------------------------------------------------------------- shared resources


def _default_tokens(model, cfg: RunConfig, split: str, n_contexts: int, seed: int) -> torch.Tensor:
    from csae_bench.data import load_tokens

    return load_tokens(
        model.tokenizer,
        corpus=cfg.corpus,
        split=split,
        context_size=cfg.context_size,
        n_contexts=n_contexts,
        seed=seed,
    )


def _default_train(
    model, source, settings: dict[str, Any], out_dir: Path, gradient_pool=None, resume: bool = True
) -> dict[str, Path]:
    from csae_bench.training import TrainConfig, train_alongside

    cfg = TrainConfig.from_flat(**settings)
    return train_alongside(model, source, cfg, out_dir, gradient_pool=gradient_pool, resume=resume)


def _default_gradients(
    model, hook_name: str, tokens: torch.Tensor, seed: int, settings: dict[str, Any]
):
    from csae_bench.activations.gradient_pool import harvest_gradient_pool

    return harvest_gradient_pool(model, hook_name, tokens, seed=seed, **settings)


def gradient_job(
    settings: dict[str, Any], hook_name: str, seed: int, folder: Path, context_size: int
) -> GradientJob | None:
    """The CSAE's gradient harvest as its own file-producing job — the same pool the trainer would
    harvest itself (its ``grad_tokens`` / ``n_grad_samples`` / ``seed``), kept on disk so that a
    killed run does not harvest it again. None when the CSAE has no causal parts."""
    from csae_bench.training import TrainConfig

    tc = TrainConfig.from_flat(**settings)
    csae = tc.options["csae"]
    if not csae.needs_gradient_pool:
        return None
    n_ctx = max(1, -(-csae.grad_tokens // context_size))
    return GradientJob(
        hook_name,
        seed,
        folder / "gradient_pool.safetensors",
        n_ctx,
        {"n_samples": csae.n_grad_samples, "show_progress": tc.show_progress},
    )


def check_train_settings(cfg: RunConfig, hook_name: str) -> None:
    """Build the trainer's config once up front, so a bad [train] value fails before any work."""
    from csae_bench.training import TrainConfig

    try:
        TrainConfig.from_flat(**train_settings(cfg, hook_name, cfg.seeds[0]))
    except (TypeError, ValueError) as err:
        raise SuiteError(f"Invalid training settings: {err}") from None


def load_sae(folder: Path, device: str = "cpu"):
    """The SAE in ``folder`` for the evals (see :func:`csae_bench.architectures.loading.load_sae`)."""
    from csae_bench.architectures.loading import load_sae as _load

    return _load(folder, device=device)


@dataclass
class Resources:
    """What jobs share inside one process, loaded on first use: the model, token sets. The
    callables are the seams tests (and other backends) replace."""

    cfg: RunConfig
    model_loader: Callable[[str, str, str | None], Any] | None = None
    token_loader: Callable[[Any, RunConfig, str, int, int], torch.Tensor] = _default_tokens
    train_fn: Callable[..., dict[str, Path]] = _default_train
    gradient_fn: Callable[..., Any] = _default_gradients
    sae_loader: Callable[[Path, str], Any] = load_sae
    _model: Any = field(default=None, repr=False)
    _tokens: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict, repr=False)
    eval_cache: dict[str, Any] = field(default_factory=dict, repr=False)
    """Handed to every eval job as ``EvalContext.cache`` (per-model work shared across SAEs)."""

    @property
    def model(self):
        if self._model is None:
            loader = self.model_loader
            if loader is None:
                from csae_bench.models import load_model as loader
            logger.info("Loading model %s on %s", self.cfg.model, self.cfg.device)
            self._model = loader(self.cfg.model, self.cfg.device, self.cfg.dtype)
        return self._model

    def tokens(self, split: str, n_contexts: int, seed: int) -> torch.Tensor:
        key = (split, seed)
        if key not in self._tokens:
            self._tokens[key] = self.token_loader(self.model, self.cfg, split, n_contexts, seed)
        return self._tokens[key]

    def train_contexts(self) -> int:
        return math.ceil(self.cfg.train_tokens / (self.cfg.context_size - 1))

    def eval_tokens(self) -> torch.Tensor:
        # One eval set for every seed and architecture, so results compare like for like.
        return self.tokens("eval", self.cfg.eval_contexts, 0)


# ---------------------------------------------------------------- jobs


@dataclass
class Job:
    """A unit of work with file outputs; ``done()`` is true once they all exist."""

    def outputs(self) -> list[Path]:
        raise NotImplementedError

    def done(self) -> bool:
        return all(p.exists() for p in self.outputs())

    def run(self, res: Resources) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


@dataclass
class HarvestJob(Job):
    """Residual activations of the training split for one (model, hook, seed)."""

    hook_name: str
    seed: int
    path: Path

    def outputs(self) -> list[Path]:
        return [self.path]

    def describe(self) -> str:
        return f"harvest {self.hook_name} seed {self.seed}"

    def source(self, res: Resources):
        from csae_bench.activations.harvest import ActivationSource

        toks = res.tokens("train", res.train_contexts(), self.seed)
        return ActivationSource(
            res.model, self.hook_name, toks, seed=self.seed, cache_path=self.path
        )

    def run(self, res: Resources) -> None:
        self.source(res).all_activations()  # writes the cache atomically


@dataclass
class GradientJob(Job):
    """Sampled-token gradients for the CSAE's causal term (only when ``csae`` is trained)."""

    hook_name: str
    seed: int
    path: Path
    n_contexts: int
    settings: dict[str, Any] = field(default_factory=dict)

    def outputs(self) -> list[Path]:
        return [self.path]

    def describe(self) -> str:
        return f"gradient pool {self.hook_name} seed {self.seed}"

    def run(self, res: Resources) -> None:
        toks = res.tokens("train", res.train_contexts(), self.seed)[: self.n_contexts]
        pool = res.gradient_fn(res.model, self.hook_name, toks, self.seed, self.settings)
        pool.save(self.path)


@dataclass
class TrainJob(Job):
    """Every requested architecture trained alongside on one harvest; ``trained.json`` records
    the finished folders (the trainer itself resumes part-trained SAEs)."""

    harvest: HarvestJob
    gradients: GradientJob | None
    architectures: list[str]
    settings: dict[str, Any]
    saes_dir: Path

    @property
    def manifest(self) -> Path:
        return self.saes_dir / "trained.json"

    def outputs(self) -> list[Path]:
        return [self.manifest]

    def finished(self) -> dict[str, Path]:
        if not is_valid_json(self.manifest):
            return {}
        rel = json.loads(self.manifest.read_text()).get("saes", {})
        root = self.saes_dir.resolve()
        # A manifest entry may only name a folder under saes_dir (no ../ or absolute path).
        return {
            a: self.saes_dir / p
            for a, p in rel.items()
            if (self.saes_dir / p).resolve().is_relative_to(root)
            and is_sae_folder(self.saes_dir / p)
        }

    def done(self) -> bool:
        return set(self.architectures) <= set(self.finished())

    def describe(self) -> str:
        return f"train {','.join(self.architectures)} seed {self.harvest.seed}"

    def run(self, res: Resources) -> None:
        from csae_bench.activations.gradient_pool import GradientPool

        pool = GradientPool.load(self.gradients.path) if self.gradients is not None else None
        folders = res.train_fn(
            res.model,
            self.harvest.source(res),
            dict(self.settings),
            self.saes_dir,
            gradient_pool=pool,
            resume=not res.cfg.force,
        )
        missing = [
            a for a in self.architectures if a not in folders or not is_sae_folder(Path(folders[a]))
        ]
        if missing:
            raise PipelineError(
                f"The trainer returned no finished SAE folder for {', '.join(missing)} "
                f"(seed {self.harvest.seed}); see its log above."
            )
        saes = {
            **{a: str(p.relative_to(self.saes_dir)) for a, p in self.finished().items()},
            **{
                a: str(Path(folders[a]).resolve().relative_to(self.saes_dir.resolve()))
                for a in self.architectures
            },
        }
        atomic_write_json(self.manifest, {"saes": saes, "settings": self.settings})


@dataclass
class EvalJob(Job):
    """One eval of one SAE, written as one SAEBench-format JSON (validated before it lands)."""

    eval_name: str
    sae_folder: Path
    release: str
    sae_id: str
    hook_name: str
    seed: int
    path: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    training_tokens: int | None = None
    pretrained: str | None = None
    """issue 16: a SAELens ``release:sae_id`` loaded with ``SAE.from_pretrained`` (else: the folder)."""

    def outputs(self) -> list[Path]:
        return [self.path]

    def done(self) -> bool:
        return is_valid_json(self.path)  # a corrupt result is redone, never trusted

    def describe(self) -> str:
        return f"eval {self.eval_name} on {self.sae_id}"

    def run(self, res: Resources) -> None:
        from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

        from csae_bench.evals.registry import EvalContext, get_eval

        spec = get_eval(eval_type_id(self.eval_name))
        seed_everything(self.seed)
        if self.pretrained:  # issue 16: SAELens release -> SAEBench BaseSAE
            from csae_bench.releases import load_release_sae

            sae = load_release_sae(self.pretrained, res.cfg.device)
        else:
            sae = res.sae_loader(self.sae_folder, res.cfg.device)
        if self.training_tokens and getattr(sae.cfg, "training_tokens", 0) in (None, -100_000, 0):
            sae.cfg.training_tokens = self.training_tokens  # carried into sae_cfg_dict
        ctx = EvalContext(
            model=res.model,
            hook_name=self.hook_name,
            eval_tokens=res.eval_tokens(),
            device=res.cfg.device,
            seed=self.seed,
            model_name=res.cfg.model,
            extra={
                "sae_release": self.release,
                "corpus": res.cfg.corpus,
                "sae_folder": self.pretrained or str(self.sae_folder),
            },
            cache=res.eval_cache,
        )
        try:
            config = (
                spec.make_config(ctx, dict(self.overrides))
                if spec.make_config is not None
                else spec.config_cls(**self.overrides)
            )
        except (TypeError, ValueError) as err:  # a config class refusing a suite value
            raise SuiteError(f"[evals.{self.eval_name}] is invalid: {one_line(err)}") from None
        output = spec.run(ctx, sae, self.sae_id, config)
        if not isinstance(output, spec.output_cls):
            raise PipelineError(
                f"Eval {spec.eval_type_id} returned {type(output).__name__}, "
                f"not its registered output class {spec.output_cls.__name__}."
            )
        output.sae_lens_id = self.sae_id
        output.sae_lens_release_id = self.release
        with atomic_path(self.path) as tmp:
            tmp.write_text(eval_output_json(output))  # standard JSON; non-finite as "nan"/"-inf"
            validate_eval_output_format_file(str(tmp), spec.output_cls)


# ---------------------------------------------------------------- planning and running


def train_settings(cfg: RunConfig, hook_name: str, seed: int) -> dict[str, Any]:
    """Keyword arguments of the trainer's ``TrainConfig`` for one seed."""
    return {
        "architectures": list(cfg.architectures),
        "d_sae": cfg.d_sae,
        "train_tokens": cfg.train_tokens,
        "batch_size": cfg.batch_size,
        "seed": seed,
        "hook_name": hook_name,
        "model_name": model_display_name(cfg.model),
        "context_size": cfg.context_size,
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


def plan(
    cfg: RunConfig,
    hook_name: str,
    external_saes: Iterable[tuple[str, Path, str]] = (),
    releases: Iterable[tuple[Any, str]] = (),
) -> list[Job]:
    """Every job of a run in dependency order. ``external_saes``: ``(sae_id, folder, hook)`` of
    already-trained SAEs (``--saes``); when given, nothing is trained. ``releases``:
    ``(ReleaseSAE, hook)`` of SAELens pretrained SAEs (``saes_pretrained.prepare_releases``),
    evaluated under their own release and id; they stop training only when ``--saes`` named them."""
    out = Path(cfg.out)
    jobs: list[Job] = []
    targets: list[
        tuple[str, str, Path, str, int, int | None]
    ] = []  # release, id, folder, hook, seed, tokens
    external = list(external_saes)
    if external:
        release = external_release(cfg)
        targets = [
            (release, sid, folder, hook, cfg.seeds[0], None) for sid, folder, hook in external
        ]
    elif cfg.trains:
        for seed in cfg.seeds:
            rd = run_dir(out, cfg.model, hook_name, seed)
            harvest = HarvestJob(hook_name, seed, rd / "activations.safetensors")
            settings = train_settings(cfg, hook_name, seed)
            gradients = (
                gradient_job(settings, hook_name, seed, rd, cfg.context_size)
                if "csae" in cfg.architectures
                else None
            )
            train = TrainJob(harvest, gradients, list(cfg.architectures), settings, rd / "saes")
            jobs += [harvest, *([gradients] if gradients else []), train]
            for arch in cfg.architectures:
                targets.append(
                    (
                        sae_release(cfg.model, hook_name),
                        sae_id(arch, cfg.d_sae, seed),
                        rd / "saes" / arch,
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


def find_saes(root: Path) -> list[tuple[str, Path, str]]:
    """``(sae_id, folder, hook_name)`` for every SAELens-format folder under ``root``.

    Configs of every SAELens era are read as SAELens reads them (a pre-6.0 ``hook_point`` is the
    hook). The id is the folder's path under ``root`` with ``/`` -> ``_``; two folders with one id
    (``a/b`` and ``a_b``) would share a result file, so they are refused.
    Raises :class:`SuiteError` (no folders) or :class:`SaeMismatchError` (unreadable config,
    duplicate id), both exit 2."""
    from csae_bench.architectures.loading import read_sae_config

    root = Path(root)
    if not root.is_dir():
        raise SuiteError(f"--saes {root} is not a folder of SAELens-format SAE folders.")
    found = []
    by_id: dict[str, Path] = {}
    for cfg_file in sorted(root.rglob("cfg.json")):
        folder = cfg_file.parent
        if not is_sae_folder(folder):
            logger.warning("Skipping %s: it has cfg.json but no sae_weights.safetensors.", folder)
            continue
        hook = read_sae_config(folder).metadata.hook_name
        if not hook:
            raise SaeMismatchError(
                f"SAE {folder}: its cfg.json names no hook (hook_name, or hook_point before "
                "SAELens 6); add the hook it was trained at."
            )
        rel = folder.relative_to(root)
        sid = str(rel).replace("/", "_") if str(rel) != "." else folder.name
        if sid in by_id:
            raise SaeMismatchError(
                f"SAE folders {by_id[sid]} and {folder} both get the id {sid!r} and would share "
                "one result file; rename one of them."
            )
        by_id[sid] = folder
        found.append((sid, folder, hook))
    if not found:
        raise SuiteError(
            f"No SAELens-format SAE folders (cfg.json + sae_weights.safetensors) under {root}."
        )
    return found


def external_release(cfg: RunConfig) -> str:
    """SAEBench ``sae_lens_release_id`` of the ``--saes`` folders of a run."""
    return f"csae_bench-{model_slug(cfg.model)}-{Path(cfg.saes or 'saes').name}"


SOURCES_NAME = "sae_sources.json"
"""``<out>/eval_results/sae_sources.json``: which ``--saes`` folder each release came from."""


def claim_release(out: Path, release: str, root: Path, force: bool = False) -> None:
    """Record that ``release`` in ``out`` holds the SAEs of ``root``. Two ``--saes`` folders with
    one base name (``x/saes``, ``y/saes``) get one release id: without this the second run's
    results would be "already done" from the first's. Raises :class:`SuiteError` (exit 2)
    unless ``force``."""
    path = out / "eval_results" / SOURCES_NAME
    sources = json.loads(path.read_text()) if is_valid_json(path) else {}
    mine = str(Path(root).resolve())
    theirs = sources.get(release)
    if theirs is not None and theirs != mine and not force:
        raise SuiteError(
            f"--out {out} already holds results of release {release} from --saes {theirs}, not "
            f"{mine}; use another --out (or --force to replace them)."
        )
    if theirs != mine:
        atomic_write_json(path, {**sources, release: mine})


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


def skip_if_done(
    job: Job,
    force: bool,
    counts: dict[str, int],
    on_progress: Callable[[Job, str, float], None] | None,
) -> bool:
    """True (counted and reported as skipped) when ``job``'s outputs exist and not ``force``;
    every runner (local, Ray) decides and reports skips here."""
    if force or not job.done():
        return False
    counts["skipped"] += 1
    if on_progress:
        on_progress(job, "skipped", 0.0)
    return True


def run_jobs(
    jobs: list[Job],
    res: Resources,
    force: bool = False,
    on_progress: Callable[[Job, str, float], None] | None = None,
) -> dict[str, int]:
    """Run ``jobs`` in order, skipping finished ones unless ``force``. Any failure raises."""
    counts = {"run": 0, "skipped": 0}
    check_unique_outputs(jobs)
    resolve_sae_folders(jobs)
    for job in jobs:
        if skip_if_done(job, force, counts, on_progress):
            continue
        start = time.perf_counter()
        try:
            job.run(res)
        except (KeyboardInterrupt, PipelineError, BadInputError):
            raise  # bad input found inside a job is still bad input: exit 2, no resume advice
        except Exception as err:
            raise PipelineError(
                f"{job.describe()} failed: {type(err).__name__}: {err}. Finished work "
                "is kept; fix the cause and re-run the same command to resume."
            ) from err
        counts["run"] += 1
        if isinstance(job, TrainJob):
            resolve_sae_folders(jobs)
        if on_progress:
            on_progress(job, "done", time.perf_counter() - start)
    return counts


def as_dict(job: Job) -> dict[str, Any]:
    """A job as plain data (e.g. to hand to a remote worker)."""
    return {
        "type": type(job).__name__,
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(job).items()},
    }

"""The pipeline's jobs: harvest -> gradient pool -> train -> eval.

Every job is a small picklable dataclass whose work is a set of files. :meth:`Job.done` is the one
home of "resume by checking for a file": a runner (:func:`csae_bench.pipeline.runner.run_jobs`,
the Ray runner, a study) skips a job whose outputs exist. Jobs only communicate through files, so
any runner may run them in any process that can reach the results folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csae_bench.errors import JobFailedError, one_line
from csae_bench.pipeline.layout import MANIFEST_NAME, is_sae_folder, is_valid_json
from csae_bench.pipeline.resources import Resources
from csae_bench.suite import SuiteError, eval_type_id
from csae_bench.utils import atomic_path, atomic_write_json, eval_output_json, seed_everything

logger = logging.getLogger(__name__)
_WARNED_STALE: set[Path] = set()
"""Result files already named in a 'computed with other settings' warning (done() runs often)."""


class PipelineError(JobFailedError, RuntimeError):
    """A job could not run; the message says which one and what to do."""


@dataclass
class Job(ABC):
    """A unit of work with file outputs; ``done()`` is true once they all exist."""

    @abstractmethod
    def outputs(self) -> list[Path]:
        """The files this job writes (each atomically)."""

    def done(self) -> bool:
        """True when the outputs exist, so the job is skipped (unless the run forces it)."""
        return all(p.exists() for p in self.outputs())

    @abstractmethod
    def run(self, res: Resources) -> None:
        """Do the work, writing :meth:`outputs`."""

    def describe(self) -> str:
        """A short name for logs and error messages."""
        return type(self).__name__


@dataclass
class HarvestJob(Job):
    """Residual activations of the training split for one (model, hook), written as shards into
    the folder ``path`` (:mod:`csae_bench.activations.source`); ``seed`` picks and orders the
    contexts. Every training seed of a run streams the same harvest in its own order."""

    hook_name: str
    seed: int
    path: Path

    def outputs(self) -> list[Path]:
        from csae_bench.activations.source import MANIFEST

        return [self.path / MANIFEST]

    def describe(self) -> str:
        return f"harvest {self.hook_name}"

    def source(self, res: Resources, seed: int | None = None):
        """The activation stream (served from ``path`` once harvested), shuffled with ``seed``
        (default: the harvest's own)."""
        from csae_bench.activations.source import ActivationSource

        toks = res.tokens("train", res.train_contexts(), self.seed)
        return ActivationSource(
            res.model,
            self.hook_name,
            toks,
            seed=self.seed if seed is None else seed,
            cache_path=self.path,
        )

    def run(self, res: Resources) -> None:
        self.source(res).harvest(show_progress=res.cfg.train.get("show_progress", True))


@dataclass
class GradientJob(Job):
    """Sampled-token gradients for the CSAE's causal term, harvested on the first ``n_contexts``
    contexts of the training tokens (``settings``: keyword arguments of the harvest)."""

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
        # the engine's float32 model: the CSAE's causal term is a gradient of the model's output,
        # which bf16's rounding would blur as it blurs the engine's effects (docs/precision.md)
        pool = res.gradient_fn(res.engine_model, self.hook_name, toks, self.seed, self.settings)
        pool.save(self.path)


@dataclass
class TrainJob(Job):
    """Every requested architecture trained alongside on one harvest; ``trained.json`` records
    the finished folders (the trainer itself resumes part-trained SAEs)."""

    harvest: HarvestJob
    gradients: GradientJob | None
    architectures: list[str]
    settings: dict[str, Any]
    """Keyword arguments of the trainer's ``TrainConfig``."""
    saes_dir: Path

    @property
    def manifest(self) -> Path:
        return self.saes_dir / MANIFEST_NAME

    def outputs(self) -> list[Path]:
        return [self.manifest]

    def finished(self) -> dict[str, Path]:
        """``{arch: folder}`` of the finished SAEs the manifest names."""
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
        return f"train {','.join(self.architectures)} seed {self.settings.get('seed')}"

    def run(self, res: Resources) -> None:
        from csae_bench.activations.gradient_pool import GradientPool

        pool = GradientPool.load(self.gradients.path) if self.gradients is not None else None
        folders = res.train_fn(
            res.model,
            self.harvest.source(res, seed=self.settings.get("seed")),
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
                f"(seed {self.settings.get('seed')}); see its log above."
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
        """The result exists, parses (a corrupt one is redone, never trusted) and was computed with
        the settings the run asks for now: a result of other settings (a changed suite value or
        default) is recomputed, with one warning naming what changed."""
        try:  # parsed once here: result files with per-feature details run to megabytes
            result = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False
        stale = self.stale_settings(result)
        if stale and self.path not in _WARNED_STALE:
            _WARNED_STALE.add(self.path)
            changes = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in stale.items())
            logger.warning("%s: %s was computed with other settings (%s); recomputing it.",
                           self.describe(), self.path, changes)  # fmt: skip
        return not stale

    def stale_settings(self, result: Any) -> dict[str, tuple[Any, Any]]:
        """:func:`csae_bench.evals.registry.stale_settings` of the finished ``result`` (parsed)."""
        from csae_bench.evals.registry import get_eval, stale_settings

        stored = (result.get("eval_config") if isinstance(result, dict) else None) or {}
        spec = get_eval(eval_type_id(self.eval_name))
        return stale_settings(spec, stored, self.overrides) if isinstance(stored, dict) else {}

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
            model=None,  # loaded only by the evals that read it (the core eval)
            model_fn=lambda: res.model,
            engine_model_fn=lambda: res.engine_model,
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


def as_dict(job: Job) -> dict[str, Any]:
    """A job as plain data (e.g. to hand to a remote worker)."""
    return {
        "type": type(job).__name__,
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(job).items()},
    }

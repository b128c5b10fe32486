"""One harness for every study: a study is a list of pipeline jobs plus a report.

A study module declares a :class:`Study`:

* ``config_cls`` — a dataclass of its settings with a ``seeds`` field (``--seeds`` sets it; saved
  as ``<out>/<prefix>_config.json``);
* ``run_config(cfg, out)`` — the :class:`~csae_bench.suite.RunConfig` whose
  :class:`~csae_bench.pipeline.Resources` its jobs share (model, corpus, context size, training
  tokens, eval contexts);
* ``jobs(cfg, out)`` — its work as :class:`~csae_bench.pipeline.Job` s in order: the pipeline's own
  :class:`~csae_bench.pipeline.HarvestJob` / :class:`~csae_bench.pipeline.GradientJob` /
  :class:`~csae_bench.pipeline.TrainJob`, and study-specific :class:`RecordJob` s, each writing its
  own files under ``out`` and resumed through :meth:`Job.done` by
  :func:`csae_bench.pipeline.run_jobs`;
* ``write_report(out, docs, cfg)`` — the report, written from the files under ``out`` only, into
  the ``docs`` folder given on the command line (default ``<out>/docs``, never the package's
  parent, so an installed wheel works).

:func:`study_main` is the command line every study shares (``--out``, ``--docs``, ``--seeds``,
``--report-only``); a study module's ``main(argv)`` is ``study_main(STUDY, argv)``. Adding a study
is one new module in ``csae_bench/studies/`` that defines ``STUDY`` and ``main``: it lists its jobs
and writes its report; :func:`csae_bench.studies.names` finds it.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from csae_bench.pipeline import Job, Resources, is_valid_json, run_jobs
from csae_bench.suite import RunConfig
from csae_bench.utils import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)


@dataclass
class RecordJob(Job):
    """A study's measurement of one unit (an SAE under one setting) as one JSON record at
    ``path``; done once ``path`` holds valid JSON (a torn file is redone, never trusted)."""

    path: Path

    def outputs(self) -> list[Path]:
        return [self.path]

    def done(self) -> bool:
        return is_valid_json(self.path)

    @abstractmethod
    def record(self, res: Resources) -> dict[str, Any]:
        """The measurement, as plain JSON-serialisable data."""

    def run(self, res: Resources) -> None:
        atomic_write_json(self.path, self.record(res))


STUDY_MODEL = "embedded"
"""The model every study runs on (the embedded Gemma-3-270M)."""


def embedded_run_config(cfg: Any, out: Path, **settings: Any) -> RunConfig:
    """The shared resources of a study on the embedded model: ``cfg``'s layer, seeds, width,
    training tokens, batch size, context size and eval contexts (eval split, seed 0: the same for
    every seed and SAE). Unless ``settings`` say otherwise, the settings the ablation and CSAE-sweep
    studies were measured with: the ``embedded`` corpus, one epoch and float32 — pinned here so that
    a change of :class:`RunConfig`'s defaults (the default run's) does not change a study."""
    base: dict[str, Any] = dict(
        model=STUDY_MODEL,
        layer=cfg.layer,
        seeds=list(cfg.seeds),
        d_sae=cfg.d_sae,
        train_tokens=cfg.train_tokens,
        batch_size=cfg.batch_size,
        context_size=cfg.context_size,
        eval_contexts=cfg.eval_contexts,
        out=str(out),
        corpus="embedded",
        harvest_tokens=None,
        dtype="float32",
    )
    return RunConfig(**{**base, **settings})


@dataclass(frozen=True)
class Study:
    """What a study is made of (see the module docstring)."""

    name: str
    """Its name on the command line (``csae-bench study <name>``)."""
    prefix: str
    """File prefix of its bookkeeping under ``--out``: ``<prefix>_config.json``,
    ``<prefix>_wall_seconds.json``."""
    description: str
    config_cls: type
    run_config: Callable[[Any, Path], RunConfig]
    jobs: Callable[[Any, Path], list[Job]]
    write_report: Callable[[Path, Path, Any], Path]
    """``(out, docs, cfg)`` -> the report page written; ``cfg`` None: the one saved in ``out``."""
    seeds_help: str = "training seeds [default: 0 1]"


def config_path(prefix: str, out: Path) -> Path:
    """``<out>/<prefix>_config.json``: the settings the study last ran with."""
    return Path(out) / f"{prefix}_config.json"


def wall_path(prefix: str, out: Path) -> Path:
    """``<out>/<prefix>_wall_seconds.json``: the wall time of the last invocation."""
    return Path(out) / f"{prefix}_wall_seconds.json"


def saved_config(config_cls: type, prefix: str, out: Path) -> Any | None:
    """The config a run saved under ``out`` (JSON lists back to tuples), or None."""
    path = config_path(prefix, out)
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})


def wall_seconds(prefix: str, out: Path) -> float | None:
    """Wall time of the last invocation that ran the study's jobs, or None."""
    path = wall_path(prefix, out)
    return json.loads(path.read_text())["seconds_this_invocation"] if path.exists() else None


def run_study(study: Study, cfg: Any, out: str | Path, res: Resources | None = None) -> dict:
    """Run every job of the study under ``out``, skipping finished ones (a killed study resumes);
    saves the config and this invocation's wall time. Returns ``{"run": n, "skipped": n}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(config_path(study.prefix, out), asdict(cfg))
    res = res or Resources(study.run_config(cfg, out))
    started = time.perf_counter()

    def progress(job: Job, status: str, seconds: float) -> None:
        if status == "done":
            logger.info(
                "%s done in %.0f s (%.0f s elapsed)",
                job.describe(),
                seconds,
                time.perf_counter() - started,
            )

    counts = run_jobs(study.jobs(cfg, out), res, on_progress=progress)
    atomic_write_json(
        wall_path(study.prefix, out), {"seconds_this_invocation": time.perf_counter() - started}
    )
    return counts


def replace_between_markers(page: Path, marker: str, body: str, title: str) -> Path:
    """Rewrite the part of ``page`` between ``<!-- <marker>:start -->`` and ``<!-- <marker>:end
    -->`` with ``body``, keeping the prose around it (a missing page is created with ``title``)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = page.read_text() if page.exists() else f"# {title}\n\n{start}\n{end}\n"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    atomic_write_text(page, head + start + "\n" + body + end + tail)
    return page


def parse_settings(config_cls: Any, pairs: Sequence[str]) -> dict[str, Any]:
    """``["n_features=128", "controls=data,feature"]`` -> ``{"n_features": 128, "controls":
    ("data", "feature")}``, each value converted to the type of the field's default.

    Raises:
        ValueError: a pair without ``=``, a field ``config_cls`` does not have, or a value that
            does not convert (the message names the field and what it expects).
    """
    cls = getattr(config_cls, "func", config_cls)  # a functools.partial of the dataclass
    defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair!r}: write FIELD=VALUE")
        if name not in defaults:
            raise ValueError(f"--set {name}: no such setting; use one of {', '.join(defaults)}")
        out[name] = _convert(name, text, defaults[name])
    return out


def _convert(name: str, text: str, default: Any) -> Any:
    if isinstance(default, tuple):
        kind = type(default[0]) if default else str
        return tuple(_convert(name, t.strip(), kind()) for t in text.split(",") if t.strip())
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--set {name}={text}: expected true or false")
        return text.lower() in ("true", "1")
    try:
        return type(default)(text) if default is not None else text
    except ValueError:
        kind = {int: "an integer", float: "a number"}.get(type(default), type(default).__name__)
        raise ValueError(f"--set {name}={text}: expected {kind}") from None


def study_main(
    study: Study,
    argv: Sequence[str] | None = None,
    parents: Sequence[argparse.ArgumentParser] = (),
    adapt: Callable[[Study, argparse.Namespace], Study] | None = None,
) -> int:
    """The command line of a study: run it under ``--out`` (resuming), then write its report into
    ``--docs``. A study's own options come in ``parents`` (shown in its ``--help``); ``adapt``
    turns the parsed arguments into the study to run."""
    from csae_bench.cli import OneLineParser

    parser = OneLineParser(
        prog=f"csae-bench study {study.name}", description=study.description, parents=parents
    )
    parser.add_argument(
        "--out", required=True, help="folder for the study's SAEs and records (resumable)"
    )
    parser.add_argument(
        "--docs",
        default=None,
        help="folder the report and its img/ go to [default: <out>/docs]",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help=study.seeds_help)
    parser.add_argument(
        "--report-only", action="store_true", help="only rewrite the report from --out"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one field of the study's settings (repeatable; a tuple is comma-separated),"
        " e.g. --set n_features=128 --set controls=data,feature",
    )
    args = parser.parse_args(argv)
    if adapt is not None:
        study = adapt(study, args)
    from csae_bench.cli import setup_logging

    setup_logging(False)
    out = Path(args.out)
    docs = Path(args.docs) if args.docs else out / "docs"
    cfg = None
    if not args.report_only:
        try:
            settings = parse_settings(study.config_cls, args.set)
            if args.seeds:
                settings["seeds"] = tuple(args.seeds)
            cfg = study.config_cls(**settings)
        except ValueError as err:
            parser.error(str(err))
        run_study(study, cfg, out)
    logger.info("Wrote %s", study.write_report(out, docs, cfg))
    return 0

"""Run settings: one dataclass (:class:`RunConfig`) filled from defaults, a declarative suite file
(``evals/<name>.toml``) and command-line flags, in that order of precedence (flags win).

A suite file has three kinds of tables, every key checked against the fields it sets::

    [run]                  # RunConfig fields: model, layer, architectures, evals, seeds, ...
    model = "embedded"
    evals = ["core", "nces", "probing"]

    [train]                # extra TrainConfig fields (lr, target_l0, grad_tokens, ...)
    target_l0 = 32

    [evals.core]           # overrides of one eval's config (fields of its config class)
    n_eval_reconstruction_batches = 1

The defaults of :class:`RunConfig` are the CPU run on the embedded model (``evals/gemma-3-270m.toml``
states the same values; a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csae_bench.architectures import ARCHITECTURES
from csae_bench.errors import BadInputError, one_line

# The user-facing eval names that differ from their SAEBench eval_type_id.
EVAL_ALIASES: dict[str, str] = {"probing": "csae_probing"}
DEFAULT_ARCHITECTURES: tuple[str, ...] = ARCHITECTURES  # the registry's (csae_bench.architectures)
DEFAULT_EVALS: tuple[str, ...] = ("core", "nces", "probing")
MODEL_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


class SuiteError(BadInputError, ValueError):
    """A suite file or a run setting is invalid; the message names the key and what is allowed."""


@dataclass
class RunConfig:
    """Everything one ``python -m csae_bench.run`` invocation does."""

    model: str = "embedded"
    """Model: ``embedded`` (Gemma-3-270M, offline), ``gpt2``, ``gemma-2-2b``, any TransformerLens
    name, or a local Hugging Face model folder."""
    layer: int = 6
    """Residual-stream layer whose ``blocks.<layer>.hook_resid_post`` the SAEs read."""
    architectures: list[str] = field(default_factory=lambda: list(DEFAULT_ARCHITECTURES))
    """SAE architectures trained alongside on one activation stream."""
    evals: list[str] = field(default_factory=lambda: list(DEFAULT_EVALS))
    """Evals run on every SAE (user names; ``probing`` is eval type ``csae_probing``)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Training seeds; each seed trains and evaluates every architecture once."""
    d_sae: int = 2048
    """Dictionary width of every trained SAE."""
    train_tokens: int = 150_000
    """Activation tokens each SAE trains on (one harvest shared by all architectures)."""
    batch_size: int = 1024
    """Training batch size in tokens."""
    corpus: str = "embedded"
    """Text corpus: ``embedded`` (VADER sentences, offline), a local .txt/.jsonl file or folder,
    or a Hugging Face dataset name."""
    context_size: int = 128
    """Tokens per context for harvesting and evals."""
    eval_contexts: int = 32
    """Contexts of the corpus's held-out eval split given to every eval."""
    device: str = "cpu"
    """Torch device for the model, training and evals (``cpu``, ``cuda``, ``cuda:1``...)."""
    dtype: str | None = None
    """Model weights' dtype: ``float32``, ``bfloat16`` or ``float16``. ``None``: float32 on the CPU,
    the model's own default on a GPU."""
    threads: int | None = None
    """torch CPU threads for the whole run (``torch.set_num_threads``). ``None``: torch's default
    (one per core). A suite whose numbers are compared across machines pins it (the CI smoke suite
    does): the thread count sets the order of float reductions, and so the rounding."""
    out: str = "results"
    """Results folder: trained SAEs, one SAEBench JSON per (SAE, eval), leaderboard, plots."""
    saes: str | list[str] | None = None
    """Evaluate these instead of training: the SAELens-format SAE folders under one path, and/or
    SAELens pretrained SAEs as ``release:sae_id`` (a list, or one comma-separated string). After
    construction this holds the folder only; release ids move to ``release_saes``."""
    release_saes: list[str] = field(default_factory=list)
    """SAELens ``release:sae_id`` entries of ``saes`` (filled from ``saes``; not a suite key)."""
    extra_saes: list[str] = field(default_factory=list)
    """SAELens ``release:sae_id`` SAEs evaluated next to the SAEs this run trains (issue 16)."""
    force: bool = False
    """Redo finished work (otherwise work whose output exists in ``out`` is skipped)."""
    train: dict[str, Any] = field(default_factory=dict)
    """Extra trainer settings (keys of ``csae_bench.training.TrainConfig.from_flat``)."""
    eval_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-eval config overrides, keyed by user eval name (``core``, ``nces``, ``probing``)."""
    # --- issue 15: where jobs run (csae_bench/executors; docs/scale.md)
    executor: str = "local"
    """``local`` (every job in this process) or ``ray`` (one Ray task per job; needs the ``ray``
    extra)."""
    ray_address: str | None = None
    """Ray cluster to join: ``auto`` or ``HOST:PORT``. ``None``: ``$RAY_ADDRESS`` if set, else
    start a local cluster for the run."""
    job_resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Ray resources per job kind (``harvest``, ``gradients``, ``train``, ``eval``, ``leaderboard``):
    ``num_cpus``, ``num_gpus``, ``memory`` (bytes), ``resources``, ``max_retries``. Suite:
    ``[run.job_resources.eval]``."""

    def __post_init__(self) -> None:
        for name in (
            "layer",
            "d_sae",
            "train_tokens",
            "batch_size",
            "context_size",
            "eval_contexts",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise SuiteError(f"{name} must be an integer, got {value!r}.")
            if value < (0 if name == "layer" else 1):
                raise SuiteError(
                    f"{name} must be {'≥ 0' if name == 'layer' else 'positive'}, got {value}."
                )
        if self.dtype is not None and self.dtype not in MODEL_DTYPES:
            raise SuiteError(f"dtype must be one of {', '.join(MODEL_DTYPES)}, got {self.dtype!r}.")
        if self.threads is not None and (
            not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1
        ):
            raise SuiteError(f"threads must be a positive integer, got {self.threads!r}.")
        if self.context_size < 2:
            raise SuiteError(f"context_size must be at least 2, got {self.context_size}.")
        if not self.seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in self.seeds
        ):
            raise SuiteError(f"seeds must be a non-empty list of integers, got {self.seeds!r}.")
        if len(set(self.seeds)) != len(self.seeds):
            raise SuiteError(f"seeds has duplicates: {self.seeds}.")
        self.architectures = _as_name_list("architectures", self.architectures)
        self.evals = _as_name_list("evals", self.evals)
        from csae_bench.executors import check_executor_settings  # issue 15 (never imports ray)

        check_executor_settings(self.executor, self.ray_address, self.job_resources)
        self._split_saes()

    def _split_saes(self) -> None:
        """issue 16: ``saes`` may mix one folder with ``release:sae_id`` entries; keep the folder in
        ``saes`` (what the folder path expects) and the release ids in ``release_saes``."""
        from csae_bench.releases import split_sae_entries

        folders, releases = split_sae_entries(self.saes)
        if len(folders) > 1:
            raise SuiteError(
                f"saes names {len(folders)} folders ({', '.join(folders)}); give one folder "
                "that holds all SAE folders (they are found recursively)."
            )
        self.saes = folders[0] if folders else None
        self.release_saes = list(dict.fromkeys([*self.release_saes, *releases]))
        extra_folders, extra = split_sae_entries(self.extra_saes)
        if extra_folders:
            raise SuiteError(
                f"extra_saes takes SAELens release:sae_id entries, got {', '.join(extra_folders)}."
            )
        self.extra_saes = extra

    @property
    def trains(self) -> bool:
        """True when this run trains SAEs (``saes`` names no folder and no release)."""
        return self.saes is None and not self.release_saes

    @property
    def eval_type_ids(self) -> list[str]:
        """The SAEBench ``eval_type_id`` of each requested eval, in order."""
        return [eval_type_id(name) for name in self.evals]


def _as_name_list(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(v, str) for v in value)
    ):
        raise SuiteError(f"{key} must be a non-empty list of names, got {value!r}.")
    if len(set(value)) != len(value):
        raise SuiteError(f"{key} has duplicates: {list(value)}.")
    return list(value)


def eval_type_id(name: str) -> str:
    """User eval name -> SAEBench ``eval_type_id`` (``probing`` -> ``csae_probing``)."""
    return EVAL_ALIASES.get(name, name)


def known_architectures() -> tuple[str, ...]:
    """The trainable architectures (``csae_bench.architectures.ARCHITECTURES`` once it exists)."""
    try:
        from csae_bench.architectures import ARCHITECTURES  # type: ignore[attr-defined]
    except ImportError:
        return DEFAULT_ARCHITECTURES
    return tuple(ARCHITECTURES)


def known_evals() -> list[str]:
    """User-facing eval names: registered eval type ids, with aliases shown by their short name."""
    from csae_bench.evals.registry import available_evals

    reverse = {v: k for k, v in EVAL_ALIASES.items()}
    return sorted(reverse.get(e, e) for e in available_evals())


def validate_names(cfg: RunConfig) -> None:
    """Check architectures and evals against what is installed; the error lists the valid ones."""
    from csae_bench.evals.registry import available_evals

    archs = known_architectures()
    bad = [a for a in cfg.architectures if a not in archs]
    if bad and cfg.trains:
        raise SuiteError(
            f"Unknown architecture(s) {', '.join(bad)}; valid architectures: {', '.join(archs)}."
        )
    registered = set(available_evals())
    bad = [e for e in cfg.evals if eval_type_id(e) not in registered]
    if bad:
        raise SuiteError(
            f"Unknown eval(s) {', '.join(bad)}; valid evals: {', '.join(known_evals())}."
        )
    for name in cfg.eval_settings:
        if name not in cfg.evals and eval_type_id(name) not in cfg.eval_type_ids:
            continue  # settings for an eval this run does not request are kept but unused
        _check_eval_overrides(name, cfg.eval_settings[name])


def _check_eval_overrides(name: str, overrides: dict[str, Any]) -> None:
    from csae_bench.evals.registry import get_eval

    spec = get_eval(eval_type_id(name))
    allowed = {f.name for f in dataclasses.fields(spec.config_cls)}
    for key in overrides:
        if key not in allowed:
            raise SuiteError(
                f"[evals.{name}] has unknown key {key!r}; {spec.config_cls.__name__} fields: "
                f"{', '.join(sorted(allowed))}."
            )
    if spec.check_overrides is not None:
        try:
            spec.check_overrides(overrides)
        except ValueError as err:
            raise SuiteError(str(err)) from None
    try:  # the config class's own checks, before any work (the run fills the other fields later)
        spec.config_cls(**overrides)
    except ValueError as err:
        raise SuiteError(f"[evals.{name}] is invalid: {one_line(err)}") from None
    except TypeError:
        pass  # a required field the run fills in; checked when the eval's config is built


RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)} - {
    "train",
    "eval_settings",
    "release_saes",  # filled from saes
}
# Keys a suite may not set: they describe this invocation, not the experiment.
_CLI_ONLY = {"force"}


def load_suite(path: str | Path) -> dict[str, Any]:
    """Read a suite TOML into RunConfig keyword arguments, naming any key that is wrong."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteError(
            f"Suite file {path} does not exist (suites live in evals/*.toml)."
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise SuiteError(f"Suite file {path} is not valid TOML: {err}.") from None
    unknown = set(raw) - {"run", "train", "evals", "description"}
    if unknown:
        raise SuiteError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}; a suite has "
            "[run], [train] and [evals.<name>] tables (and an optional description)."
        )
    kwargs: dict[str, Any] = {}
    run = raw.get("run", {})
    if not isinstance(run, dict):
        raise SuiteError(f"{path}: 'run' must be a table ([run]).")
    for key, value in run.items():
        if key not in RUN_FIELDS or key in _CLI_ONLY:
            raise SuiteError(
                f"{path}: unknown key 'run.{key}'; valid keys: {', '.join(sorted(RUN_FIELDS - _CLI_ONLY))}."
            )
        kwargs[key] = value
    train = raw.get("train", {})
    if not isinstance(train, dict):
        raise SuiteError(f"{path}: 'train' must be a table ([train]).")
    _check_train_keys(path, train)
    kwargs["train"] = dict(train)
    evals = raw.get("evals", {})
    if not isinstance(evals, dict) or not all(isinstance(v, dict) for v in evals.values()):
        raise SuiteError(f"{path}: 'evals' must hold one table per eval, e.g. [evals.core].")
    kwargs["eval_settings"] = {k: dict(v) for k, v in evals.items()}
    return kwargs


def _check_train_keys(path: Path, train: dict[str, Any]) -> None:
    if not train:
        return  # nothing to check: skip importing the trainer (seconds)
    try:
        from csae_bench.training import TrainConfig  # type: ignore[import-not-found]
    except ImportError:
        return  # the trainer checks its own keys when it is built
    allowed = set(TrainConfig.flat_keys())
    for key in train:
        if key not in allowed:
            raise SuiteError(
                f"{path}: unknown key 'train.{key}'; TrainConfig fields: {', '.join(sorted(allowed))}."
            )


def build_config(suite: str | Path | None = None, **overrides: Any) -> RunConfig:
    """Defaults, then the suite file, then ``overrides`` (flags the user gave; ``None`` = not given)."""
    kwargs: dict[str, Any] = load_suite(suite) if suite is not None else {}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RunConfig(**kwargs)
    except TypeError as err:  # a wrong type that dataclass construction itself rejects
        raise SuiteError(f"Invalid run settings: {err}.") from None

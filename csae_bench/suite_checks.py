"""A run's names checked against what is installed: architectures (and the base a derived null
needs), evals, and each ``[evals.<name>]`` table's keys and values — before any work starts."""

from __future__ import annotations

import dataclasses
from typing import Any

from csae_bench.errors import one_line
from csae_bench.suite import EVAL_ALIASES, RunConfig, SuiteError, eval_type_id


def known_architectures() -> tuple[str, ...]:
    """The trainable architectures (``csae_bench.architectures.ARCHITECTURES``)."""
    from csae_bench.architectures import ARCHITECTURES

    return tuple(ARCHITECTURES)


def known_evals() -> list[str]:
    """User-facing eval names: registered eval type ids, with aliases shown by their short name."""
    from csae_bench.evals.registry import available_evals

    reverse = {v: k for k, v in EVAL_ALIASES.items()}
    return sorted(reverse.get(e, e) for e in available_evals())


def validate_names(cfg: RunConfig) -> None:
    """Check architectures and evals against what is installed, and each requested eval's
    ``[evals.<name>]`` overrides against its config class.

    Raises:
        SuiteError: an unknown name (the message lists the valid ones) or override.
    """
    from csae_bench.evals.registry import available_evals

    archs = known_architectures()
    bad = [a for a in cfg.architectures if a not in archs]
    if bad and cfg.trains:
        raise SuiteError(
            f"Unknown architecture(s) {', '.join(bad)}; valid architectures: {', '.join(archs)}."
        )
    if cfg.trains:
        from csae_bench.architectures import MissingBaseArchitectureError, check_derived

        try:
            check_derived(cfg.architectures)
        except MissingBaseArchitectureError as err:
            raise SuiteError(str(err)) from None
    check_corpus_path(cfg.corpus)
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


def check_layer(cfg: RunConfig) -> None:
    """``cfg.layer`` within the model's blocks, read from its config before any weights load
    (:func:`csae_bench.models.model_n_layers`; skipped when that needs the network).

    Raises:
        SuiteError: the layer is out of range, or the model is unknown.
    """
    from csae_bench.models import ModelLoadError, model_n_layers

    try:
        n_layers = model_n_layers(cfg.model)
    except ModelLoadError as err:
        raise SuiteError(str(err)) from None
    if n_layers is not None and cfg.layer >= n_layers:
        raise SuiteError(
            f"--layer {cfg.layer} is out of range: {cfg.model} has layers 0..{n_layers - 1}."
        )


def check_device(device: str, on_this_machine: bool = True) -> None:
    """A device torch can parse and, when the jobs run ``on_this_machine`` (not on Ray workers,
    which may have GPUs the driver lacks), one this machine has — before any model loads.

    Raises:
        SuiteError: an unknown device string, or CUDA/MPS asked for where torch has none.
    """
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SuiteError(
            f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N."
        ) from None
    if not on_this_machine:
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SuiteError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SuiteError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                "use cuda:0 .. cuda:N-1."
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise SuiteError(f"--device {device}: torch sees no MPS device here; use --device cpu.")


def check_corpus_path(corpus: str) -> None:
    """A corpus written as a file path (it has a ``/`` or ends in ``.txt``/``.jsonl``) must exist:
    otherwise it would be taken for a Hugging Face dataset name, after the model loads.

    Raises:
        SuiteError: the file or folder does not exist.
    """
    from pathlib import Path

    looks_local = corpus.startswith((".", "/", "~")) or corpus.endswith((".txt", ".jsonl"))
    if looks_local and not Path(corpus).expanduser().exists():
        raise SuiteError(
            f"--corpus {corpus}: no such file or folder; give a .txt or .jsonl file, a folder of "
            "them, english, embedded, or a Hugging Face dataset name."
        )

"""The up-front checks of SAELens releases, before any model is loaded: the hub (or the local
cache) can serve them, their model matches the run's, and their config is one SAEBench's
``BaseSAE`` expresses (steps 2-4 of :mod:`csae_bench.releases`)."""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path
from typing import Any

from csae_bench.hub import hub_reachable as _hub_reachable
from csae_bench.releases.directory import (
    SEP,
    ReleaseError,
    ReleaseSAE,
    resolve_release,
    split_sae_entries,
)
from csae_bench.suite import SuiteError

logger = logging.getLogger(__name__)

DEQUANTIZED_WARNING = (
    "{spec} was trained on the original bf16 weights of {model}; the embedded model is "
    "Gemma-3-270M dequantized from a Q4_K_M GGUF, so its residual stream differs slightly and "
    "reconstruction/CE metrics read somewhat worse than on the original (docs/pretrained_saes.md)."
)


# ---------------------------------------------------------------- hub availability


def hub_offline_reason() -> str | None:
    """Why the Hugging Face hub cannot be used right now, or ``None`` when it can."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE=1 is set"
    if not _hub_reachable():
        return "huggingface.co is unreachable from this machine"
    return None


def _loads_from_cache(rel: ReleaseSAE) -> bool:
    """True when SAELens can load ``rel`` offline: a SAELens-format release (``hf_hub_download``
    only) whose cfg.json and weights are in the local Hugging Face cache."""
    if rel.conversion_func not in (None, "sae_lens"):
        return False
    from huggingface_hub import try_to_load_from_cache

    return all(
        isinstance(try_to_load_from_cache(rel.repo_id, f"{rel.path}/{name}"), str)
        for name in ("cfg.json", "sae_weights.safetensors")
    )


def check_available(rels: list[ReleaseSAE]) -> None:
    """Raise :class:`ReleaseError` for the first release SAELens cannot fetch from here."""
    reason = hub_offline_reason() if rels else None
    if reason is None:
        return
    for rel in rels:
        if not _loads_from_cache(rel):
            raise ReleaseError(
                f"Cannot load SAELens SAE {rel.spec} (hub repo {rel.repo_id}): {reason} and "
                "SAELens cannot load it from the local cache. Run where huggingface.co is "
                "reachable, or save it there with SAE.from_pretrained(...).save_model(DIR) and "
                "pass --saes DIR."
            )


# ---------------------------------------------------------------- model match


_SIZE = re.compile(r"^\d+(\.\d+)?[kmb]$|^(small|medium|large|xl)$")


def _canonical(name: str) -> str:
    """``google/gemma-3-270m`` -> ``gemma-3-270m``; TransformerLens aliases (``gpt2-small``) ->
    the name they stand for (``gpt2``)."""
    from csae_bench.models import HUB_ALIASES

    short = name.strip().lower()
    official = HUB_ALIASES.get(short, (short, ""))[0]
    return official.rsplit("/", 1)[-1]


def model_family(name: str) -> str:
    """The model's family: its canonical name up to the size token (``gemma-3-270m`` ->
    ``gemma-3``, ``gemma-2-2b`` -> ``gemma-2``, ``gpt2`` -> ``gpt2``)."""
    parts = _canonical(name).split("-")
    for i, part in enumerate(parts):
        if i > 0 and _SIZE.match(part):
            return "-".join(parts[:i])
    return "-".join(parts)


def check_release_model(rel: ReleaseSAE, run_model: str) -> list[str]:
    """Compare the release's model with the run's ``--model`` (``embedded``, an alias, a
    TransformerLens name or a local folder). Returns warnings (same family, other size; the
    embedded model is dequantized; the release expects processed weights). Raises
    :class:`ReleaseError` when the families differ."""
    from csae_bench.models import EMBEDDED, ModelLoadError, resolve_model

    try:
        spec = resolve_model(run_model)
    except ModelLoadError:
        return []  # the model loader reports an unknown model itself
    warnings: list[str] = []
    if spec.kind == "local":
        warnings.append(
            f"{rel.spec} was trained on {rel.model}; cannot tell whether the local model "
            f"{run_model} is that model."
        )
    elif _canonical(spec.name) != _canonical(rel.model):
        if model_family(spec.name) != model_family(rel.model):
            raise ReleaseError(
                f"--saes {rel.spec} was trained on {rel.model}, but this run's model is "
                f"{spec.name} (another family). Use --model {_canonical(rel.model)} or drop it."
            )
        warnings.append(
            f"{rel.spec} was trained on {rel.model}; this run's model is {spec.name} (same "
            "family, another model): expect a mismatch."
        )
    elif spec.kind == EMBEDDED:
        warnings.append(DEQUANTIZED_WARNING.format(spec=rel.spec, model=rel.model))
    if rel.model_kwargs:
        warnings.append(
            f"{rel.spec} was trained with model_from_pretrained_kwargs={rel.model_kwargs}; "
            "csae_bench loads models with unprocessed weights."
        )
    return warnings


# ---------------------------------------------------------------- config and hooks


_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")


def equivalent_resid_post(hook_name: str) -> str:
    """``blocks.L.hook_resid_pre`` (L ≥ 1) -> ``blocks.{L-1}.hook_resid_post``: in a
    TransformerLens ``HookedTransformer`` both hooks see the same tensor (block L's input is
    block L−1's output). Any other hook, and ``blocks.0.hook_resid_pre`` (the embeddings, with no
    ``resid_post`` twin), is returned unchanged."""
    m = _RESID_PRE.match(hook_name)
    if m and int(m[1]) >= 1:
        return f"blocks.{int(m[1]) - 1}.hook_resid_post"
    return hook_name


@functools.cache
def release_config(spec: str) -> dict[str, Any]:
    """SAELens's config for ``release:sae_id`` (``d_in``, ``d_sae``, ``architecture``,
    ``normalize_activations``; ``hook_name`` / ``model_name`` top-level or under ``metadata``), by
    ``sae_lens.loading.pretrained_sae_loaders.load_sae_config_from_huggingface`` (config only,
    no weights). Raises :class:`ReleaseError` when the hub cannot serve it."""
    from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface

    release, _, sae_id = spec.partition(SEP)
    try:
        return load_sae_config_from_huggingface(release, sae_id)
    except (OSError, ValueError) as err:  # requests/huggingface_hub errors are OSErrors
        first = str(err).splitlines()[0] if str(err) else ""
        raise ReleaseError(
            f"Cannot read SAELens SAE {spec}'s config from the hub ({type(err).__name__}: "
            f"{first}). Check the hub is reachable and the id exists, or pass a local folder."
        ) from None


def check_release_config(rel: ReleaseSAE) -> str:
    """Fetch the SAE's config and check csae_bench can adapt it to SAEBench's ``BaseSAE``.
    Returns the hook every eval reads (:func:`equivalent_resid_post` of the SAE's hook). Raises
    :class:`ReleaseError` for an architecture other than standard/topk/jumprelu or a run-time
    activation normalization SAELens does not fold into the weights."""
    from csae_bench.architectures import FROM_SAELENS

    cfg = release_config(rel.spec)
    arch = cfg.get("architecture")
    if arch not in FROM_SAELENS:
        raise ReleaseError(
            f"--saes {rel.spec}: SAELens architecture {arch!r} cannot be evaluated here "
            f"(supported: {', '.join(sorted(FROM_SAELENS))}); pick a residual-stream SAE."
        )
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", "expected_average_only_in"):
        raise ReleaseError(
            f"--saes {rel.spec}: it normalizes activations at run time "
            f"(normalize_activations={norm!r}), which SAEBench's BaseSAE cannot express; "
            "pick another SAE."
        )
    hook = cfg.get("hook_name") or (cfg.get("metadata") or {}).get("hook_name")
    if not hook:
        raise ReleaseError(f"--saes {rel.spec}: SAELens's config for it names no hook_name.")
    return equivalent_resid_post(str(hook))


# ---------------------------------------------------------------- the up-front pass


def check_release_ids(specs: list[str]) -> list[ReleaseSAE]:
    """Steps 1-2 (directory and hub), with no torch/SAELens import: the CLI runs this first so
    an unknown or unreachable release exits 2 within seconds. Raises :class:`ReleaseError`."""
    rels = [resolve_release(s) for s in specs]
    check_available(rels)
    return rels


def release_specs_requested(
    suite: str | Path | None, saes: Any = None, extra_saes: Any = None
) -> list[str]:
    """The ``release:sae_id`` entries a command names, read from its flags and the raw ``[run]``
    table of its suite (``saes``, ``extra_saes``) without building the run's config, whose suite
    check imports the trainer (seconds). A suite that does not parse yields none here (building
    the config reports it)."""
    entries: list[Any] = [saes, extra_saes]
    if suite is not None:
        import tomllib

        try:
            run = tomllib.loads(Path(suite).read_text(encoding="utf-8")).get("run", {})
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            run = {}
        if isinstance(run, dict):
            entries += [run.get("saes"), run.get("extra_saes")]
    specs: list[str] = []
    for value in entries:
        try:
            specs += split_sae_entries(value)[1]
        except SuiteError:
            continue  # malformed: building the config names it
    return list(dict.fromkeys(specs))


def prepare_releases(specs: list[str], run_model: str) -> list[tuple[ReleaseSAE, str]]:
    """Every up-front step for ``specs`` (see the module docstring), in order, before any model
    is loaded; logs the warnings. Returns ``(release, eval hook)`` per spec. Raises
    :class:`ReleaseError` (exit 2) at the first problem."""
    rels = check_release_ids(specs)
    for rel in rels:
        for warning in check_release_model(rel, run_model):
            logger.warning("%s", warning)
    return [(rel, check_release_config(rel)) for rel in rels]

"""SAELens pretrained releases as ``--saes release:sae_id`` (e.g. Gemma Scope 2 on Gemma-3-270M).

What happens, in order, before any model is loaded (:func:`prepare_releases`):

1. **Resolve** each ``release:sae_id`` against SAELens's pretrained directory, the
   ``sae_lens/pretrained_saes.yaml`` that ``sae_lens.loading.pretrained_saes_directory.
   get_pretrained_saes_directory`` reads. We read that file directly (≈1 s) instead of importing
   ``sae_lens`` (≈6 s), so an unknown release or id fails at once, naming close matches.
2. **Hub check**: with ``HF_HUB_OFFLINE=1`` or huggingface.co unreachable, a release fails unless
   SAELens can load it from the local Hugging Face cache (only SAELens-format releases can: e.g.
   the ``gemma_3`` loader reads tensor shapes with HTTP range requests even when cached).
3. **Model match**: the release's model (yaml ``model``) against the run's model. Another family
   is an error; the same family at another size, or the embedded model (Gemma-3-270M dequantized
   from a Q4_K_M GGUF, not the bf16 weights Gemma Scope 2 was trained on), is a warning.
4. **Config** through SAELens's own ``load_sae_config_from_huggingface`` (no weights): the hook,
   the architecture (must be one SAEBench's ``BaseSAE`` classes express) and the normalization.

Loading (:func:`load_release_sae`) is ``SAE.from_pretrained`` (SAELens picks the converter, casts
bf16 weights to float32, folds a known activation-norm scaling factor), then
``csae_bench.architectures.export.to_base_sae`` (JumpReLU thresholds scaled with the decoder
norms), with a ``blocks.L.hook_resid_pre`` hook renamed to the identical
``blocks.{L-1}.hook_resid_post`` (:func:`equivalent_resid_post`) so every eval accepts it.

Generic SAE-vs-model checks (width vs ``d_model``, layer exists, hook kind per eval) are not here:
they apply to every SAE, folder or release, and live with the pipeline's up-front check.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csae_bench.hub import hub_reachable as _hub_reachable
from csae_bench.suite import SuiteError

logger = logging.getLogger(__name__)

SEP = ":"
"""Separator of ``release:sae_id`` (SAELens release names contain no colon)."""

DEQUANTIZED_WARNING = (
    "{spec} was trained on the original bf16 weights of {model}; the embedded model is "
    "Gemma-3-270M dequantized from a Q4_K_M GGUF, so its residual stream differs slightly and "
    "reconstruction/CE metrics read somewhat worse than on the original (docs/pretrained_saes.md)."
)


class ReleaseError(SuiteError):
    """A ``release:sae_id`` cannot be used (unknown, offline, wrong model, unsupported); the
    one-line message names it and says what to do. A ``SuiteError``, so the CLI exits 2."""


@dataclass(frozen=True)
class ReleaseSAE:
    """One resolved ``release:sae_id``: where SAELens finds it and what it was trained on."""

    release: str
    sae_id: str
    repo_id: str
    """Hugging Face repo holding the release (yaml ``repo_id``)."""
    path: str
    """Folder (or file) of this SAE inside the repo (yaml ``saes[].path``)."""
    model: str
    """Model the release was trained on (yaml ``model``, a TransformerLens name)."""
    conversion_func: str | None
    """SAELens loader name (yaml ``conversion_func``; ``None`` = SAELens format)."""
    model_kwargs: dict[str, Any] | None = None
    """``config_overrides.model_from_pretrained_kwargs`` of the release (e.g. processed weights)."""

    @property
    def spec(self) -> str:
        return f"{self.release}{SEP}{self.sae_id}"


# ---------------------------------------------------------------- parsing


def is_release_spec(entry: str) -> bool:
    """True when ``entry`` reads as ``release:sae_id`` rather than a folder: it has a colon and is
    not an existing path."""
    return SEP in entry and not Path(entry).expanduser().exists()


def split_sae_entries(
    value: str | list[str] | tuple[str, ...] | None,
) -> tuple[list[str], list[str]]:
    """``--saes`` / suite ``saes`` -> ``(folders, release_specs)``. ``value`` is one string
    (comma-separated entries allowed) or a list of them; empty entries are dropped.

    Raises ``SuiteError`` for a non-string entry or a malformed ``release:sae_id``."""
    if value is None:
        return [], []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
        raise SuiteError(
            f"saes must be a folder, 'release:sae_id', or a list of them, got {value!r}."
        )
    folders: list[str] = []
    releases: list[str] = []
    for item in items:
        for entry in (e.strip() for e in item.split(",")):
            if not entry:
                continue
            if is_release_spec(entry):
                release, _, sae_id = entry.partition(SEP)
                if not release or not sae_id:
                    raise SuiteError(
                        f"--saes {entry!r}: write a SAELens SAE as release:sae_id, e.g. "
                        "gemma-scope-2-270m-pt-res-all:layer_6_width_16k_l0_small."
                    )
                if entry not in releases:
                    releases.append(entry)
            elif entry not in folders:
                folders.append(entry)
    return folders, releases


# ---------------------------------------------------------------- SAELens's directory


def _yaml_path() -> Path:
    spec = importlib.util.find_spec("sae_lens")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ReleaseError("SAELens is not installed: pip install 'sae-lens>=6.50,<7'.")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"


@functools.cache
def pretrained_directory() -> dict[str, dict[str, Any]]:
    """SAELens's pretrained directory as plain data: ``{release: {"repo_id", "model",
    "conversion_func", "config_overrides", "saes": {sae_id: path}}}``, from
    ``sae_lens/pretrained_saes.yaml`` (the file ``get_pretrained_saes_directory`` parses)."""
    import yaml

    with _yaml_path().open(encoding="utf-8") as fh:
        raw = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {
        release: {
            "repo_id": value["repo_id"],
            "model": value["model"],
            "conversion_func": value.get("conversion_func"),
            "config_overrides": value.get("config_overrides") or {},
            "saes": {str(s["id"]): str(s["path"]) for s in value.get("saes", [])},
        }
        for release, value in raw.items()
    }


def _sae_lens_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sae-lens")
    except PackageNotFoundError:
        return "?"


def resolve_release(spec: str) -> ReleaseSAE:
    """Look ``release:sae_id`` up in SAELens's directory (no network, no torch).

    Raises :class:`ReleaseError` naming the closest releases / ids when either is unknown."""
    release, _, sae_id = spec.partition(SEP)
    directory = pretrained_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, list(directory), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ReleaseError(
            f"--saes {spec}: release {release!r} is not in SAELens {_sae_lens_version()}'s "
            f"pretrained directory (sae_lens/pretrained_saes.yaml).{hint} Use a listed release, "
            "upgrade sae-lens, or pass a local SAE folder."
        )
    entry = directory[release]
    if sae_id not in entry["saes"]:
        ids = list(entry["saes"])
        close = difflib.get_close_matches(sae_id, ids, n=3, cutoff=0.5) or ids[:3]
        raise ReleaseError(
            f"--saes {spec}: release {release} has no SAE id {sae_id!r} ({len(ids)} ids, e.g. "
            f"{', '.join(close)}); use one of its ids from sae_lens/pretrained_saes.yaml."
        )
    overrides = entry["config_overrides"]
    return ReleaseSAE(
        release=release,
        sae_id=sae_id,
        repo_id=entry["repo_id"],
        path=entry["saes"][sae_id],
        model=entry["model"],
        conversion_func=entry["conversion_func"],
        model_kwargs=overrides.get("model_from_pretrained_kwargs") or None,
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


# ---------------------------------------------------------------- loading and labels


def load_release_sae(spec: str, device: str = "cpu"):
    """``release:sae_id`` as a SAEBench ``BaseSAE`` on ``device`` (float32; ``W_enc``
    [d_in, d_sae], ``W_dec`` [d_sae, d_in] with unit-norm rows, activations in model units).

    ``SAE.from_pretrained(release, sae_id)`` (``sae_lens/saes/sae.py``; converters in
    ``sae_lens/loading/pretrained_sae_loaders.py``) loads it as SAELens does (bf16 ->
    float32, norm-factor folding); ``to_base_sae`` adapts it (SAEBench's ``JumpReluSAE`` /
    ``TopKSAE`` / ``ReluSAE``, decoder rows unit-norm, JumpReLU threshold scaled alike). The
    ``hook_name`` is :func:`equivalent_resid_post` of the SAE's. Raises :class:`ReleaseError`
    for an SAE that cannot be adapted."""
    from sae_lens import SAE

    from csae_bench.architectures.export import ExportError, to_base_sae

    release, _, sae_id = spec.partition(SEP)
    sae = SAE.from_pretrained(release, sae_id, device="cpu", dtype="float32")
    try:
        return to_base_sae(
            sae, hook_name=equivalent_resid_post(sae.cfg.metadata.hook_name), device=device
        )
    except ExportError as err:
        raise ReleaseError(f"--saes {spec}: {err}") from None


def sae_source(release: str, sae_id: str) -> str:
    """Where a leaderboard row's SAE came from: ``release`` (a SAELens pretrained release),
    ``trained`` (trained by this run: ``csae_bench-…`` release, ``<arch>-d<width>-s<seed>`` id) or
    ``folder`` (a local SAE folder given to ``--saes``)."""
    if release in pretrained_directory():
        return "release"
    if release.startswith("csae_bench-") and re.match(r"^[a-z][a-z0-9_-]*?-d\d+-s\d+$", sae_id):
        return "trained"
    return "folder"

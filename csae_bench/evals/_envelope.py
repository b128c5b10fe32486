"""The envelope every csae_bench eval result carries around its metrics, built in one place.

SAEBench's ``BaseEvalOutput`` fields (``eval_id``, ``datetime_epoch_millis``,
``sae_bench_commit_hash``, ``sae_lens_id``, ``sae_lens_release_id``, ``sae_lens_version``,
``sae_cfg_dict``) plus ``csae_bench_commit_hash``, a field of our own. Each output class declares
that field with :data:`CSAE_BENCH_COMMIT_FIELD` and re-describes ``sae_bench_commit_hash`` with
:data:`SAE_BENCH_COMMIT_FIELD` (it holds SAEBench's version, not a checkout's commit). See :mod:`csae_bench.provenance` for what the
version fields hold.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import Field

from csae_bench.provenance import git_commit, sae_bench_version, sae_lens_version

SAE_BENCH_COMMIT_FIELD = Field(
    title="SAE Bench Version",
    description=(
        "The installed SAEBench that ran the evaluation: sae-bench==<version>, with @<commit> "
        "when it was installed from git (csae_bench's own commit is csae_bench_commit_hash)."
    ),
)

CSAE_BENCH_COMMIT_FIELD = Field(
    default=None,
    title="csae_bench Commit Hash",
    description=(
        "The git commit of the csae_bench checkout that produced this result (null when csae_bench "
        "is not run from a git checkout). sae_bench_commit_hash holds the installed SAEBench "
        "(sae-bench==<version>, with @<commit> for a VCS install)."
    ),
)


def _plain(value: Any) -> Any:
    """``value`` with every leaf a JSON scalar (anything else as its ``str``), dicts and lists kept."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int | float | str | bool | type(None)):
        return value
    return str(value)


def sae_cfg_dict(sae) -> dict[str, Any] | None:
    """The SAE's config as plain JSON data (``cfg.to_dict()``, or its attributes); None without one."""
    cfg = getattr(sae, "cfg", None)
    if cfg is None:
        return None
    return _plain(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg)))


def envelope(sae, sae_id: str, release: str | None) -> dict[str, Any]:
    """The provenance fields of one eval result of ``sae`` (keyword arguments of an output class)."""
    return dict(
        eval_id=str(uuid.uuid4()),
        datetime_epoch_millis=int(time.time() * 1000),
        sae_bench_commit_hash=sae_bench_version(),
        sae_lens_id=sae_id,
        sae_lens_release_id=release,
        sae_lens_version=sae_lens_version(),
        sae_cfg_dict=sae_cfg_dict(sae),
        csae_bench_commit_hash=git_commit(),
    )


def generate_schema(output_cls: type, path: str | Path) -> Path:
    """Write the JSON schema of an eval output class the way SAEBench does for its own evals."""
    from sae_bench.evals.generate_json_schemas import generate_json_schema

    from csae_bench.utils import atomic_path

    with atomic_path(path) as tmp:
        generate_json_schema(output_cls, str(tmp))
    return Path(path)

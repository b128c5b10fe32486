"""Reading a results folder: SAEBench eval result files -> validated :class:`ResultFile` objects
and their metrics as flat ``{"category.metric": value}`` dicts.

Works on any folder of SAEBench result files (``*_eval_results.json``, found recursively), ours or
written by SAEBench itself for other SAEs. A file of an eval type registered here is validated
against its output class (or, for core, SAEBench's own ``CoreEvalOutput``); eval types this package
does not know are kept unvalidated. A file that is not valid JSON, is not an eval result, or does
not validate is reported as skipped, with the offending fields. A non-finite metric, or SAEBench's
-1 stand-in for NaN, is never read as a number (:func:`metric_flags`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RESULT_GLOB = "*_eval_results.json"
"""SAEBench's result-file naming (``<release>_<sae_id>_eval_results.json``)."""


@dataclass
class ResultFile:
    """One parsed eval result file."""

    path: Path
    data: dict[str, Any]
    validated_as: str | None = None
    """The output class the file validated against (None: an eval type we do not know)."""

    @property
    def eval_type(self) -> str:
        """SAEBench ``eval_type_id`` (``core``, ``nces``, ``csae_probing``, ...)."""
        return str(self.data["eval_type_id"])

    @property
    def key(self) -> tuple[str, str]:
        """``(sae_lens_release_id, sae_lens_id)``: which SAE the result is of (the file's stem
        when the result names none)."""
        return (
            str(self.data.get("sae_lens_release_id") or ""),
            str(self.data.get("sae_lens_id") or self.path.stem),
        )


def registered_specs() -> dict[str, Any]:
    """``{eval_type_id: EvalSpec}`` of every built-in and registered eval."""
    from csae_bench.evals.registry import EVALS, available_evals

    available_evals()  # imports the built-in evals
    return dict(EVALS)


def upstream_output_cls(output_cls: type) -> type | None:
    """SAEBench's own output class that ``output_cls`` extends (``CsaeCoreEvalOutput`` ->
    ``CoreEvalOutput``), or None when ``output_cls`` is our own eval type."""
    from sae_bench.evals.base_eval_output import BaseEvalOutput

    for cls in output_cls.__mro__[1:]:
        if (
            cls.__module__.startswith("sae_bench.")
            and issubclass(cls, BaseEvalOutput)
            and cls is not BaseEvalOutput
        ):
            return cls
    return None


def validation_reason(cls: type, err) -> str:
    """A skip reason naming every offending field (``a.b.c: message``) of a pydantic error."""
    problems = [
        f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()
    ]
    shown = "; ".join(problems[:6]) + (
        f"; and {len(problems) - 6} more" if len(problems) > 6 else ""
    )
    return f"does not validate as {cls.__name__}: {shown}"


def read_results(results_dir: Path) -> tuple[list[ResultFile], list[dict[str, str]]]:
    """Every readable eval result under ``results_dir`` and a list of the files skipped, with why.

    A file of a registered eval type is accepted if it validates against our output class or,
    for an eval type that extends one of SAEBench's (core), against SAEBench's own class — a file
    SAEBench wrote lacks our extra metrics, which are then empty (null) in the leaderboard. A
    skip reason names the offending fields.

    Returns:
        ``(results, skipped)``: results sorted by path; ``skipped`` as ``{"path", "reason"}``
        dicts (each also logged as a warning). Nothing is raised for a bad file.
    """
    from pydantic import ValidationError
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_str

    specs = registered_specs()
    results, skipped = [], []
    for path in sorted(Path(results_dir).rglob(RESULT_GLOB)):
        if path.name.startswith("."):
            continue  # an in-progress atomic write
        try:
            text = path.read_text()
            data = json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError) as err:
            skipped.append(
                {"path": str(path), "reason": f"not valid JSON ({type(err).__name__}: {err})"}
            )
            continue
        problems = []
        if not isinstance(data, dict):
            problems.append(f"a JSON {type(data).__name__}, not an object")
        else:
            if "eval_type_id" not in data:
                problems.append("no eval_type_id")
            if not isinstance(data.get("eval_result_metrics"), dict):
                problems.append("eval_result_metrics missing or not an object")
        if problems:
            skipped.append(
                {
                    "path": str(path),
                    "reason": f"not a SAEBench eval result ({', '.join(problems)})",
                }
            )
            continue
        spec = specs.get(str(data["eval_type_id"]))
        validated_as = None
        if spec is not None:
            reason = None
            for cls in (spec.output_cls, upstream_output_cls(spec.output_cls)):
                if cls is None:
                    continue
                try:
                    validate_eval_output_format_str(text, cls)
                except ValidationError as err:
                    # the reason against SAEBench's own class, when there is one, is the one to fix
                    reason = validation_reason(cls, err)
                    continue
                validated_as = cls.__name__
                break
            if validated_as is None:
                skipped.append({"path": str(path), "reason": str(reason)})
                continue
        results.append(ResultFile(path, data, validated_as))
    for item in skipped:
        logger.warning("Skipping %s: %s", item["path"], item["reason"])
    return results, skipped


# ---------------------------------------------------------------- metrics of one result


_NON_FINITE_STRINGS = {
    "nan": "nan",
    "inf": "inf",
    "+inf": "inf",
    "infinity": "inf",
    "+infinity": "inf",
    "-inf": "-inf",
    "-infinity": "-inf",
}


def _non_finite_name(value: Any) -> str | None:
    """``"nan"``/``"inf"``/``"-inf"`` if ``value`` is a non-finite float or the string a result file
    stores one as; else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return _NON_FINITE_STRINGS.get(value.strip().lower())
    return None


def flat_items(metrics: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """``("category.metric", raw value)`` for every entry of ``eval_result_metrics`` (a top-level
    entry that is not a category is named by itself), in file order."""
    for category, values in metrics.items():
        if isinstance(values, dict):
            for name, value in values.items():
                yield f"{category}.{name}", value
        else:
            yield category, values


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """``{"category.metric": value}`` for every finite numeric metric of ``eval_result_metrics``
    (non-finite values and the strings they are stored as are left out: see
    :func:`metric_flags`)."""
    return {
        name: float(value)
        for name, value in flat_items(metrics)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


CORE_NON_NEGATIVE = frozenset(
    {
        "model_behavior_preservation.kl_div_with_ablation",
        "model_behavior_preservation.kl_div_with_sae",
        "model_performance_preservation.ce_loss_with_ablation",
        "model_performance_preservation.ce_loss_with_sae",
        "model_performance_preservation.ce_loss_without_sae",
        "reconstruction_quality.mse",
        "shrinkage.l2_norm_in",
        "shrinkage.l2_norm_out",
        "shrinkage.l2_ratio",
        "sparsity.l0",
        "sparsity.l1",
        "misc_metrics.freq_over_1_percent",
        "misc_metrics.freq_over_10_percent",
        "misc_metrics.normalized_freq_over_1_percent",
        "misc_metrics.normalized_freq_over_10_percent",
        "misc_metrics.frac_alive",
    }
)
"""Core metrics that cannot be negative: an exact -1 there is SAEBench's NaN→-1 sentinel."""

SENTINEL_FLAG = "nan (SAEBench's -1 sentinel)"


def metric_flags(eval_type: str, metrics: dict[str, Any]) -> dict[str, str]:
    """``{"category.metric": why}`` for the metrics of one result that must be shown as null:
    non-finite values (``"nan"``, ``"inf"``, ``"-inf"``, as JSON's ``NaN``/``Infinity`` or the
    strings our result files store them as) and, in core results, SAEBench's NaN→-1 sentinels.

    SAEBench's core replaces every NaN metric by -1. An exact -1 in a metric that cannot be
    negative (:data:`CORE_NON_NEGATIVE`) is therefore a sentinel; once one is found the SAE
    produced NaNs, and every exact -1 of that result (e.g. a CE-loss score) is taken as one too.
    """
    flags = {}
    items = dict(flat_items(metrics))
    for name, value in items.items():
        why = _non_finite_name(value)
        if why is not None:
            flags[name] = why
    if eval_type == "core":
        minus_one = {
            name
            for name, value in items.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and value == -1
        }
        if minus_one & CORE_NON_NEGATIVE:
            flags.update(dict.fromkeys(minus_one, SENTINEL_FLAG))
    return flags

"""Results folder -> ``leaderboard.json`` (and, through :mod:`.plots`, ``plots/*.png``).

One row per SAE, from the result files :func:`~csae_bench.reporting.results.read_results`
accepts. Eval types registered here contribute their headline metrics with a direction; eval types
this package does not know contribute every flat numeric metric with ``direction: null``. A core
file SAEBench wrote itself is judged by SAEBench's ``CoreEvalOutput`` (our extra metric is then
null). A non-finite metric, or SAEBench's -1 stand-in for NaN, is null with a ``flag``: it never
sorts, plots or prints as a number. Rows are ranked by model, hook, architecture, width, seed, id.
A row's ``control`` is its architecture's registry flag (:attr:`csae_bench.architectures.
ArchitectureSpec.control`: random-decoder and the nulls); the table and every plot mark it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from csae_bench.architectures import is_control
from csae_bench.reporting.results import (
    ResultFile,
    flat_items,
    flat_metrics,
    metric_flags,
    read_results,
    registered_specs,
)
from csae_bench.utils import atomic_write_json, git_commit, versions

SCHEMA_VERSION = 1
LEADERBOARD_NAME = "leaderboard.json"
"""The leaderboard's file name in a results folder."""
PLOTS_DIR = "plots"
"""The plots' folder in a results folder."""

NCES_SEPARATION_METRIC = "nces.nces_mean"
"""The leaderboard's headline NCES (the unweighted mean; docs/validity.md): the metric whose CI
decides ``nces_separated_from_control``, the console table's NCES column and the L0-vs-NCES plot."""


def leaderboard_path(results_dir: str | Path) -> Path:
    """``<results_dir>/leaderboard.json``."""
    return Path(results_dir) / LEADERBOARD_NAME


def _sae_info(release: str, sid: str, files: list[ResultFile]) -> dict[str, Any]:
    """The row's description of one SAE: from its id when this project trained it
    (:func:`csae_bench.pipeline.parse_sae_id`), else from the result files' ``sae_cfg_dict``."""
    from csae_bench.pipeline import parse_sae_id
    from csae_bench.releases import sae_source  # issue 16: trained / folder / release

    cfg: dict[str, Any] = next(
        (f.data["sae_cfg_dict"] for f in files if isinstance(f.data.get("sae_cfg_dict"), dict)), {}
    )
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    ours = parse_sae_id(sid)
    if ours is not None:
        arch, d_sae, seed = ours
    else:
        from csae_bench.architectures import architecture_of

        arch = cfg.get("architecture_str") or cfg.get("architecture") or "unknown"
        arch = architecture_of(arch, meta) or arch
        d_sae, seed = cfg.get("d_sae"), cfg.get("seed")
    tokens = cfg.get("training_tokens") or meta.get("training_tokens")
    return {
        "sae_release": release,
        "sae_id": sid,
        "source": sae_source(release, sid),
        "model": cfg.get("model_name") or meta.get("model_name"),
        "hook": cfg.get("hook_name") or meta.get("hook_name"),
        "architecture": str(arch),
        "d_sae": d_sae,
        "seed": seed,
        "training_tokens": tokens if isinstance(tokens, int) and tokens > 0 else None,
        "sae_lens_version": next((f.data.get("sae_lens_version") for f in files), None),
        "sae_bench_commit_hash": next((f.data.get("sae_bench_commit_hash") for f in files), None),
    }


def _ci(flat: dict[str, float], metric: str) -> tuple[float, float] | None:
    low, high = flat.get(f"{metric}_ci_low"), flat.get(f"{metric}_ci_high")
    return None if low is None or high is None else (low, high)


def mark_separation(rows: list[dict[str, Any]], ci_of: dict[int, tuple[float, float]]) -> None:
    """Set ``nces_separated_from_control`` on every row. ``ci_of``: ``{id(row): (low, high)}``,
    the NCES bootstrap CI of the rows that have one. A non-control row with a CI: True if it lies
    above the CI of every control row of the same model and hook (the same seed's when there is
    one), False if they overlap; otherwise None (nothing to compare)."""
    for row in rows:
        row["nces_separated_from_control"] = None
        ci = ci_of.get(id(row))
        if row["control"] or ci is None:
            continue
        peers = [
            r
            for r in rows
            if r["control"]
            and id(r) in ci_of
            and (r["model"], r["hook"]) == (row["model"], row["hook"])
        ]
        peers = [r for r in peers if r["seed"] == row["seed"]] or peers
        if peers:
            row["nces_separated_from_control"] = all(ci[0] > ci_of[id(r)][1] for r in peers)


def build_leaderboard(
    results_dir: str | Path, requested_evals: list[str] | None = None
) -> tuple[dict[str, Any], list[ResultFile]]:
    """The leaderboard of ``results_dir`` (and the parsed result files, for plots).

    ``requested_evals`` (eval type ids): each row lists those it lacks under ``missing_evals``.
    Unreadable files are listed under ``skipped_files``, never raised."""
    specs = registered_specs()
    results, skipped = read_results(Path(results_dir))
    by_sae: dict[tuple[str, str], list[ResultFile]] = defaultdict(list)
    for r in results:
        by_sae[r.key].append(r)
    rows = []
    nces_ci: dict[int, tuple[float, float]] = {}
    eval_types: set[str] = set()
    for (release, sid), files in by_sae.items():
        row = _sae_info(release, sid, files)
        row["metrics"] = {}
        row["eval_ids"] = {}
        flags_of: dict[str, dict[str, str]] = {}
        row["validated_as"] = {}
        flat_of: dict[str, dict[str, float]] = {}
        for f in sorted(files, key=lambda f: (f.eval_type, f.data.get("datetime_epoch_millis", 0))):
            raw = f.data["eval_result_metrics"]
            flags = metric_flags(f.eval_type, raw)
            flat = {k: v for k, v in flat_metrics(raw).items() if k not in flags}
            spec = specs.get(f.eval_type)
            names = (
                list(spec.headline)
                if spec is not None
                else [n for n, _ in flat_items(raw) if n in flat or n in flags]
            )
            chosen = {}
            for m in names:
                chosen[m] = {
                    "value": flat.get(m),
                    "direction": spec.headline[m] if spec is not None else None,
                }
                if m in flags:
                    chosen[m]["flag"] = flags[m]
                ci = _ci(flat, m)
                if ci is not None and flat.get(m) is not None:
                    chosen[m]["ci"] = list(ci)
            row["metrics"][f.eval_type] = chosen  # the latest file of a type wins
            row["eval_ids"][f.eval_type] = f.data.get("eval_id")
            row["validated_as"][f.eval_type] = f.validated_as
            flags_of[f.eval_type] = flags
            flat_of[f.eval_type] = flat
            eval_types.add(f.eval_type)
        # every flagged metric, headline or not, as "<eval type>.<category>.<metric>"
        row["flags"] = {
            f"{e}.{m}": why for e, fl in sorted(flags_of.items()) for m, why in fl.items()
        }
        row["l0"] = flat_of.get("core", {}).get("sparsity.l0")
        row["control"] = is_control(row["architecture"])
        ci = _ci(flat_of.get("nces", {}), NCES_SEPARATION_METRIC)
        if ci is not None:
            nces_ci[id(row)] = ci
        if requested_evals is not None:
            row["missing_evals"] = [e for e in requested_evals if e not in row["metrics"]]
        rows.append(row)
    mark_separation(rows, nces_ci)
    rows.sort(
        key=lambda r: (
            str(r["model"]),
            str(r["hook"]),
            r["architecture"],
            r["d_sae"] or 0,
            r["seed"] if r["seed"] is not None else -1,
            r["sae_id"],
        )
    )
    board = {
        "schema_version": SCHEMA_VERSION,
        "generated_at_epoch_millis": int(time.time() * 1000),
        "results_dir": str(Path(results_dir)),
        "versions": versions(),
        "commit": git_commit(),
        "eval_types": sorted(eval_types),
        "unknown_eval_types": sorted(e for e in eval_types if e not in specs),
        "metric_directions": {e: dict(specs[e].headline) for e in sorted(eval_types) if e in specs},
        "rows": rows,
        "skipped_files": skipped,
    }
    if requested_evals is not None:
        board["requested_evals"] = list(requested_evals)
    return board, results


def metric_value(row: dict[str, Any], eval_type: str, metric: str) -> float | None:
    """A row's value of ``<eval_type>/<metric>``; None when absent or flagged (stored as null)."""
    entry = row.get("metrics", {}).get(eval_type, {}).get(metric)
    return None if entry is None else entry.get("value")


def metric_ci(row: dict[str, Any], eval_type: str, metric: str) -> tuple[float, float] | None:
    """A row's CI ``(low, high)`` of ``<eval_type>/<metric>`` when its eval reports one (the
    ``<metric>_ci_low`` / ``_ci_high`` pair of the result file), else None."""
    entry = row.get("metrics", {}).get(eval_type, {}).get(metric) or {}
    ci = entry.get("ci")
    return None if ci is None else (float(ci[0]), float(ci[1]))


def write_leaderboard(
    results_dir: str | Path, requested_evals: list[str] | None = None, plots: bool = True
) -> tuple[dict[str, Any], list[Path]]:
    """Build ``<results_dir>/leaderboard.json`` and ``<results_dir>/plots/*.png``.
    ``requested_evals`` None: those of the ``leaderboard.json`` already there, if any (so a
    rebuild with ``csae-bench leaderboard`` keeps each row's ``missing_evals``).

    Returns:
        ``(board, plot paths)``.

    Raises:
        FileNotFoundError: ``results_dir`` is not a folder (the message says what to pass).
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(
            f"Results folder {results_dir} does not exist; pass the --out of a run "
            "or a folder holding SAEBench *_eval_results.json files."
        )
    if requested_evals is None:  # a rebuild keeps the evals the run asked for (missing_evals)
        previous = read_leaderboard(results_dir) or {}
        requested_evals = previous.get("requested_evals")
    board, results = build_leaderboard(results_dir, requested_evals)
    atomic_write_json(leaderboard_path(results_dir), board)
    if not plots:
        return board, []
    from csae_bench.reporting.plots import make_plots

    return board, make_plots(board, results, results_dir / PLOTS_DIR)


def read_leaderboard(results_dir: str | Path) -> dict[str, Any] | None:
    """The ``leaderboard.json`` of ``results_dir`` as written by :func:`write_leaderboard`; None
    when the folder has none."""
    import json

    path = leaderboard_path(results_dir)
    return json.loads(path.read_text()) if path.exists() else None

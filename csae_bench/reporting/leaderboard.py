"""Results folder -> ``leaderboard.json``, a rich console table and PNG plots.

Works on any folder of SAEBench result files (``*_eval_results.json``, found recursively), ours or
written by SAEBench itself for other SAEs. Eval types registered here contribute their headline
metrics with a direction; eval types this package does not know contribute every flat numeric
metric with ``direction: null``. A core file SAEBench wrote itself is judged by SAEBench's
``CoreEvalOutput`` (our extra metric is then null). A file that is not valid JSON, is not an eval
result, or does not validate is reported in ``skipped_files`` with the offending fields, and left
out. A non-finite metric, or SAEBench's -1 stand-in for NaN, is null with a ``flag``: it never sorts,
plots or prints as a number.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csae_bench.utils import atomic_path, atomic_write_json, git_commit, versions

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RESULT_GLOB = "*_eval_results.json"
_OUR_SAE_ID = re.compile(r"^(?P<arch>[a-z][a-z0-9_-]*?)-d(?P<d_sae>\d+)-s(?P<seed>\d+)$")
_PROBE_METRIC = re.compile(r"^(?P<who>sae|llm)_top_(?P<k>\d+)_test_accuracy$")
L0_METRIC = ("core", "sparsity.l0")
CE_METRIC = ("core", "model_performance_preservation.ce_loss_score")


@dataclass
class ResultFile:
    """One parsed eval result file."""

    path: Path
    data: dict[str, Any]
    validated_as: str | None = None
    """The output class the file validated against (None: an eval type we do not know)."""

    @property
    def eval_type(self) -> str:
        return str(self.data["eval_type_id"])

    @property
    def key(self) -> tuple[str, str]:
        return (
            str(self.data.get("sae_lens_release_id") or ""),
            str(self.data.get("sae_lens_id") or self.path.stem),
        )


def _registered_specs() -> dict[str, Any]:
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
    skip reason names the offending fields."""
    from pydantic import ValidationError
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_str

    specs = _registered_specs()
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


def _flat_items(metrics: dict[str, Any]):
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
        for name, value in _flat_items(metrics)
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
    items = dict(_flat_items(metrics))
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


def _sae_info(release: str, sae_id: str, files: list[ResultFile]) -> dict[str, Any]:
    cfg: dict[str, Any] = next(
        (f.data["sae_cfg_dict"] for f in files if isinstance(f.data.get("sae_cfg_dict"), dict)), {}
    )
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    ours = _OUR_SAE_ID.match(sae_id)
    arch = (
        ours["arch"]
        if ours
        else (cfg.get("architecture_str") or cfg.get("architecture") or "unknown")
    )
    try:
        from csae_bench.architectures import FROM_SAELENS

        arch = arch if ours else FROM_SAELENS.get(arch, arch)
    except ImportError:
        pass
    tokens = cfg.get("training_tokens") or meta.get("training_tokens")
    from csae_bench.releases import (
        sae_source,  # issue 16: trained / folder / release
    )

    return {
        "sae_release": release,
        "sae_id": sae_id,
        "source": sae_source(release, sae_id),
        "model": cfg.get("model_name") or meta.get("model_name"),
        "hook": cfg.get("hook_name") or meta.get("hook_name"),
        "architecture": str(arch),
        "d_sae": int(ours["d_sae"]) if ours else cfg.get("d_sae"),
        "seed": int(ours["seed"]) if ours else cfg.get("seed"),
        "training_tokens": tokens if isinstance(tokens, int) and tokens > 0 else None,
        "sae_lens_version": next((f.data.get("sae_lens_version") for f in files), None),
        "sae_bench_commit_hash": next((f.data.get("sae_bench_commit_hash") for f in files), None),
    }


CONTROL_ARCHITECTURES = frozenset({"random-decoder"})
"""Null models trained alongside (a frozen random decoder): shown, flagged, never a contender."""

NCES_SEPARATION_METRIC = "nces.nces_freq_weighted_mean"


def _ci(flat: dict[str, float], metric: str) -> tuple[float, float] | None:
    low, high = flat.get(f"{metric}_ci_low"), flat.get(f"{metric}_ci_high")
    return None if low is None or high is None else (low, high)


def _mark_separation(rows: list[dict[str, Any]], ci_of: dict[int, tuple[float, float]]) -> None:
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

    ``requested_evals`` (eval type ids): each row lists those it lacks under ``missing_evals``."""
    specs = _registered_specs()
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
                else [n for n, _ in _flat_items(raw) if n in flat or n in flags]
            )
            chosen = {}
            for m in names:
                chosen[m] = {
                    "value": flat.get(m),
                    "direction": spec.headline[m] if spec is not None else None,
                }
                if m in flags:
                    chosen[m]["flag"] = flags[m]
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
        row["control"] = row["architecture"] in CONTROL_ARCHITECTURES
        ci = _ci(flat_of.get("nces", {}), NCES_SEPARATION_METRIC)
        if ci is not None:
            nces_ci[id(row)] = ci
        if requested_evals is not None:
            row["missing_evals"] = [e for e in requested_evals if e not in row["metrics"]]
        rows.append(row)
    _mark_separation(rows, nces_ci)
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
    return board, results


def metric_value(row: dict[str, Any], eval_type: str, metric: str) -> float | None:
    entry = row.get("metrics", {}).get(eval_type, {}).get(metric)
    return None if entry is None else entry.get("value")


# ---------------------------------------------------------------- console table


COMPACT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("core", "model_performance_preservation.ce_loss_score", "CE"),
    ("core", "reconstruction_quality.explained_variance_mean_centred", "EVmc"),
    ("nces", "nces.nces_freq_weighted_mean", "NCES"),
    ("csae_probing", "probing.sae_top_1_test_accuracy", "probe1"),
)
"""The default console table's headline metrics: (eval type, metric, short header)."""

_LEGEND = {
    "CE": "core CE-loss score",
    "EVmc": "core explained variance, mean-centred",
    "NCES": "NCES, frequency-weighted",
    "probe1": "top-1 probe accuracy",
}


def row_label(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The SAE id; prefixed with its release when the rows come from several releases and two
    share an id."""
    same_id = [r for r in rows if r["sae_id"] == row["sae_id"]]
    if len({r["sae_release"] for r in same_id}) > 1 and row["sae_release"]:
        return f"{row['sae_release']}/{row['sae_id']}"
    return str(row["sae_id"])


def row_flags(row: dict[str, Any]) -> str:
    """Short flag codes: ``ctrl`` a control (random decoder), ``~null`` NCES not separated from
    the control's, ``!`` a metric stored as null because it was non-finite or a sentinel."""
    codes = []
    if row.get("control"):
        codes.append("ctrl")
    if row.get("nces_separated_from_control") is False:
        codes.append("~null")
    if row.get("flags"):
        codes.append("!")
    return " ".join(codes)


def render_table(board: dict[str, Any], console=None, wide: bool = False) -> None:
    """Print the leaderboard as rich tables, one row per SAE, labelled by SAE id.

    Default: fits an 80-column console — L0, the headline metrics of :data:`COMPACT_COLUMNS`
    present in the board and a flag column (:func:`row_flags`), one table per model and hook
    (titled with them; metrics are comparable only within one), then a legend. ``wide``: one table
    with model, hook, architecture, width, seed and every headline metric of every eval type,
    printed at the width it needs (lines may exceed the console; nothing is folded)."""
    from rich.console import Console

    console = console or Console()
    rows = board["rows"]
    if wide:
        columns = [
            (e, m, f"{_short_eval(e)}\n{m.split('.')[-1]}{_arrow(d)}")
            for e, directions in board["metric_directions"].items()
            for m, d in directions.items()
        ]
        info = [
            ("model", lambda r: str(r["model"])),
            ("hook", lambda r: str(r["hook"])),
            ("arch", lambda r: str(r["architecture"])),
            ("d_sae", lambda r: str(r["d_sae"])),
            ("seed", lambda r: str(r["seed"])),
        ]
        table = _table(
            rows, rows, columns, info, f"csae_bench leaderboard — {board['results_dir']}"
        )
        from rich.measure import Measurement

        needed = Measurement.get(console, console.options.update_width(10**5), table).maximum
        width = console.width
        console.width = max(width, needed)
        try:
            console.print(table, crop=False)
        finally:
            console.width = width
    else:
        present = set(board["eval_types"])
        columns = [
            (e, m, f"{h}{_arrow(board['metric_directions'].get(e, {}).get(m))}")
            for e, m, h in COMPACT_COLUMNS
            if e in present
        ]
        console.print(f"csae_bench leaderboard — {board['results_dir']}")
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            groups[(str(row["model"]), str(row["hook"]))].append(row)
        for (model, hook), group in groups.items():
            console.print(_table(group, rows, columns, [], f"{model} · {hook}"))
        legend = [f"{h}: {_LEGEND[h]}" for e, _, h in COMPACT_COLUMNS if e in present]
        console.print(
            "; ".join(legend + ["↑ higher is better", "— none or null"])
            + ". flag: ctrl control (random decoder), ~null NCES CI overlaps the control's, "
            "! non-finite value stored as null (leaderboard.json: flags). --wide for all metrics."
        )
    if board["unknown_eval_types"]:
        console.print(
            f"Also in leaderboard.json (eval types without headline metrics here): "
            f"{', '.join(board['unknown_eval_types'])}"
        )
    for item in board["skipped_files"]:
        console.print(f"[yellow]skipped[/] {item['path']}: {item['reason']}")


def _table(rows, all_rows, columns, info, title: str):
    from rich import box
    from rich.table import Table

    # one space of padding plus the box's blank divider: two spaces between columns
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        title_justify="left",
        padding=(0, 0, 0, 1),
    )
    table.add_column("SAE", overflow="fold")
    for name, _ in info:
        table.add_column(name, overflow="fold")
    table.add_column("L0", justify="right", no_wrap=True)
    for _, _, header in columns:
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("flag", no_wrap=True)
    for row in rows:
        cells = [row_label(row, all_rows), *(f(row) for _, f in info), _fmt(row["l0"])]
        cells += [_fmt(metric_value(row, e, m)) for e, m, _ in columns]
        table.add_row(*cells, row_flags(row))
    return table


def _arrow(direction: str | None) -> str:
    return {"higher": "↑", "lower": "↓"}.get(direction or "", "")


def _short_eval(eval_type: str) -> str:
    return {"csae_probing": "probing"}.get(eval_type, eval_type)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if abs(value) < 100:
            return f"{value:.3g}"
        # plain integers up to 6 digits (an L0 of 1234 reads 1234, not 1.23e+03)
        return f"{value:.0f}" if abs(value) < 1e6 else f"{value:.2e}"
    return str(value)


# ---------------------------------------------------------------- plots


def _nces_metric(board: dict[str, Any]) -> str | None:
    directions = board["metric_directions"].get("nces", {})
    return next(iter(directions), None)


def _scatter(rows, x_of, y_of, path: Path, xlabel: str, ylabel: str, title: str) -> Path | None:
    import matplotlib.pyplot as plt

    points = defaultdict(list)
    for row in rows:
        x, y = x_of(row), y_of(row)
        if x is not None and y is not None:
            points[row["architecture"]].append((x, y))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for arch, xy in sorted(points.items()):
        ax.scatter([p[0] for p in xy], [p[1] for p in xy], label=arch, s=40)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    set_l0_axis(ax, [p[0] for xy in points.values() for p in xy])
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def set_l0_axis(ax, values: list[float]) -> None:
    """A log x axis when ``values`` span a decade or more, else linear; tick labels are plain
    numbers either way (matplotlib's default log labels read ``3.2×10¹``)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if values and min(values) > 0 and max(values) / min(values) >= 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out ``fig``, write it as a PNG atomically, close it (shared by every report's plots)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


def _nces_values(f: ResultFile) -> list[float]:
    values = []
    for detail in f.data.get("eval_result_details") or []:
        if isinstance(detail, dict):
            v = detail.get("nces")
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v:
                values.append(float(v))
    return values


def _probing_by_k(metrics: dict[str, Any]) -> dict[str, dict[int, float]]:
    """``{"sae"|"llm": {k: accuracy}}`` from the probing eval's ``<who>_top_<k>_test_accuracy``."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for name, value in flat_metrics(metrics).items():
        m = _PROBE_METRIC.match(name.split(".")[-1])
        if m:
            out[m["who"]][int(m["k"])] = value
    return out


def make_plots(
    board: dict[str, Any], results: list[ResultFile], plots_dir: str | Path
) -> list[Path]:
    """L0 vs CE-loss score, L0 vs NCES, NCES per architecture, probing accuracy vs k; a plot whose
    data is absent is not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir = Path(plots_dir)
    rows = board["rows"]
    made = [
        _scatter(
            rows,
            lambda r: r["l0"],
            lambda r: metric_value(r, *CE_METRIC),
            plots_dir / "l0_vs_ce_loss_score.png",
            "L0 (mean active features per token)",
            "CE-loss score (SAEBench core, higher is better)",
            "Sparsity vs model performance",
        ),
    ]
    nces_metric = _nces_metric(board)
    if nces_metric:
        made.append(
            _scatter(
                rows,
                lambda r: r["l0"],
                lambda r: metric_value(r, "nces", nces_metric),
                plots_dir / "l0_vs_nces.png",
                "L0 (mean active features per token)",
                f"NCES ({nces_metric.split('.')[-1]})",
                "Sparsity vs causal specificity",
            )
        )
    arch_of = {(r["sae_release"], r["sae_id"]): r["architecture"] for r in rows}
    per_arch: dict[str, list[float]] = defaultdict(list)
    for f in results:
        if f.eval_type == "nces" and f.key in arch_of:
            per_arch[arch_of[f.key]] += _nces_values(f)
    if per_arch:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for arch, values in sorted(per_arch.items()):
            ax.hist(
                values,
                bins=30,
                range=(-1, 1),
                histtype="step",
                linewidth=1.8,
                label=f"{arch} (n={len(values)})",
            )
        ax.set_xlabel("per-feature NCES")
        ax.set_ylabel("features")
        ax.set_title("NCES distribution per architecture")
        ax.legend()
        made.append(save_figure(fig, plots_dir / "nces_distribution.png"))
    curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for f in results:
        if f.eval_type == "csae_probing" and f.key in arch_of:
            by_who = _probing_by_k(f.data["eval_result_metrics"])
            for k, acc in by_who.get("sae", {}).items():
                curves[arch_of[f.key]][k].append(acc)
            for k, acc in by_who.get("llm", {}).items():
                curves["residual stream (reference)"][k].append(acc)
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for arch, by_k in sorted(curves.items()):
            ks = sorted(by_k)
            reference = arch.startswith("residual")
            ax.plot(
                ks,
                [sum(by_k[k]) / len(by_k[k]) for k in ks],
                marker="o",
                label=arch,
                linestyle="--" if reference else "-",
                color="grey" if reference else None,
            )
        ax.set_xscale("log")
        all_ks = sorted({k for by_k in curves.values() for k in by_k})
        ax.set_xticks(all_ks, [str(k) for k in all_ks])
        ax.minorticks_off()
        ax.set_xlabel("k (features in the sparse probe)")
        ax.set_ylabel("probe test accuracy (mean over tasks and seeds)")
        ax.set_title("Probing accuracy vs k")
        ax.grid(alpha=0.3)
        ax.legend()
        made.append(save_figure(fig, plots_dir / "probing_accuracy_vs_k.png"))
    return [p for p in made if p is not None]


def write_leaderboard(
    results_dir: str | Path, requested_evals: list[str] | None = None, plots: bool = True
) -> tuple[dict[str, Any], list[Path]]:
    """Build ``<results_dir>/leaderboard.json`` and ``<results_dir>/plots/*.png``."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(
            f"Results folder {results_dir} does not exist; pass the --out of a run "
            "or a folder holding SAEBench *_eval_results.json files."
        )
    board, results = build_leaderboard(results_dir, requested_evals)
    atomic_write_json(results_dir / "leaderboard.json", board)
    made = make_plots(board, results, results_dir / "plots") if plots else []
    return board, made

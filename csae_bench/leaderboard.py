"""Results folder -> ``leaderboard.json``, a rich console table and PNG plots.

Works on any folder of SAEBench result files (``*_eval_results.json``, found recursively), ours or
written by SAEBench itself for other SAEs. Eval types registered here contribute their headline
metrics with a direction; eval types this package does not know contribute every flat numeric
metric with ``direction: null``. A file that is not valid JSON, is not an eval result, or does not
validate against its registered output class is reported in ``skipped_files`` and left out.
"""

from __future__ import annotations

import json
import logging
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


def read_results(results_dir: Path) -> tuple[list[ResultFile], list[dict[str, str]]]:
    """Every readable eval result under ``results_dir`` and a list of the files skipped, with why."""
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
        if (
            not isinstance(data, dict)
            or "eval_type_id" not in data
            or not isinstance(data.get("eval_result_metrics"), dict)
        ):
            skipped.append(
                {
                    "path": str(path),
                    "reason": "not a SAEBench eval result (no eval_type_id / eval_result_metrics)",
                }
            )
            continue
        spec = specs.get(str(data["eval_type_id"]))
        if spec is not None:
            try:
                validate_eval_output_format_str(text, spec.output_cls)
            except ValidationError as err:
                skipped.append(
                    {
                        "path": str(path),
                        "reason": f"does not validate as {spec.output_cls.__name__}: "
                        f"{str(err).splitlines()[0]}",
                    }
                )
                continue
        results.append(ResultFile(path, data))
    for item in skipped:
        logger.warning("Skipping %s: %s", item["path"], item["reason"])
    return results, skipped


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """``{"category.metric": value}`` for every numeric metric of ``eval_result_metrics``."""
    out = {}
    for category, values in metrics.items():
        if isinstance(values, dict):
            for name, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    out[f"{category}.{name}"] = float(value)
        elif isinstance(values, int | float) and not isinstance(values, bool):
            out[category] = float(values)
    return out


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
    from csae_bench.saes_pretrained import sae_source  # issue 16: trained / folder / release

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
    eval_types: set[str] = set()
    for (release, sid), files in by_sae.items():
        row = _sae_info(release, sid, files)
        row["metrics"] = {}
        row["eval_ids"] = {}
        for f in sorted(files, key=lambda f: (f.eval_type, f.data.get("datetime_epoch_millis", 0))):
            flat = flat_metrics(f.data["eval_result_metrics"])
            spec = specs.get(f.eval_type)
            if spec is not None:
                chosen = {
                    m: {"value": flat.get(m), "direction": d} for m, d in spec.headline.items()
                }
            else:
                chosen = {m: {"value": v, "direction": None} for m, v in flat.items()}
            row["metrics"][f.eval_type] = chosen  # the latest file of a type wins
            row["eval_ids"][f.eval_type] = f.data.get("eval_id")
            eval_types.add(f.eval_type)
        l0 = flat_metrics(
            next((f.data["eval_result_metrics"] for f in files if f.eval_type == "core"), {})
        ).get("sparsity.l0")
        row["l0"] = l0
        if requested_evals is not None:
            row["missing_evals"] = [e for e in requested_evals if e not in row["metrics"]]
        rows.append(row)
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


def render_table(board: dict[str, Any], console=None, max_metrics_per_eval: int = 3) -> None:
    """A rich table: one row per SAE and seed, headline metrics of the registered evals."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    columns: list[tuple[str, str, str | None]] = []
    for eval_type, directions in board["metric_directions"].items():
        for metric, direction in list(directions.items())[:max_metrics_per_eval]:
            columns.append((eval_type, metric, direction))
    table = Table(title=f"csae_bench leaderboard — {board['results_dir']}", show_lines=False)
    for name in ("architecture", "d_sae", "seed", "L0"):
        table.add_column(
            name, justify="right" if name != "architecture" else "left", overflow="fold"
        )
    for eval_type, metric, direction in columns:
        arrow = {"higher": "↑", "lower": "↓"}.get(direction or "", "")
        short = {"csae_probing": "probing"}.get(eval_type, eval_type)
        table.add_column(
            f"{short}\n{metric.split('.')[-1]} {arrow}", justify="right", overflow="fold"
        )
    for row in board["rows"]:
        cells = [row["architecture"], str(row["d_sae"]), str(row["seed"]), _fmt(row["l0"])]
        cells += [_fmt(metric_value(row, e, m)) for e, m, _ in columns]
        table.add_row(*cells)
    console.print(table)
    if board["unknown_eval_types"]:
        console.print(
            f"Also in leaderboard.json (eval types without headline metrics here): "
            f"{', '.join(board['unknown_eval_types'])}"
        )
    for item in board["skipped_files"]:
        console.print(f"[yellow]skipped[/] {item['path']}: {item['reason']}")


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
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
    if all(p[0] > 0 for xy in points.values() for p in xy):
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


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

"""The leaderboard's PNG plots (L0 vs CE-loss score, L0 vs NCES, NCES per architecture, probing
accuracy vs k) and :func:`save_figure`, shared by every report's figures (the studies' too).

Controls (rows whose ``control`` is set: the registry's control architectures, random-decoder and
the nulls) are marked in every plot: ``(control)`` after their legend label, crosses in the
scatter plots, dashed lines in the histogram, dotted probing curves (:func:`legend_label`)."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from csae_bench.reporting.leaderboard import NCES_SEPARATION_METRIC, metric_ci, metric_value
from csae_bench.reporting.results import ResultFile, flat_metrics
from csae_bench.stats import mean_sd
from csae_bench.utils import atomic_path

_PROBE_METRIC = re.compile(r"^(?P<who>sae|llm)_top_(?P<k>\d+)_test_accuracy$")
CE_METRIC = ("core", "model_performance_preservation.ce_loss_score")


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out ``fig``, write it as a PNG atomically, close it (shared by every report's plots).
    Returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


def set_l0_axis(ax, values: list[float]) -> None:
    """A log x axis when ``values`` span a decade or more, else linear; tick labels are plain
    numbers either way (matplotlib's default log labels read ``3.2×10¹``)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if values and min(values) > 0 and max(values) / min(values) >= 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def legend_label(arch: str, controls: set[str]) -> str:
    """``arch``, with `` (control)`` appended when it is one of ``controls``."""
    return f"{arch} (control)" if arch in controls else arch


def control_archs(rows: list[dict[str, Any]]) -> set[str]:
    """The architectures of the rows marked ``control``."""
    return {r["architecture"] for r in rows if r.get("control")}


def _nces_metric(board: dict[str, Any]) -> str | None:
    """The headline NCES (:data:`~csae_bench.reporting.leaderboard.NCES_SEPARATION_METRIC`, the
    unweighted mean) when the board has it, else the first NCES headline metric; None without
    NCES."""
    directions = board["metric_directions"].get("nces", {})
    return NCES_SEPARATION_METRIC if NCES_SEPARATION_METRIC in directions else next(iter(directions), None)


def _scatter(
    rows, x_of, y_of, path: Path, xlabel: str, ylabel: str, title: str, ci_of=None
) -> Path | None:
    """One point per row (``x_of``, ``y_of``), one colour per architecture; ``ci_of(row)`` →
    ``(low, high)`` or None draws the y value's CI as an error bar."""
    import matplotlib.pyplot as plt

    points = defaultdict(list)
    for row in rows:
        x, y = x_of(row), y_of(row)
        if x is not None and y is not None:
            points[row["architecture"]].append((x, y, ci_of(row) if ci_of else None))
    if not points:
        return None
    controls = control_archs(rows)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, (arch, xy) in enumerate(sorted(points.items())):
        color = f"C{i % 10}"
        ax.scatter(
            [p[0] for p in xy],
            [p[1] for p in xy],
            label=legend_label(arch, controls),
            s=40,
            color=color,
            marker="x" if arch in controls else "o",  # a cross: a null, never a contender
        )
        for x, y, ci in xy:
            if ci is not None:
                ax.errorbar(x, y, yerr=[[y - ci[0]], [ci[1] - y]], fmt="none", ecolor=color,
                            capsize=3, alpha=0.7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    set_l0_axis(ax, [p[0] for xy in points.values() for p in xy])
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def _nces_values(f: ResultFile) -> list[float]:
    """The per-feature NCES values of an NCES result's details (NaN and non-numbers left out)."""
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


def _nces_histogram(rows, results: list[ResultFile], path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    arch_of = {(r["sae_release"], r["sae_id"]): r["architecture"] for r in rows}
    per_arch: dict[str, list[float]] = defaultdict(list)
    for f in results:
        if f.eval_type == "nces" and f.key in arch_of:
            per_arch[arch_of[f.key]] += _nces_values(f)
    if not per_arch:
        return None
    controls = control_archs(rows)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for arch, values in sorted(per_arch.items()):
        ax.hist(
            values,
            bins=30,
            range=(-1, 1),
            histtype="step",
            linewidth=1.8,
            linestyle="--" if arch in controls else "-",
            label=f"{legend_label(arch, controls)} (n={len(values)})",
        )
    ax.set_xlabel("per-feature NCES")
    ax.set_ylabel("features")
    ax.set_title("NCES distribution per architecture")
    ax.legend()
    return save_figure(fig, path)


def _probing_curves(rows, results: list[ResultFile], path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    arch_of = {(r["sae_release"], r["sae_id"]): r["architecture"] for r in rows}
    curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for f in results:
        if f.eval_type == "csae_probing" and f.key in arch_of:
            by_who = _probing_by_k(f.data["eval_result_metrics"])
            for k, acc in by_who.get("sae", {}).items():
                curves[arch_of[f.key]][k].append(acc)
            for k, acc in by_who.get("llm", {}).items():
                curves["residual stream (reference)"][k].append(acc)
    if not curves:
        return None
    controls = control_archs(rows)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for arch, by_k in sorted(curves.items()):
        ks = sorted(by_k)
        reference = arch.startswith("residual")
        ax.plot(
            ks,
            [mean_sd(by_k[k])[0] for k in ks],
            marker="o",
            label=legend_label(arch, controls),
            linestyle="--" if reference else (":" if arch in controls else "-"),
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
    return save_figure(fig, path)


def make_plots(
    board: dict[str, Any], results: list[ResultFile], plots_dir: str | Path
) -> list[Path]:
    """L0 vs CE-loss score, L0 vs NCES, NCES per architecture, probing accuracy vs k, as PNGs in
    ``plots_dir``; a plot whose data is absent is not drawn. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")

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
                f"NCES ({nces_metric.split('.')[-1]}; bars: 95% CI)",
                "Sparsity vs causal specificity",
                ci_of=lambda r: metric_ci(r, "nces", nces_metric),
            )
        )
    made.append(_nces_histogram(rows, results, plots_dir / "nces_distribution.png"))
    made.append(_probing_curves(rows, results, plots_dir / "probing_accuracy_vs_k.png"))
    return [p for p in made if p is not None]

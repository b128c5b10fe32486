"""The leaderboard as rich console tables: an 80-column table of the headline metrics per model
and hook (default), or one table of every headline metric (``--wide``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from csae_bench.reporting.leaderboard import NCES_SEPARATION_METRIC, metric_ci, metric_value

COMPACT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("core", "model_performance_preservation.ce_loss_score", "CE"),
    ("core", "reconstruction_quality.explained_variance_mean_centred", "EVmc"),
    ("nces", NCES_SEPARATION_METRIC, "NCES"),
    ("csae_probing", "probing.sae_top_1_test_accuracy", "probe1"),
)
"""The default console table's headline metrics: (eval type, metric, short header)."""

_LEGEND = {
    "CE": "core CE-loss score",
    "EVmc": "core explained variance, mean-centred",
    "NCES": "NCES, unweighted",
    "probe1": "top-1 probe accuracy",
}

_KEY = (
    "↑/↓ higher/lower is better; — none or null; ±: half-width of the 95% CI. "
    "flag: ctrl control (a null model), ~null NCES CI overlaps the controls', "
    "! non-finite value stored as null (leaderboard.json: flags)."
)
"""The legend of the marks both tables use."""


def row_label(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The SAE id; prefixed with its release when the rows come from several releases and two
    share an id."""
    same_id = [r for r in rows if r["sae_id"] == row["sae_id"]]
    if len({r["sae_release"] for r in same_id}) > 1 and row["sae_release"]:
        return f"{row['sae_release']}/{row['sae_id']}"
    return str(row["sae_id"])


def row_flags(row: dict[str, Any]) -> str:
    """Short flag codes: ``ctrl`` a control (the row's ``control``, from the architecture registry:
    random-decoder and the nulls), ``~null`` NCES not separated from
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
        console.print(_KEY)
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
        console.print("; ".join(legend) + "; " + _KEY + " --wide for all metrics.")
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
        cells += [_fmt_ci(metric_value(row, e, m), metric_ci(row, e, m)) for e, m, _ in columns]
        table.add_row(*cells, row_flags(row))
    return table


def _arrow(direction: str | None) -> str:
    return {"higher": "↑", "lower": "↓"}.get(direction or "", "")


def _short_eval(eval_type: str) -> str:
    return {"csae_probing": "probing"}.get(eval_type, eval_type)


def _fmt_ci(value: Any, ci: tuple[float, float] | None) -> str:
    """``value±h`` with ``h`` the CI's half-width when there is a CI (two decimals: the table's
    CIs are bootstrap CIs of order 0.01–0.1), else :func:`_fmt`."""
    if ci is None or not isinstance(value, float):
        return _fmt(value)
    return f"{value:.2f}±{(ci[1] - ci[0]) / 2:.2f}"


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if abs(value) < 100:
            return f"{value:.3g}"
        # plain integers up to 6 digits (an L0 of 1234 reads 1234, not 1.23e+03)
        return f"{value:.0f}" if abs(value) < 1e6 else f"{value:.2e}"
    return str(value)

"""The trainer's live display: a rich table of every SAE's latest loss terms, L0, dead fraction,
sparsity coefficient and speed, under the progress bar."""

from __future__ import annotations

from rich.table import Table

from csae_bench.training.state import SAERunState


def progress_table(runs: dict[str, SAERunState], step: int, n_steps: int) -> Table:
    """One row per SAE at ``step`` of ``n_steps`` (terms from ``run.last``)."""
    table = Table(title=f"step {step}/{n_steps}", show_lines=False)
    for col in ("SAE", "loss", "mse", "other terms", "L0", "dead %", "coef", "s/step"):
        table.add_column(col, justify="right" if col != "SAE" else "left")
    for arch, run in runs.items():
        last = run.last
        other = ", ".join(
            f"{k.replace('_loss', '')}={v:.3g}"
            for k, v in last.items()
            if k.endswith("_loss") and k != "mse_loss"
        )
        coef = run.coefficients()
        table.add_row(
            arch,
            f"{last.get('loss', float('nan')):.4g}",
            f"{last.get('mse_loss', float('nan')):.4g}",
            other,
            f"{last.get('l0', float('nan')):.1f}",
            f"{100 * last.get('dead_frac', 0):.1f}",
            ", ".join(f"{k}={v:.3g}" for k, v in coef.items()) or "-",
            f"{run.wall_s / max(1, step):.3f}",
        )
    return table

"""``python -m csae_bench.run`` (also ``csae-bench run``): train SAEs, evaluate them, build the
leaderboard.

    python -m csae_bench.run                          # everything, embedded Gemma-3-270M, CPU
    python -m csae_bench.run --suite evals/smoke.toml # a declarative suite
    python -m csae_bench.run --evals core --saes path/to/saes --out results_other
    python -m csae_bench.run --saes gemma-scope-2-270m-pt-res-all:layer_6_width_16k_l0_small
    python -m csae_bench.run leaderboard results/     # rebuild leaderboard + plots from any results folder

Work already finished in ``--out`` is skipped, so a killed run resumes when re-run. The flags and
the exit codes are :mod:`csae_bench.cli`'s; this module is what a run does (:func:`execute`).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from csae_bench.cli import (  # noqa: F401  (EXIT_*, guarded, config_from_args: importable from here too)
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    config_from_args,
    guarded,
)
from csae_bench.suite import RunConfig, SuiteError

logger = logging.getLogger("csae_bench")


def check_writable(out: Path) -> None:
    """Fail early, with what to do, when ``out`` cannot hold results."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as err:
        raise SuiteError(
            f"Cannot write to --out {out} ({err.strerror or err}). Choose a folder you can "
            "write to, e.g. --out ./results."
        ) from None


def execute(
    cfg: RunConfig, resources=None, plots: bool = True, console=None, wide: bool = False
) -> dict:
    """Run every job of ``cfg`` (resuming), then write the leaderboard and plots; returns the board
    (``leaderboard.json``'s content). ``cfg.threads``, when set, holds for the run and is restored
    after it.

    Raises:
        BadInputError: input that cannot work, found before or inside a job (``--out`` not
            writable, an SAE that does not fit the model, a bad corpus; the CLI exits 2).
        JobFailedError: a job failed on valid input (the CLI exits 1; finished work is kept).
    """
    if cfg.threads is None:
        return _execute(cfg, resources, plots, console, wide)
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _execute(cfg, resources, plots, console, wide)
    finally:
        torch.set_num_threads(previous)


def _execute(cfg: RunConfig, resources, plots: bool, console, wide: bool) -> dict:
    from rich.console import Console

    from csae_bench.executors import open_executor
    from csae_bench.pipeline import Resources, find_saes

    console = console or Console()
    out = Path(cfg.out)
    check_writable(out)
    res = resources or Resources(cfg)
    # issue 16: SAELens release ids are resolved, hub-checked and matched to the model here,
    # before anything loads (a problem exits 2 within seconds).
    releases = []
    if cfg.release_saes or cfg.extra_saes:
        from csae_bench.releases import prepare_releases

        specs = list(dict.fromkeys([*cfg.release_saes, *cfg.extra_saes]))
        releases = prepare_releases(specs, cfg.model)
    external = find_saes(Path(cfg.saes)) if cfg.saes else []
    # issue 15: jobs, the layer check and the leaderboard run where cfg.executor says (local/Ray)
    with open_executor(cfg) as executor:
        return _run_plan(cfg, executor, res, external, releases, out, plots, console, wide)


def _run_plan(
    cfg: RunConfig, executor, res, external, releases, out: Path, plots: bool, console, wide: bool
) -> dict:
    from csae_bench.hooks import block_hook_name
    from csae_bench.pipeline import plan
    from csae_bench.reporting.leaderboard import leaderboard_path
    from csae_bench.reporting.table import render_table

    hook_name = block_hook_name(cfg.layer)
    if cfg.trains:
        # Fail on a layer the model lacks before any work, but only load the model if work remains.
        jobs = plan(cfg, hook_name)
        if not all(j.done() for j in jobs) or cfg.force:
            hook_name = executor.hook_name(res, cfg.layer)
    jobs = plan(cfg, hook_name, external, releases)
    if external:
        from csae_bench.pipeline import claim_release, external_release

        if cfg.force or not all(j.done() for j in jobs):
            check_external_saes(external, res, cfg)
        # After the checks, so that a refused SAE leaves no claim behind.
        claim_release(out, external_release(cfg), Path(cfg.saes), force=cfg.force)
    if releases and (cfg.force or not all(j.done() for j in jobs)):
        check_release_saes(releases, res, cfg)
    started = time.perf_counter()

    def report(job, status: str, seconds: float) -> None:
        if status == "skipped":
            logger.info("[dim]skip[/] %s (already done)", job.describe(), extra={"markup": True})
        else:
            logger.info(
                "[green]done[/] %s in %.1f s", job.describe(), seconds, extra={"markup": True}
            )

    counts = executor.run(jobs, res, force=cfg.force, on_progress=report)
    board, made = executor.leaderboard(out, cfg.eval_type_ids, plots)
    render_table(board, console, wide=wide)
    logger.info(
        "%d jobs run, %d reused, %.1f s. Leaderboard: %s%s",
        counts["run"],
        counts["skipped"],
        time.perf_counter() - started,
        leaderboard_path(out),
        f"; plots: {', '.join(str(p) for p in made)}" if made else "",
    )
    return board


def check_external_saes(external, res, cfg: RunConfig) -> None:
    """Check every ``--saes`` SAE against the run's model (width, layer, hook kind per eval,
    model name, normalization) before any eval; the first misfit raises (exit 2)."""
    from csae_bench.architectures.loading import check_sae_folder_fits
    from csae_bench.pipeline import model_display_name

    run_model = model_display_name(cfg.model)
    for sid, folder, _hook in external:
        for warning in check_sae_folder_fits(sid, folder, res.model, run_model, cfg.eval_type_ids):
            logger.warning("%s", warning)


def check_release_saes(releases, res, cfg: RunConfig) -> None:
    """The same SAE-vs-model check as for ``--saes`` folders (width, layer, hook kind per eval),
    for SAELens release SAEs, from their configs alone (no weights downloaded). Their model-name
    match was checked, and warned about, before the model loaded."""
    from csae_bench.architectures.loading import check_sae_fits
    from csae_bench.releases import release_config

    for rel, eval_hook in releases:
        d_in = int(release_config(rel.spec)["d_in"])
        for warning in check_sae_fits(
            rel.spec, d_in, eval_hook, res.model, evals=cfg.eval_type_ids
        ):
            logger.warning("%s", warning)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m csae_bench.run [flags]`` == ``csae-bench run [flags]``, and
    ``python -m csae_bench.run leaderboard DIR`` == ``csae-bench leaderboard DIR``."""
    from csae_bench import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    argv = argv if argv[:1] == ["leaderboard"] else ["run", *argv]
    return cli.main(argv, run_prog="python -m csae_bench.run")


if __name__ == "__main__":
    sys.exit(main())

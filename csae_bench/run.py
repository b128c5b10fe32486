"""``python -m csae_bench.run`` (also ``csae-bench``): train SAEs, evaluate them, build the leaderboard.

    python -m csae_bench.run                          # everything, embedded Gemma-3-270M, CPU
    python -m csae_bench.run --suite evals/smoke.toml # a declarative suite
    python -m csae_bench.run --evals core --saes path/to/saes --out results_other
    python -m csae_bench.run --saes gemma-scope-2-270m-pt-res-all:layer_6_width_16k_l0_small
    python -m csae_bench.run leaderboard results/     # rebuild leaderboard + plots from any results folder

Work already finished in ``--out`` is skipped, so a killed run resumes when re-run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from csae_bench.suite import (
    DEFAULT_ARCHITECTURES,
    DEFAULT_EVALS,
    MODEL_DTYPES,
    RunConfig,
    SuiteError,
)

logger = logging.getLogger("csae_bench")

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


WIDE_HELP = (
    "print every headline metric, architecture, width and seed in the console table "
    "(default: an 80-column table of the main metrics; leaderboard.json always has everything)"
)


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m csae_bench.run",
        description="Train ReLU/TopK/JumpReLU/Causal SAEs alongside on one residual stream, evaluate "
        "them with SAEBench core, NCES and causal probing, and write SAEBench-format "
        "results, leaderboard.json, a table and plots. Resumes by default.",
        epilog="Settings come from the defaults (the CPU run on the embedded model), then --suite, "
        "then the flags given. To rebuild the leaderboard and plots of any results folder "
        "(including one written by SAEBench): python -m csae_bench.run leaderboard DIR.",
    )
    d = RunConfig()
    parser.add_argument(
        "--model",
        default=None,
        help=f"'embedded' (Gemma-3-270M, offline), 'gpt2', "
        f"'gemma-2-2b', any TransformerLens model name, or a local HF model folder "
        f"[default: {d.model}]",
    )
    parser.add_argument(
        "--layer",
        type=int,
        default=None,
        help=f"layer whose blocks.<layer>.hook_resid_post the SAEs read [default: {d.layer}]",
    )
    parser.add_argument(
        "--architectures",
        type=_names,
        default=None,
        help=f"comma-separated SAE architectures [default: {','.join(DEFAULT_ARCHITECTURES)}]",
    )
    parser.add_argument(
        "--evals",
        type=_names,
        default=None,
        help=f"comma-separated evals [default: {','.join(DEFAULT_EVALS)}]",
    )
    parser.add_argument(
        "--suite",
        default=None,
        metavar="evals/<name>.toml",
        help="declarative suite file setting any of these options ([run], [train], "
        "[evals.<name>] tables); flags given here override it",
    )
    parser.add_argument(
        "--train-tokens",
        type=int,
        default=None,
        help=f"activation tokens each SAE trains on [default: {d.train_tokens}]",
    )
    parser.add_argument("--d-sae", type=int, default=None, help=f"SAE width [default: {d.d_sae}]")
    parser.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=None,
        dest="seeds",
        metavar="SEED",
        help="one or more training seeds, e.g. --seed 0 1 2 [default: 0]",
    )
    parser.add_argument(
        "--corpus",
        default=None,
        help=f"text corpus: 'embedded', a local .txt/.jsonl file or folder, or a HF "
        f"dataset name [default: {d.corpus}]",
    )
    parser.add_argument("--device", default=None, help=f"torch device [default: {d.device}]")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=MODEL_DTYPES,
        help="model weights' dtype [default: float32 on the CPU, the model's own on a GPU]",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads for the run [default: one per core]",
    )
    parser.add_argument(
        "--out", default=None, metavar="DIR", help=f"results folder [default: {d.out}/]"
    )
    parser.add_argument(  # issue 16: also SAELens release ids, several, comma-separated or repeated
        "--saes",
        default=None,
        action="append",
        metavar="DIR|RELEASE:SAE_ID",
        help="evaluate these instead of training: the SAELens-format SAE folders under DIR and/or "
        "SAELens pretrained SAEs as release:sae_id (e.g. "
        "gemma-scope-2-270m-pt-res-all:layer_6_width_16k_l0_small); comma-separated or repeated",
    )
    parser.add_argument(
        "--extra-saes",
        default=None,
        action="append",
        metavar="RELEASE:SAE_ID",
        help="SAELens pretrained SAEs (release:sae_id) evaluated next to the SAEs this run trains",
    )
    parser.add_argument(
        "--force", action="store_true", default=None, help="redo finished work instead of resuming"
    )
    # issue 15: fan the jobs out over a Ray cluster (docs/scale.md)
    parser.add_argument(
        "--executor",
        default=None,
        choices=("local", "ray"),
        help="where jobs run: 'local' (this process) or 'ray' (one Ray task per job; "
        "pip install 'csae_bench[ray]') [default: local]",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="with --executor ray: 'auto' or HOST:PORT of a running cluster [default: start a "
        "local cluster]",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--wide", action="store_true", help=WIDE_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def build_leaderboard_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m csae_bench.run leaderboard",
        description="Rebuild leaderboard.json, the table and the plots from a results folder holding "
        "SAEBench *_eval_results.json files (ours or SAEBench's). Unknown eval types are "
        "kept with their raw metrics; corrupt files are reported and skipped.",
    )
    parser.add_argument(
        "results", nargs="?", default="results", help="results folder [default: results]"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--wide", action="store_true", help=WIDE_HELP)
    return parser


def _setup_logging(verbose: bool) -> None:
    """Rich log lines on the root logger (added once; other handlers, e.g. pytest's, are kept)."""
    from rich.logging import RichHandler

    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        root.addHandler(RichHandler(show_path=False, rich_tracebacks=False, log_time_format="[%X]"))
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in (
        "datasets",
        "urllib3",
        "httpx",
        "filelock",
        "huggingface_hub",
        "transformers",
        "matplotlib",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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


def config_from_args(args: argparse.Namespace) -> RunConfig:
    from csae_bench.releases import check_release_ids, release_specs_requested
    from csae_bench.suite import build_config, validate_names

    # issue 16: unknown or unreachable SAELens releases fail first, before any slow import.
    check_release_ids(release_specs_requested(args.suite, args.saes, args.extra_saes))
    cfg = build_config(
        args.suite,
        model=args.model,
        layer=args.layer,
        architectures=args.architectures,
        evals=args.evals,
        train_tokens=args.train_tokens,
        d_sae=args.d_sae,
        seeds=args.seeds,
        corpus=args.corpus,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        out=args.out,
        saes=args.saes,
        extra_saes=args.extra_saes,
        force=args.force,
        executor=args.executor,  # issue 15
        ray_address=args.ray_address,
    )
    validate_names(cfg)
    if cfg.trains:
        from csae_bench.pipeline import check_train_settings

        check_train_settings(cfg, f"blocks.{cfg.layer}.hook_resid_post")
    return cfg


def execute(
    cfg: RunConfig, resources=None, plots: bool = True, console=None, wide: bool = False
) -> dict:
    """Run every job of ``cfg`` (resuming), then write the leaderboard and plots; returns the board.
    ``cfg.threads``, when set, holds for the run and is restored after it."""
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
    from csae_bench.pipeline import plan
    from csae_bench.reporting.table import render_table

    hook_name = f"blocks.{cfg.layer}.hook_resid_post"
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
        out / "leaderboard.json",
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


def _leaderboard_main(argv: Sequence[str]) -> int:
    from rich.console import Console

    from csae_bench.reporting.leaderboard import write_leaderboard
    from csae_bench.reporting.table import render_table

    args = build_leaderboard_parser().parse_args(argv)
    _setup_logging(False)
    try:
        board, made = write_leaderboard(args.results, plots=not args.no_plots)
    except FileNotFoundError as err:
        logger.error("%s", err)
        return EXIT_USAGE
    render_table(board, Console(), wide=args.wide)
    logger.info(
        "Leaderboard: %s%s",
        Path(args.results) / "leaderboard.json",
        f"; plots: {', '.join(str(p) for p in made)}" if made else "",
    )
    return 0


def guarded(fn, *args, **kwargs) -> int:
    """Call ``fn`` and turn the ways a run ends into exit codes: 0 done, 2 bad input (the message
    says what to change), 1 a job failed (traceback kept), 130 interrupted (re-run resumes)."""
    from csae_bench.errors import BadInputError, CsaeBenchError

    try:
        fn(*args, **kwargs)
    except BadInputError as err:  # wherever found, before or inside a job: one line, no traceback
        logger.error("%s", err)
        return EXIT_USAGE
    except CsaeBenchError as err:
        logger.exception("%s", err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        logger.warning("Interrupted. Finished results are kept; re-run the same command to resume.")
        return EXIT_INTERRUPTED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv[:1] == ["leaderboard"]:
        return _leaderboard_main(argv[1:])
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    return guarded(lambda: execute(config_from_args(args), plots=not args.no_plots, wide=args.wide))


if __name__ == "__main__":
    sys.exit(main())

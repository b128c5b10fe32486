"""``python -m csae_bench.run`` (also ``csae-bench``): train SAEs, evaluate them, build the leaderboard.

    python -m csae_bench.run                          # everything, embedded Gemma-3-270M, CPU
    python -m csae_bench.run --suite evals/smoke.toml # a declarative suite
    python -m csae_bench.run --evals core --saes path/to/saes --out results_other
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
    parser.add_argument(
        "--saes",
        default=None,
        metavar="DIR",
        help="evaluate the SAELens-format SAE folders under DIR instead of training",
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
    from csae_bench.suite import build_config, validate_names

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
        force=args.force,
        executor=args.executor,  # issue 15
        ray_address=args.ray_address,
    )
    validate_names(cfg)
    if cfg.saes is None:
        from csae_bench.pipeline import check_train_settings

        check_train_settings(cfg, f"blocks.{cfg.layer}.hook_resid_post")
    return cfg


def execute(cfg: RunConfig, resources=None, plots: bool = True, console=None) -> dict:
    """Run every job of ``cfg`` (resuming), then write the leaderboard and plots; returns the board.
    ``cfg.threads``, when set, holds for the run and is restored after it."""
    if cfg.threads is None:
        return _execute(cfg, resources, plots, console)
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _execute(cfg, resources, plots, console)
    finally:
        torch.set_num_threads(previous)


def _execute(cfg: RunConfig, resources, plots: bool, console) -> dict:
    from rich.console import Console

    from csae_bench.executors import open_executor
    from csae_bench.pipeline import Resources, find_saes

    console = console or Console()
    out = Path(cfg.out)
    check_writable(out)
    res = resources or Resources(cfg)
    external = find_saes(Path(cfg.saes)) if cfg.saes else []
    # issue 15: jobs, the layer check and the leaderboard run where cfg.executor says (local/Ray)
    with open_executor(cfg) as executor:
        return _run_plan(cfg, executor, res, external, out, plots, console)


def _run_plan(cfg: RunConfig, executor, res, external, out: Path, plots: bool, console) -> dict:
    from csae_bench.leaderboard import render_table
    from csae_bench.pipeline import plan

    hook_name = f"blocks.{cfg.layer}.hook_resid_post"
    if not external:
        # Fail on a layer the model lacks before any work, but only load the model if work remains.
        jobs = plan(cfg, hook_name)
        if not all(j.done() for j in jobs) or cfg.force:
            hook_name = executor.hook_name(res, cfg.layer)
    jobs = plan(cfg, hook_name, external)
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
    render_table(board, console)
    logger.info(
        "%d jobs run, %d reused, %.1f s. Leaderboard: %s%s",
        counts["run"],
        counts["skipped"],
        time.perf_counter() - started,
        out / "leaderboard.json",
        f"; plots: {', '.join(str(p) for p in made)}" if made else "",
    )
    return board


def _leaderboard_main(argv: Sequence[str]) -> int:
    from rich.console import Console

    from csae_bench.leaderboard import render_table, write_leaderboard

    args = build_leaderboard_parser().parse_args(argv)
    _setup_logging(False)
    try:
        board, made = write_leaderboard(args.results, plots=not args.no_plots)
    except FileNotFoundError as err:
        logger.error("%s", err)
        return EXIT_USAGE
    render_table(board, Console())
    logger.info(
        "Leaderboard: %s%s",
        Path(args.results) / "leaderboard.json",
        f"; plots: {', '.join(str(p) for p in made)}" if made else "",
    )
    return 0


def guarded(fn, *args, **kwargs) -> int:
    """Call ``fn`` and turn the ways a run ends into exit codes: 0 done, 2 bad input (the message
    says what to change), 1 a job failed (traceback kept), 130 interrupted (re-run resumes)."""
    from csae_bench.data import DataError
    from csae_bench.models import ModelLoadError
    from csae_bench.pipeline import PipelineError
    from csae_bench.training.activations import ActivationError

    try:
        fn(*args, **kwargs)
    except (SuiteError, ModelLoadError, DataError, ActivationError) as err:
        logger.error("%s", err)
        return EXIT_USAGE
    except PipelineError as err:
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
    return guarded(lambda: execute(config_from_args(args), plots=not args.no_plots))


if __name__ == "__main__":
    sys.exit(main())

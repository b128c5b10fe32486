"""``csae-bench``: the one command line of csae_bench, four subcommands on one argparse parser.

    csae-bench run [flags]              # train, evaluate, leaderboard (also: csae-bench [flags])
    csae-bench leaderboard DIR          # rebuild leaderboard.json, table and plots of any results
    csae-bench study NAME [args]        # a study: ablation | csae_sweep | validity (own --help)
    csae-bench regression check|record  # the CI smoke regression check

``python -m csae_bench.run [flags]`` and ``python -m csae_bench.run leaderboard DIR`` are the same
commands; ``python -m csae_bench.regression`` too. The run flags are derived from
:class:`~csae_bench.suite.RunConfig`: each sets the field named in :data:`RUN_FLAGS`, its help is
the field's docstring and its default the field's default.

Exit codes: 0 done, 2 bad input (one line saying what to change), 1 a job failed (traceback
kept), 130 interrupted (re-running resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from csae_bench.allocator import keep_freed_memory
from csae_bench.executors import EXECUTORS
from csae_bench.suite import ENGINE_DTYPES, MODEL_DTYPES, RunConfig, field_help

logger = logging.getLogger("csae_bench")

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

COMMANDS = ("run", "leaderboard", "study", "regression")

WIDE_HELP = (
    "print every headline metric, architecture, width and seed in the console table "
    "(default: an 80-column table of the main metrics; leaderboard.json always has everything)"
)


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


RUN_FLAGS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("--model", "model", {}),
    ("--layer", "layer", {"type": int}),
    ("--architectures", "architectures", {"type": _names}),
    ("--evals", "evals", {"type": _names}),
    ("--train-tokens", "train_tokens", {"type": int}),
    ("--harvest-tokens", "harvest_tokens", {"type": int}),
    ("--d-sae", "d_sae", {"type": int}),
    (
        "--seed",
        "seeds",
        {"type": int, "nargs": "+", "metavar": "SEED", "help": "e.g. --seed 0 1 2"},
    ),
    ("--corpus", "corpus", {}),
    ("--device", "device", {}),
    ("--dtype", "dtype", {"choices": MODEL_DTYPES}),
    (  # a metavar keeps the usage line within 80 columns
        "--engine-dtype",
        "engine_dtype",
        {
            "choices": ENGINE_DTYPES,
            "metavar": "DTYPE",
            "help": "one of " + ", ".join(ENGINE_DTYPES),
        },
    ),
    ("--threads", "threads", {"type": int, "metavar": "N"}),
    ("--out", "out", {"metavar": "DIR"}),
    (
        "--saes",
        "saes",
        {"action": "append", "metavar": "DIR|RELEASE:SAE_ID", "help": "repeatable"},
    ),
    ("--extra-saes", "extra_saes", {"action": "append", "metavar": "RELEASE:SAE_ID"}),
    ("--force", "force", {"action": "store_true"}),
    ("--executor", "executor", {"choices": EXECUTORS}),
    ("--ray-address", "ray_address", {"metavar": "ADDR"}),
)
"""``(flag, RunConfig field, argparse options)`` of every run flag; a flag not given is ``None``
and leaves the suite's (or the default) value. An option's ``help`` is added to the field's."""

_DEFAULT_TEXT = {
    "threads": "one per core",
    "ray_address": "$RAY_ADDRESS, else start a local cluster",
}


def _run_flag_help(name: str, extra: str | None) -> str:
    default = {f.name: f for f in dataclasses.fields(RunConfig)}[name]
    value = (
        default.default_factory()
        if default.default_factory is not dataclasses.MISSING
        else default.default
    )
    if isinstance(value, list):
        value = ",".join(map(str, value))
    shown = _DEFAULT_TEXT.get(name, value)
    text = field_help(name) + (f"; {extra}" if extra else "")
    return text if shown in (None, "", False) else f"{text} [default: {shown}]"


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors as one line on stderr (exit 2), not a usage block."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: {message}{self._hint(message)} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)

    def _hint(self, message: str) -> str:
        """``; did you mean --seed?`` for an unrecognized flag close to one of this parser's."""
        import difflib
        import re

        if not message.startswith("unrecognized arguments"):
            return ""
        flags = _long_flags(self)
        for given in re.findall(r"(?<!\S)(--[\w-]+)", message):
            given = given.split("=")[0]
            if given in flags:  # a flag of another subcommand: no guess helps
                continue
            close = difflib.get_close_matches(given, flags, n=1, cutoff=0.75)
            if close:
                return f"; did you mean {close[0]}?"
        return ""


def _long_flags(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--flag`` of ``parser`` and of its subcommands (argparse reports a subcommand's
    unknown flags from the top parser)."""
    out = []
    for action in parser._actions:
        out += [f for f in action.option_strings if f.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            out += [f for sub in action.choices.values() for f in _long_flags(sub)]
    return out


def _report_options() -> argparse.ArgumentParser:
    """``--no-plots`` and ``--wide``: shared by ``run`` and ``leaderboard`` (a parent parser)."""
    parser = OneLineParser(add_help=False)
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--wide", action="store_true", help=WIDE_HELP)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``csae-bench run``: :data:`RUN_FLAGS`, ``--suite`` and ``--verbose``."""
    for flag, name, options in RUN_FLAGS:
        options = dict(options)
        extra = options.pop("help", None)
        parser.add_argument(
            flag, dest=name, default=None, help=_run_flag_help(name, extra), **options
        )
    parser.add_argument(
        "--suite",
        default=None,
        metavar="evals/<name>.toml",
        help="declarative suite file setting any of these options ([run], [train], "
        "[evals.<name>] tables); flags given here override it",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser(run_prog: str | None = None) -> argparse.ArgumentParser:
    """The ``csae-bench`` parser. ``run_prog``: the program name the ``run`` and ``leaderboard``
    subcommands show (``python -m csae_bench.run`` for that entry point)."""
    from csae_bench import regression

    parser = OneLineParser(
        prog="csae-bench",
        description="Causal SAEs and causal-effect evals (NCES, causal probing) on SAEBench. "
        "Without a subcommand, the flags are those of 'run'.",
    )
    report = _report_options()
    sub = parser.add_subparsers(metavar="{run,leaderboard,study,regression}")
    run = sub.add_parser(
        "run",
        parents=[report],
        prog=run_prog or "csae-bench run",
        help="train SAEs, evaluate them, build the leaderboard (resumes)",
        description="Train ReLU/TopK/JumpReLU/Causal SAEs alongside on one residual stream, "
        "evaluate them with SAEBench core, NCES and causal probing, and write SAEBench-format "
        "results, leaderboard.json, a table and plots. Resumes by default.",
        epilog="Settings come from the defaults (the CPU run on the embedded model), then --suite, "
        "then the flags given. To rebuild the leaderboard and plots of any results folder "
        f"(including one written by SAEBench): {run_prog or 'csae-bench'} leaderboard DIR.",
    )
    add_run_arguments(run)
    run.set_defaults(handler=_run)
    board = sub.add_parser(
        "leaderboard",
        parents=[report],
        prog=f"{run_prog or 'csae-bench'} leaderboard",
        help="rebuild leaderboard.json, the table and the plots of a results folder",
        description="Rebuild leaderboard.json, the table and the plots from a results folder "
        "holding SAEBench *_eval_results.json files (ours or SAEBench's). Unknown eval types are "
        "kept with their raw metrics; corrupt files are reported and skipped.",
    )
    board.add_argument(
        "results", nargs="?", default="results", help="results folder [default: results]"
    )
    board.set_defaults(handler=_leaderboard)
    from csae_bench import studies

    listing = "\n".join(
        textwrap.fill(line, 80, initial_indent=f"  {name:<12} ", subsequent_indent=" " * 15)
        for name, line in studies.summaries().items()
    )
    study = sub.add_parser(
        "study",
        help="run a study (csae-bench study NAME --help for its options)",
        description="Run one of csae_bench's studies; the arguments after NAME are its own.",
        epilog=f"studies:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    study.add_argument("name", metavar="NAME", choices=studies.names(), help="the study to run")
    study.add_argument("args", nargs=argparse.REMAINDER, help="the study's own arguments")
    study.set_defaults(handler=_study)
    reg = sub.add_parser(
        "regression", help="the CI regression check", description=regression.DESCRIPTION
    )
    regression.add_arguments(reg)  # its own check|record subcommands
    reg.set_defaults(handler=_regression)
    return parser


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is when a record comes (pytest swaps it)."""

    @property
    def stream(self):  # type: ignore[override]
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


class _PlainFormatter(logging.Formatter):
    """One plain line per record; the rich markup of a record logged with ``extra={"markup":
    True}`` is read off its format string (never its arguments) and shown as its text."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "markup", False) and isinstance(record.msg, str):
            from rich.text import Text

            record = logging.makeLogRecord(
                {**record.__dict__, "msg": Text.from_markup(record.msg).plain}
            )
        return super().format(record)


def setup_logging(verbose: bool) -> None:
    """Log lines on stderr, as Python's logging puts them (stdout keeps the leaderboard table):
    rich on a terminal; one plain line per record into a file or pipe, so that a message (an exit-2
    error above all) is not wrapped at 80 columns there. Added once to the root logger; other
    handlers (e.g. pytest's) are kept."""
    import sys

    root = logging.getLogger()
    if not any(getattr(h, "csae_bench", False) for h in root.handlers):
        handler: logging.Handler
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.logging import RichHandler

            handler = RichHandler(
                console=Console(stderr=True),
                show_path=False,
                rich_tracebacks=False,
                log_time_format="[%X]",
            )
        else:
            handler = _StderrHandler()
            handler.setFormatter(_PlainFormatter("[%(asctime)s] %(levelname)-7s %(message)s", "%X"))
        handler.csae_bench = True  # type: ignore[attr-defined]
        root.addHandler(handler)
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


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The :class:`RunConfig` of parsed ``run`` arguments, checked before any work: SAELens
    release ids first (before any slow import), then names and eval overrides, then the
    training settings.

    Raises:
        SuiteError: any invalid setting (exit 2).
    """
    from csae_bench.releases import check_release_ids, release_specs_requested
    from csae_bench.suite import build_config
    from csae_bench.suite_checks import check_device, check_layer, validate_names

    # issue 16: unknown or unreachable SAELens releases fail first, before any slow import.
    check_release_ids(release_specs_requested(args.suite, args.saes, args.extra_saes))
    cfg = build_config(args.suite, **{name: getattr(args, name) for _, name, _ in RUN_FLAGS})
    validate_names(cfg)
    # a suite may name a GPU (gpt2-small, gemma-2-2b); a run on this machine needs it here
    check_device(cfg.device, on_this_machine=cfg.executor != "ray")
    if cfg.trains:
        from csae_bench.hooks import block_hook_name
        from csae_bench.pipeline import check_train_settings

        check_layer(cfg)
        check_train_settings(cfg, block_hook_name(cfg.layer))
    return cfg


def _run(args: argparse.Namespace) -> int:
    from csae_bench.run import execute

    setup_logging(args.verbose)
    return guarded(lambda: execute(config_from_args(args), plots=not args.no_plots, wide=args.wide))


def _leaderboard(args: argparse.Namespace) -> int:
    from rich.console import Console

    from csae_bench.reporting.leaderboard import leaderboard_path, write_leaderboard
    from csae_bench.reporting.table import render_table

    setup_logging(False)
    from pathlib import Path

    from csae_bench.reporting.results import RESULT_GLOB

    results = Path(args.results)
    if results.is_dir() and not any(results.rglob(RESULT_GLOB)):
        logger.error(
            "%s holds no SAEBench results (%s); pass the --out folder of a run.",
            results,
            RESULT_GLOB,
        )
        return EXIT_USAGE
    try:
        board, made = write_leaderboard(args.results, plots=not args.no_plots)
    except FileNotFoundError as err:
        logger.error("%s", err)
        return EXIT_USAGE
    render_table(board, Console(), wide=args.wide)
    logger.info(
        "Leaderboard: %s%s",
        leaderboard_path(args.results),
        f"; plots: {', '.join(str(p) for p in made)}" if made else "",
    )
    return 0


def _study(args: argparse.Namespace) -> int:
    import importlib

    return int(importlib.import_module(f"csae_bench.studies.{args.name}").main(args.args) or 0)


def _regression(args: argparse.Namespace) -> int:
    from csae_bench import regression

    return regression.run_command(args)


def main(argv: Sequence[str] | None = None, run_prog: str | None = None) -> int:
    """``csae-bench [COMMAND] ...``; without a known command (or with none) the arguments are those
    of ``run``. Returns the exit code (module docstring); ``--help`` and a usage error exit
    through ``SystemExit`` (0 and 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    keep_freed_memory()  # large tensors are not faulted in anew on every allocation
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]  # csae-bench [run flags] == csae-bench run [run flags]
    args = build_parser(run_prog).parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())

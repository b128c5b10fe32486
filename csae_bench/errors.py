"""The one error base of csae_bench and the two kinds a run can end with.

Every exception the project raises on purpose derives from :class:`CsaeBenchError` through one of:

* :class:`BadInputError` — the user's input (a flag, suite key, SAE folder, corpus, results
  folder) cannot work; the message says what to change. The CLI exits 2 with that one line, no
  traceback, wherever it is detected (before any work or inside a job).
* :class:`JobFailedError` — the input was fine but a job failed (diverged training, a crash in an
  eval); the CLI exits 1 with the traceback, and re-running resumes from the finished work.

The concrete classes keep their historical ``ValueError`` / ``RuntimeError`` bases too, so
callers that caught those keep working.
"""

from __future__ import annotations


class CsaeBenchError(Exception):
    """Base of every error csae_bench raises on purpose."""


class BadInputError(CsaeBenchError):
    """Input that cannot work; the message names it and what to do (CLI exit code 2)."""


class JobFailedError(CsaeBenchError):
    """A job failed on valid input (CLI exit code 1; finished work is kept)."""


class DataError(BadInputError, RuntimeError):
    """Data could not be loaded or is unusable; the message says what to do."""


class SaeMismatchError(BadInputError, ValueError):
    """An SAE cannot be evaluated as given (wrong model, width, hook, normalization, duplicate
    id); the message names the SAE."""


def one_line(err: Exception) -> str:
    """``err`` as one line: a pydantic ``ValidationError`` as ``field: message; ...`` (its own
    text spans several lines and links to pydantic's docs), anything else its first line."""
    errors = getattr(err, "errors", None)
    if callable(errors) and type(err).__name__ == "ValidationError":
        parts = []
        for e in errors():
            loc = ".".join(str(x) for x in e.get("loc", ()))
            msg = str(e.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        return "; ".join(parts)
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


__all__ = [
    "BadInputError",
    "CsaeBenchError",
    "DataError",
    "JobFailedError",
    "SaeMismatchError",
    "one_line",
]

"""Studies built on the pipeline: each lists pipeline jobs and writes a report
(:mod:`csae_bench.studies.harness`).

* :mod:`~csae_bench.studies.ablation` — intervention types and the CSAE's causal parts (issue 7);
* :mod:`~csae_bench.studies.csae_sweep` — the CSAE's causal term against TopK on spliced-in KL
  (issue 3);
* :mod:`~csae_bench.studies.validity` — do NCES and causal probing tell trained SAEs from nulls
  (issue 14).

Adding a study is adding one module (or package) here that defines ``STUDY`` (a
:class:`~csae_bench.studies.harness.Study`) and ``main(argv)``; :func:`names` finds it and
:func:`main` dispatches ``<name> [args]`` to it (``csae-bench study <name> ...``).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Sequence
from pathlib import Path

from csae_bench.suite import SuiteError


def names() -> list[str]:
    """Every study in this package (its submodules but the harness)."""
    return sorted(
        m.name
        for m in pkgutil.iter_modules(__path__)
        if not m.name.startswith("_") and m.name != "harness"
    )


def summaries() -> dict[str, str]:
    """``{name: the first line of its module docstring}`` for every study, read from the source
    (importing a study imports the pipeline: seconds, too slow for ``--help``)."""
    here = Path(__file__).parent
    out = {}
    for name in names():
        path = here / f"{name}.py"
        path = path if path.exists() else here / name / "__init__.py"
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        out[name] = doc.splitlines()[0] if doc else ""
    return out


def main(name: str, argv: Sequence[str] | None = None) -> int:
    """Run study ``name``'s command line with ``argv``.

    Raises:
        SuiteError: no study of that name (the message lists the studies).
    """
    if name not in names():
        raise SuiteError(f"Unknown study {name!r}; studies: {', '.join(names())}.")
    return importlib.import_module(f"csae_bench.studies.{name}").main(argv)

"""Eval types. Importing this package registers the built-in evals (core, nces, csae_probing)."""

from csae_bench.evals import core, nces, probing  # noqa: F401

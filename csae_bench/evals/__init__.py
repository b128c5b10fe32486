"""Eval types. Importing this package registers the built-in evals (core, nces, csae_probing)."""

"""csae_bench: Causal SAEs and causal-effect evals (NCES, causal probing) for SAEBench."""

__version__ = "0.1.0"

"""SAEBench's core eval, driven offline with the model object and the project's tokens, plus a
mean-centred explained variance next to SAEBench's (labelled). Registered as eval type ``core``."""

from csae_bench.evals.core.main import CORE_SPEC, run_core_eval
from csae_bench.evals.core.output import CsaeCoreEvalOutput

__all__ = ["CORE_SPEC", "CsaeCoreEvalOutput", "run_core_eval"]

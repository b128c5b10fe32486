"""SAELens pretrained releases as ``--saes release:sae_id`` (e.g. Gemma Scope 2 on Gemma-3-270M).

What happens, in order, before any model is loaded (:func:`prepare_releases`):

1. **Resolve** each ``release:sae_id`` against SAELens's pretrained directory, the
   ``sae_lens/pretrained_saes.yaml`` that ``sae_lens.loading.pretrained_saes_directory.
   get_pretrained_saes_directory`` reads. We read that file directly (≈1 s) instead of importing
   ``sae_lens`` (≈6 s), so an unknown release or id fails at once, naming close matches.
2. **Hub check**: with ``HF_HUB_OFFLINE=1`` or huggingface.co unreachable, a release fails unless
   SAELens can load it from the local Hugging Face cache (only SAELens-format releases can: e.g.
   the ``gemma_3`` loader reads tensor shapes with HTTP range requests even when cached).
3. **Model match**: the release's model (yaml ``model``) against the run's model. Another family
   is an error; the same family at another size, or the embedded model (Gemma-3-270M dequantized
   from a Q4_K_M GGUF, not the bf16 weights Gemma Scope 2 was trained on), is a warning.
4. **Config** through SAELens's own ``load_sae_config_from_huggingface`` (no weights): the hook,
   the architecture (must be one SAEBench's ``BaseSAE`` classes express) and the normalization.

Loading (:func:`load_release_sae`) is ``SAE.from_pretrained`` (SAELens picks the converter, casts
bf16 weights to float32, folds a known activation-norm scaling factor), then
``csae_bench.architectures.export.to_base_sae`` (JumpReLU thresholds scaled with the decoder
norms), with a ``blocks.L.hook_resid_pre`` hook renamed to the identical
``blocks.{L-1}.hook_resid_post`` (:func:`equivalent_resid_post`) so every eval accepts it.

Generic SAE-vs-model checks (width vs ``d_model``, layer exists, hook kind per eval) are not here:
they apply to every SAE, folder or release, and live with the pipeline's up-front check.

The modules follow those steps: ``directory`` (parsing ``--saes``, step 1, where a leaderboard
row's SAE came from), ``checks`` (steps 2-4 and :func:`prepare_releases`), ``load``
(:func:`load_release_sae`). The public names are re-exported here; none of them imports torch
or SAELens at import time.
"""

from csae_bench.releases.checks import (
    check_available,
    check_release_config,
    check_release_ids,
    check_release_model,
    equivalent_resid_post,
    hub_offline_reason,
    model_family,
    prepare_releases,
    release_config,
    release_specs_requested,
)
from csae_bench.releases.directory import (
    SEP,
    ReleaseError,
    ReleaseSAE,
    is_release_spec,
    pretrained_directory,
    resolve_release,
    sae_source,
    split_sae_entries,
)
from csae_bench.releases.load import load_release_sae

__all__ = [
    "SEP",
    "ReleaseError",
    "ReleaseSAE",
    "check_available",
    "check_release_config",
    "check_release_ids",
    "check_release_model",
    "equivalent_resid_post",
    "hub_offline_reason",
    "is_release_spec",
    "load_release_sae",
    "model_family",
    "pretrained_directory",
    "prepare_releases",
    "release_config",
    "release_specs_requested",
    "resolve_release",
    "sae_source",
    "split_sae_entries",
]

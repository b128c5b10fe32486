"""Loading a SAELens release as a SAEBench ``BaseSAE``."""

from __future__ import annotations

from csae_bench.releases.checks import equivalent_resid_post
from csae_bench.releases.directory import SEP, ReleaseError


def load_release_sae(spec: str, device: str = "cpu"):
    """``release:sae_id`` as a SAEBench ``BaseSAE`` on ``device`` (float32; ``W_enc``
    [d_in, d_sae], ``W_dec`` [d_sae, d_in] with unit-norm rows, activations in model units).

    ``SAE.from_pretrained(release, sae_id)`` (``sae_lens/saes/sae.py``; converters in
    ``sae_lens/loading/pretrained_sae_loaders.py``) loads it as SAELens does (bf16 ->
    float32, norm-factor folding); ``to_base_sae`` adapts it (SAEBench's ``JumpReluSAE`` /
    ``TopKSAE`` / ``ReluSAE``, decoder rows unit-norm, JumpReLU threshold scaled alike). The
    ``hook_name`` is :func:`equivalent_resid_post` of the SAE's. Raises :class:`ReleaseError`
    for an SAE that cannot be adapted."""
    from sae_lens import SAE

    from csae_bench.architectures.export import ExportError, to_base_sae

    release, _, sae_id = spec.partition(SEP)
    sae = SAE.from_pretrained(release, sae_id, device="cpu", dtype="float32")
    try:
        return to_base_sae(
            sae, hook_name=equivalent_resid_post(sae.cfg.metadata.hook_name), device=device
        )
    except ExportError as err:
        raise ReleaseError(f"--saes {spec}: {err}") from None

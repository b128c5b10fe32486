"""Export SAELens SAEs to SAEBench's ``BaseSAE`` (unit-norm decoder rows, filled cfg).

The SAEBench class is SAEBench's own for each encoder: ``ReluSAE`` (relu), ``TopKSAE`` (topk, csae,
random-decoder and the nulls), ``JumpReluSAE`` (jumprelu). ``cfg.architecture`` is the csae_bench
name, read from the folder's ``csae_bench_architecture`` metadata for the nulls (saved as SAELens
``topk`` SAEs). Conversion folds the decoder row norms into the encoder
(``W_enc``, ``b_enc`` and the JumpReLU threshold scale by the norm, ``W_dec`` rows divide by it) and
moves the input-centring ``b_dec`` into ``b_enc`` where the SAEBench class centres differently, so
``BaseSAE.forward`` equals the SAELens SAE's forward (exactly up to float rounding) and
``check_decoder_norms()`` holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sae_bench.custom_saes.base_sae import BaseSAE
from sae_bench.custom_saes.jumprelu_sae import JumpReluSAE
from sae_bench.custom_saes.relu_sae import ReluSAE
from sae_bench.custom_saes.topk_sae import TopKSAE as SAEBenchTopKSAE

import csae_bench.architectures.saelens  # noqa: F401  (registers csae / random-decoder with SAELens)
from csae_bench.architectures import FROM_SAELENS, TOPK_FAMILY, architecture_of
from csae_bench.errors import BadInputError
from csae_bench.hooks import layer_of_hook


class ExportError(BadInputError, ValueError):
    """An SAE cannot be converted to a SAEBench ``BaseSAE``; the message says why."""


@torch.no_grad()
def to_base_sae(
    sae: Any,
    model_name: str | None = None,
    hook_name: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> BaseSAE:
    """Convert a SAELens SAE (inference or training class) of any csae_bench architecture into the
    matching SAEBench ``BaseSAE``. ``model_name`` / ``hook_name`` default to the SAE's metadata."""
    saelens_arch = sae.cfg.architecture()
    if saelens_arch not in FROM_SAELENS:
        raise ExportError(
            f"SAELens architecture {saelens_arch!r} is not one csae_bench exports "
            f"({', '.join(sorted(FROM_SAELENS))})."
        )
    meta = sae.cfg.metadata
    arch = architecture_of(saelens_arch, meta) or FROM_SAELENS[saelens_arch]
    model_name = model_name or meta.model_name
    hook_name = hook_name or meta.hook_name
    if not model_name or not hook_name:
        raise ExportError(
            "The SAE's metadata has no model_name/hook_name; pass them to to_base_sae."
        )
    if sae.cfg.normalize_activations != "none":
        raise ExportError(
            f"normalize_activations={sae.cfg.normalize_activations!r}: fold the "
            "normalization into the weights first (SAE.fold_activation_norm_scaling_factor)."
        )
    layer = layer_of_hook(hook_name, error=ExportError)
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    device = torch.device(device)

    W_enc_DF = sae.W_enc.detach().float().cpu()
    W_dec_FD = sae.W_dec.detach().float().cpu()
    b_enc_F = sae.b_enc.detach().float().cpu()
    b_dec_D = sae.b_dec.detach().float().cpu()
    norms_F = W_dec_FD.norm(dim=-1).clamp_min(1e-8)

    common: dict[str, Any] = dict(
        d_in=d_in,
        d_sae=d_sae,
        model_name=model_name,
        hook_layer=layer,
        device=device,
        dtype=dtype,
        hook_name=hook_name,
    )
    # SAEBench's ReluSAE and TopKSAE centre the input on b_dec; its JumpReluSAE does not.
    saebench_centres = arch != "jumprelu"
    if sae.cfg.apply_b_dec_to_input and not saebench_centres:
        b_enc_F = b_enc_F - b_dec_D @ W_enc_DF
    elif not sae.cfg.apply_b_dec_to_input and saebench_centres:
        b_enc_F = b_enc_F + b_dec_D @ W_enc_DF

    if arch in TOPK_FAMILY:
        # Folding equal norms scales every pre-activation alike: the top k are unchanged.
        equal = torch.allclose(norms_F, norms_F.mean().expand_as(norms_F), rtol=1e-5, atol=0)
        if not sae.cfg.rescale_acts_by_decoder_norm and not equal:
            raise ExportError(
                f"This {arch} SAE selects its top k on raw pre-activations but its "
                "decoder rows have unequal norms: folding them would change which "
                "features win. Train with rescale_acts_by_decoder_norm=True."
            )
        out: BaseSAE = SAEBenchTopKSAE(k=int(sae.cfg.k), **common)
        act = "topk"
    elif arch == "jumprelu":
        out = JumpReluSAE(**common)
        out.threshold.data = (sae.threshold.detach().float().cpu() * norms_F).to(device, dtype)
        act = "jumprelu"
    else:
        out = ReluSAE(**common)
        act = "relu"

    # Fold decoder norms into the encoder. For TopK SAEs trained with rescale_acts_by_decoder_norm
    # this reproduces SAELens's own feature activations; otherwise it rescales them by the norm.
    out.W_enc.data = (W_enc_DF * norms_F).to(device, dtype)
    out.b_enc.data = (b_enc_F * norms_F).to(device, dtype)
    out.W_dec.data = (W_dec_FD / norms_F[:, None]).to(device, dtype)
    out.b_dec.data = b_dec_D.to(device, dtype)

    cfg = out.cfg
    cfg.architecture = arch
    cfg.activation_fn_str = act
    cfg.apply_b_dec_to_input = saebench_centres
    cfg.dtype = str(dtype).split(".")[1]
    cfg.device = str(device)
    cfg.context_size = meta.context_size
    if meta.prepend_bos is not None:
        cfg.prepend_bos = bool(meta.prepend_bos)
    if meta.training_tokens is not None:
        cfg.training_tokens = int(meta.training_tokens)
    return out


def load_base_sae(
    folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> BaseSAE:
    """Load a SAELens-format SAE folder written by csae_bench and convert it to a SAEBench
    ``BaseSAE`` (``cfg.architecture``, ``model_name``, ``hook_name``, ``hook_layer`` filled)."""
    from sae_lens import SAE

    folder = Path(folder)
    if not (folder / "cfg.json").exists():
        raise ExportError(
            f"{folder} is not a saved SAE (no cfg.json); pass a folder written by "
            "train_alongside or SAE.save_model."
        )
    sae = SAE.load_from_disk(folder, device="cpu")
    return to_base_sae(sae, device=device, dtype=dtype)

"""Feature re-initialisation: the one place that points SAE features at new directions.

Used by dead-feature resampling (:mod:`csae_bench.training.dead_features`) and by the CSAE's
verification loop (:meth:`csae_bench.architectures.csae.CSAETrainingSAE.verify_and_reinit`). It
lives with the architectures, not the trainer, so the CSAE needs nothing from ``training``.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def reinit_features(
    sae: torch.nn.Module,
    idx_N: Tensor,
    dirs_ND: Tensor,
    *,
    alive_F: Tensor | None = None,
    enc_scale: float = 1.0,
) -> None:
    """Point features ``idx_N`` ``[N]`` of ``sae`` at directions ``dirs_ND`` ``[N, d_in]``.

    The directions are normalized to unit length; the decoder row becomes the direction times the
    mean decoder-row norm, the encoder column the direction times ``enc_scale`` × the mean
    encoder-column norm, the encoder bias 0. The means are over the features in ``alive_F``
    (a ``[d_sae]`` bool mask; ``None`` = every feature; 1.0 when none is alive). Thresholds and
    optimizer state are the caller's (they depend on the architecture and the trainer).
    ``sae`` needs ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]`` and ``b_enc [d_sae]``."""
    dirs_ND = dirs_ND / dirs_ND.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    if alive_F is None:
        dec_norm = sae.W_dec.norm(dim=-1).mean()
        enc_norm = sae.W_enc.norm(dim=0).mean()
    elif alive_F.any():
        dec_norm = sae.W_dec.norm(dim=-1)[alive_F].mean()
        enc_norm = sae.W_enc.norm(dim=0)[alive_F].mean()
    else:
        dec_norm = enc_norm = torch.tensor(1.0)
    sae.W_dec.data[idx_N] = dirs_ND * dec_norm
    enc_ND = dirs_ND * enc_norm if enc_scale == 1.0 else dirs_ND * enc_norm * enc_scale
    sae.W_enc.data[:, idx_N] = enc_ND.T
    sae.b_enc.data[idx_N] = 0.0

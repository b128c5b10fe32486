"""Control edits for NCES: edits of the same size as a feature's edit, in a direction that is
not the feature's.

* ``feature`` (the NCES default) — the decoder row of a random *other* alive feature of the same
  SAE, one not active at that token, with the same coefficient ``f'_i − f_i``. On Gemma-3-270M the model is ~15× more
  sensitive to isotropic directions than to in-distribution ones (docs/nces.md), so against the
  isotropic control every on-manifold direction looks "anti-causal"; the other-feature control asks
  whether the active feature's direction matters more *here* than dictionary directions that are
  not active here. For a dictionary of random directions both controls give NCES ≈ 0.
* ``isotropic`` — a seeded random unit vector of the same norm (DESIGN §5's random-direction
  control).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


def random_direction_control(delta_MD: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Same norm as each row of ``delta_MD``, direction a random unit vector (one per row, from
    ``generator``)."""
    u = torch.randn(delta_MD.shape, generator=generator, dtype=torch.float32).to(delta_MD)
    u = u / u.norm(dim=-1, keepdim=True)
    return u * delta_MD.norm(dim=-1, keepdim=True)


@torch.no_grad()
def other_feature_control(
    sae,
    delta_MD: Tensor,
    feature_M: Tensor,
    feature_acts_MF: Tensor,
    generator: torch.Generator | None = None,
    alive_F: Tensor | None = None,
) -> Tensor:
    """``(f'_i − f_i) d_j`` for a uniformly drawn feature ``j ≠ i`` that is inactive at the token
    (``feature_acts_MF`` are the SAE's activations at each intervened token) and, when ``alive_F``
    is given, alive on the eval tokens (dead features' directions may be untrained)."""
    W_dec = sae.W_dec.detach()
    d_i = W_dec[feature_M.to(W_dec.device)].to(delta_MD)
    coeff_M = (delta_MD * d_i).sum(-1) / (d_i * d_i).sum(-1)  # delta = coeff · d_i exactly
    inactive = feature_acts_MF.to(delta_MD.device) <= 0
    inactive[torch.arange(len(feature_M)), feature_M] = False
    allowed = (
        inactive & alive_F.to(inactive.device)[None, :] if alive_F is not None else inactive.clone()
    )
    # A collapsed SAE (e.g. one alive feature) leaves no alive, inactive j at some tokens: fall back
    # to any inactive feature there, and where every feature is active to an isotropic direction,
    # rather than failing the whole eval. Logged, because such an SAE's NCES means little.
    no_alive = ~allowed.any(-1)
    allowed[no_alive] = inactive[no_alive]
    isotropic = ~allowed.any(-1)
    if no_alive.any():
        logger.warning(
            "Other-feature control: %d of %d tokens had no alive inactive feature (%d fell "
            "back to an isotropic direction).",
            int(no_alive.sum()),
            len(feature_M),
            int(isotropic.sum()),
        )
    allowed[isotropic, 0] = True  # placeholder choice, replaced below
    scores = torch.rand(allowed.shape, generator=generator).to(delta_MD.device)
    j = torch.where(allowed, scores, -1.0).argmax(-1)
    d_j = W_dec[j.to(W_dec.device)].to(delta_MD)
    out = coeff_M[:, None] * d_j * (d_i.norm(dim=-1, keepdim=True) / d_j.norm(dim=-1, keepdim=True))
    if isotropic.any():
        out[isotropic] = random_direction_control(delta_MD[isotropic], generator)
    return out


def isotropic_control(
    sae,
    delta_MD: Tensor,
    feature_M: Tensor,
    feature_acts_MF: Tensor,
    generator: torch.Generator | None = None,
    alive_F: Tensor | None = None,
) -> Tensor:
    """:func:`random_direction_control` with the signature every control shares (the SAE and the
    token's features are not needed)."""
    return random_direction_control(delta_MD, generator)


Control = Callable[..., Tensor]
"""``control(sae, delta_MD, feature_M, feature_acts_MF, generator, alive_F) -> control_MD``."""

CONTROLS: dict[str, Control] = {"feature": other_feature_control, "isotropic": isotropic_control}
"""Every NCES control by name (``NCESEvalConfig.control``)."""


def get_control(kind: str) -> Control:
    """The control called ``kind``; raises ``ValueError`` listing the valid names."""
    try:
        return CONTROLS[kind]
    except KeyError:
        raise ValueError(f"Unknown control {kind!r}; valid: {', '.join(CONTROLS)}.") from None

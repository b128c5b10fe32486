"""Control edits for NCES: edits of the same size as a feature's edit, in a direction that is
not the feature's.

* ``feature`` (the NCES default) — the decoder row of a random *other* alive feature of the same
  SAE, one not active at that token, with the same coefficient ``f'_i − f_i``: does the active
  feature's direction matter more *here* than dictionary directions not active here? It is the
  SAE's own, so a dictionary of exchangeable random rows (random-decoder, permuted-decoder,
  ``init``) scores NCES ≈ 0 against it by construction: the nulls test specificity *within* a
  dictionary, and its unweighted mean is the one NCES that separated trained SAEs from every null
  in the validity study (docs/validity.md).
* ``data`` — a direction drawn from the data, the *same* for every SAE: one fixed, seeded set of
  unit directions ``(h_a − h_b) / ‖h_a − h_b‖``, the differences between the clean residuals of
  random pairs of eval tokens (BOS excluded), with each eval token assigned one of them (:func:`data_directions`); the control at a token is its direction scaled to the norm of
  the feature's edit there. It depends only on the model, hook, eval tokens and seed, never on the
  SAE, so two SAEs intervening at one token are measured against the same edit, and a null
  dictionary's NCES is an outcome rather than a construction. The directions are in-distribution
  (token-to-token variation of the residual stream: the covariance of the data, twice), so on
  Gemma-3-270M, ~15× more sensitive to isotropic directions than to in-distribution ones
  (docs/nces.md), on-manifold feature directions are not made to look "anti-causal" the way the
  isotropic control makes them. But random directions move the model more than data directions of
  equal norm, so random dictionaries score high against it (docs/validity.md).
* ``isotropic`` — a seeded random unit vector of the same norm (the original design's random-direction
  control).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from csae_bench.errors import BadInputError

logger = logging.getLogger(__name__)

DATA_CONTROL_DIRECTIONS = 4096
"""Size of the ``data`` control's direction set (fewer when the eval has fewer token pairs)."""


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
    data_MD: Tensor | None = None,
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
    data_MD: Tensor | None = None,
) -> Tensor:
    """:func:`random_direction_control` with the signature every control shares (the SAE and the
    token's features are not needed)."""
    return random_direction_control(delta_MD, generator)


@dataclass(frozen=True)
class DataDirections:
    """The ``data`` control's direction set: ``pool_PD`` unit directions and, for every eval token
    ``(n, t)``, the index ``index_NT[n, t]`` of its direction in the pool."""

    pool_PD: Tensor
    index_NT: Tensor

    def at(self, ctx_M: Tensor, pos_M: Tensor) -> Tensor:
        """``[M, d_in]`` unit directions of the tokens ``(ctx_M[m], pos_M[m])``."""
        idx = self.index_NT[ctx_M.to(self.index_NT.device), pos_M.to(self.index_NT.device)]
        return self.pool_PD[idx.to(self.pool_PD.device)]


@torch.no_grad()
def data_directions(
    h_NTD: Tensor, counted_NT: Tensor, seed: int, n_directions: int = DATA_CONTROL_DIRECTIONS
) -> DataDirections:
    """The ``data`` control's directions from the clean residuals ``h_NTD [n_ctx, ctx, d_in]`` of
    the eval tokens: ``P = min(n_directions, #counted tokens)`` unit vectors
    ``(h_a − h_b) / ‖h_a − h_b‖`` for pairs ``a ≠ b`` of tokens drawn uniformly from those where
    ``counted_NT`` (non-BOS), and one pool index per eval token, all from a ``torch.Generator``
    seeded ``seed`` (nothing about an SAE enters). float32 (float64 for float64 residuals), on
    ``h_NTD``'s device. A pair whose
    residuals coincide (zero difference) is replaced by the next valid direction.

    Raises ``ValueError`` when fewer than 2 tokens are counted."""
    N, T, D = h_NTD.shape
    flat_K = counted_NT.reshape(-1).nonzero(as_tuple=True)[0].cpu()
    if len(flat_K) < 2:
        raise ValueError("The data control needs at least 2 non-BOS eval tokens; use more tokens.")
    gen = torch.Generator().manual_seed(seed)
    P = min(n_directions, len(flat_K))
    i = torch.randint(len(flat_K), (P,), generator=gen)
    off = torch.randint(1, len(flat_K), (P,), generator=gen)  # b != a: a nonzero offset
    a, b = flat_K[i], flat_K[(i + off) % len(flat_K)]
    h = h_NTD.reshape(N * T, D)
    diff_PD = h[a.to(h.device)] - h[b.to(h.device)]
    if diff_PD.dtype != torch.float64:
        diff_PD = diff_PD.float()
    norm_P = diff_PD.norm(dim=-1, keepdim=True)
    ok = (norm_P[:, 0] > 0).nonzero(as_tuple=True)[0]
    if len(ok) == 0:
        raise ValueError("The data control found only identical residuals; check the eval tokens.")
    fill = ok[torch.arange(P, device=ok.device) % len(ok)]
    keep = torch.where(norm_P[:, 0] > 0, torch.arange(P, device=ok.device), fill)
    pool_PD = (diff_PD / norm_P.clamp_min(torch.finfo(diff_PD.dtype).tiny))[keep]
    index_NT = torch.randint(P, (N, T), generator=gen)
    return DataDirections(pool_PD, index_NT)


def data_control(
    sae,
    delta_MD: Tensor,
    feature_M: Tensor,
    feature_acts_MF: Tensor,
    generator: torch.Generator | None = None,
    alive_F: Tensor | None = None,
    data_MD: Tensor | None = None,
) -> Tensor:
    """The ``data`` control: ``data_MD [M, d_in]`` (the unit directions of the intervened tokens,
    :meth:`DataDirections.at`) scaled to the norm of each row of ``delta_MD``.

    Raises ``ValueError`` when ``data_MD`` is not given."""
    if data_MD is None:
        raise ValueError(
            "The data control needs the eval's data directions (data_MD); build them with "
            "data_directions()."
        )
    return data_MD.to(delta_MD) * delta_MD.norm(dim=-1, keepdim=True)


Control = Callable[..., Tensor]
"""``control(sae, delta_MD, feature_M, feature_acts_MF, generator, alive_F, data_MD) ->
control_MD``: ``[M, d_in]`` edits, each of the norm of its row of ``delta_MD``."""

CONTROLS: dict[str, Control] = {
    "data": data_control,
    "feature": other_feature_control,
    "isotropic": isotropic_control,
}
"""Every NCES control by name (``NCESEvalConfig.control``; ``feature`` is the default)."""

NEEDS_DATA_DIRECTIONS = frozenset({"data"})
"""Controls that read the eval's :class:`DataDirections` (their ``data_MD`` argument)."""


class UnknownControlError(BadInputError, ValueError):
    """A control name that is not in :data:`CONTROLS`."""


def get_control(kind: str) -> Control:
    """The control called ``kind``; raises :class:`UnknownControlError` (a ``ValueError``)
    listing the valid names."""
    try:
        return CONTROLS[kind]
    except KeyError:
        raise UnknownControlError(
            f"Unknown control {kind!r}; valid: {', '.join(CONTROLS)}."
        ) from None

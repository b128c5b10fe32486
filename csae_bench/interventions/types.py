"""Intervention types: what a feature's activation is set to.

An intervention on feature ``i`` at a token changes only that feature and keeps the SAE error
term: ``h' = h + (f'_i − f_i) d_i`` (docs/nces.md). An :class:`Intervention` decides ``f'_i`` from the
current value ``f_i``; :func:`feature_edit_BTD` turns new values into the residual delta.

Statistics (means, maxima, resample pools) come from the eval tokens through :meth:`Intervention.fit`
(one tensor) or :meth:`Intervention.fit_stats` (a :class:`FeatureStats` accumulated over batches,
for eval sets too large to hold ``[n_tokens, d_sae]`` at once).

Controls are not intervention types: :mod:`csae_bench.interventions.controls` turns a feature's
delta into an equal-norm control edit (another feature's direction, the NCES default; a data
direction shared by every SAE; or a seeded random unit vector), which the engine then measures like any other edit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from csae_bench.errors import BadInputError


class InterventionError(BadInputError, ValueError):
    """An intervention was specified or used wrongly; the message says what to do."""


@dataclass
class FeatureStats:
    """Per-feature statistics over eval tokens, accumulated batch by batch.

    ``pool_size`` tokens' full activation rows are kept (a uniform sample, reservoir-style) as
    the resample pool: resampling draws ``f_i`` at a random eval token, zeros included, as
    resample ablation does.
    """

    n_tokens: int
    sum_F: Tensor
    count_active_F: Tensor
    max_F: Tensor
    pool_PF: Tensor
    pool_size: int = 1024

    @classmethod
    def empty(
        cls, d_sae: int, pool_size: int = 1024, device: str | torch.device = "cpu"
    ) -> FeatureStats:
        z = torch.zeros(d_sae, dtype=torch.float64, device=device)
        return cls(
            0,
            z.clone(),
            z.clone(),
            torch.zeros(d_sae, device=device),
            torch.zeros(0, d_sae, device=device),
            pool_size,
        )

    @classmethod
    def from_acts(
        cls, feature_acts_NF: Tensor, pool_size: int = 1024, seed: int = 0
    ) -> FeatureStats:
        stats = cls.empty(feature_acts_NF.shape[-1], pool_size, feature_acts_NF.device)
        return stats.update(feature_acts_NF, seed=seed)

    @torch.no_grad()
    def update(self, feature_acts_NF: Tensor, seed: int = 0) -> FeatureStats:
        """Add a batch ``[n, d_sae]`` of feature activations; returns self."""
        acts = feature_acts_NF.detach().reshape(-1, feature_acts_NF.shape[-1]).float()
        if acts.shape[1] != self.sum_F.shape[0]:
            raise InterventionError(
                f"FeatureStats is for d_sae={self.sum_F.shape[0]}, got activations of width {acts.shape[1]}."
            )
        self.sum_F += acts.double().sum(0)
        self.count_active_F += (acts > 0).sum(0).double()
        self.max_F = torch.maximum(self.max_F, acts.max(0).values)
        # keep a uniform sample of rows: merge, then subsample to pool_size with a seeded draw
        pool = torch.cat([self.pool_PF, acts]) if len(self.pool_PF) else acts
        total = self.n_tokens + len(acts)
        if len(pool) > self.pool_size:
            gen = torch.Generator().manual_seed(seed + total)
            # rows from the old pool stand for n_tokens tokens, new rows for one each
            weights = torch.cat(
                [
                    torch.full(
                        (len(self.pool_PF),), max(self.n_tokens, 1) / max(len(self.pool_PF), 1)
                    ),
                    torch.ones(len(acts)),
                ]
            )
            keep = torch.multinomial(weights, self.pool_size, replacement=False, generator=gen)
            pool = pool[keep.to(pool.device)]
        self.pool_PF = pool
        self.n_tokens = total
        return self

    @property
    def frequency_F(self) -> Tensor:
        return (self.count_active_F / max(self.n_tokens, 1)).float()

    def mean_F(self, over: Literal["active", "all"]) -> Tensor:
        if over == "all":
            return (self.sum_F / max(self.n_tokens, 1)).float()
        return (self.sum_F / self.count_active_F.clamp(min=1)).float()


class Intervention(ABC):
    """Sets a feature's activation ``f_i`` to a new value ``f'_i``."""

    name: str = "intervention"
    needs_stats: bool = True

    def __init__(self) -> None:
        self.stats: FeatureStats | None = None

    def fit(self, feature_acts_NF: Tensor, seed: int = 0) -> Intervention:
        """Statistics over eval tokens ``[n_tokens, d_sae]``; returns self."""
        return self.fit_stats(FeatureStats.from_acts(feature_acts_NF, seed=seed))

    def fit_stats(self, stats: FeatureStats) -> Intervention:
        self.stats = stats
        return self

    def _require_stats(self) -> FeatureStats:
        if self.stats is None:
            raise InterventionError(
                f"Intervention {self.name!r} needs statistics over eval tokens: call "
                ".fit(feature_acts_NF) or .fit_stats(FeatureStats) first."
            )
        return self.stats

    @abstractmethod
    def target(
        self, acts_N: Tensor, feature_idx_N: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """The new value ``f'_i`` for each (token, feature) pair, given its current value ``acts_N``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Zero(Intervention):
    """``f'_i = 0``: zero ablation."""

    name = "zero"
    needs_stats = False

    def fit_stats(self, stats: FeatureStats) -> Intervention:
        return self

    def target(self, acts_N, feature_idx_N, generator=None):
        return torch.zeros_like(acts_N)


class Mean(Intervention):
    """``f'_i`` = mean of ``f_i`` over eval tokens where it is active (``over="active"``) or over
    all eval tokens (``over="all"``). A feature never active in the eval tokens gets 0."""

    def __init__(self, over: Literal["active", "all"] = "active") -> None:
        super().__init__()
        if over not in ("active", "all"):
            raise InterventionError(f"Mean(over={over!r}): use 'active' or 'all'.")
        self.over = over
        self.name = "mean" if over == "active" else "mean_all"

    def target(self, acts_N, feature_idx_N, generator=None):
        mean_F = self._require_stats().mean_F(self.over).to(acts_N.device, acts_N.dtype)
        return mean_F[feature_idx_N]


class Resample(Intervention):
    """``f'_i`` = ``f_i`` at a random eval token (drawn from the fitted pool; zeros included)."""

    name = "resample"

    def target(self, acts_N, feature_idx_N, generator=None):
        pool_PF = self._require_stats().pool_PF
        if len(pool_PF) == 0:
            raise InterventionError(
                "Resample was fitted on zero tokens; fit it on eval activations."
            )
        rows = torch.randint(len(pool_PF), (len(feature_idx_N),), generator=generator)
        return pool_PF[rows.to(pool_PF.device), feature_idx_N.to(pool_PF.device)].to(
            acts_N.device, acts_N.dtype
        )


class Clamp(Intervention):
    """``f'_i = α · max f_i`` over eval tokens (steering; α may be negative)."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.name = f"clamp:{alpha:g}"

    def target(self, acts_N, feature_idx_N, generator=None):
        max_F = self._require_stats().max_F.to(acts_N.device, acts_N.dtype)
        return self.alpha * max_F[feature_idx_N]


INTERVENTION_SPECS = ("zero", "mean", "mean_all", "resample", "clamp:<alpha>")


def make_intervention(spec: str) -> Intervention:
    """An intervention from its name: ``zero``, ``mean``, ``mean_all``, ``resample``,
    ``clamp:<alpha>`` (e.g. ``clamp:5``, ``clamp:-1``)."""
    spec = spec.strip()
    if spec == "zero":
        return Zero()
    if spec == "mean":
        return Mean("active")
    if spec == "mean_all":
        return Mean("all")
    if spec == "resample":
        return Resample()
    if spec.startswith("clamp:"):
        try:
            return Clamp(float(spec.split(":", 1)[1]))
        except ValueError:
            raise InterventionError(
                f"Bad clamp spec {spec!r}: write clamp:<alpha>, e.g. clamp:5 or clamp:-1."
            ) from None
    raise InterventionError(
        f"Unknown intervention {spec!r}; valid: {', '.join(INTERVENTION_SPECS)}."
    )


def _sae_d_in(sae) -> int:
    return int(sae.W_dec.shape[1])


@torch.no_grad()
def feature_edit_BTD(
    sae,
    h_BTD: Tensor,
    feature_idx: Tensor,
    new_values: Tensor | float | Intervention,
    feature_acts: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The residual delta ``Σ_k (f'_k − f_k) d_k`` that sets features to new values while keeping
    the SAE error term (add it to ``h_BTD``).

    ``feature_idx``: ``[K]`` (the same features at every position) or ``[B, T, K]`` (per position).
    ``new_values``: a number or a tensor broadcastable to ``[B, T, K]``, or an
    :class:`Intervention` (computes ``f'`` from the current ``f``). ``feature_acts``: the SAE's
    encoding of ``h_BTD`` if already known (``[B, T, d_sae]``); otherwise it is computed.
    Works for any leading shape (``h`` ``[..., D]``, ``feature_idx`` ``[K]`` or ``[..., K]``).
    """
    d_sae, d_in = sae.W_dec.shape
    if h_BTD.shape[-1] != d_in:
        raise InterventionError(
            f"h has width {h_BTD.shape[-1]} but the SAE's d_in is {d_in}; is it the right hook?"
        )
    feature_idx = torch.as_tensor(feature_idx, dtype=torch.long, device=h_BTD.device)
    if feature_idx.numel() and (feature_idx.min() < 0 or feature_idx.max() >= d_sae):
        raise InterventionError(
            f"Feature index out of range: indices must be in [0, {d_sae}), got "
            f"{int(feature_idx.min())}..{int(feature_idx.max())}."
        )
    lead = h_BTD.shape[:-1]
    if feature_idx.ndim == 1:
        idx = feature_idx.expand(*lead, feature_idx.shape[0])
    elif feature_idx.shape[:-1] == lead:
        idx = feature_idx
    else:
        raise InterventionError(
            f"feature_idx must be [K] or {list(lead)} + [K], got {list(feature_idx.shape)}."
        )
    if feature_acts is None:
        feature_acts = sae.encode(h_BTD.to(sae.W_dec.dtype))
    cur = feature_acts.gather(-1, idx).to(h_BTD.dtype)
    if isinstance(new_values, Intervention):
        new = new_values.target(cur.reshape(-1), idx.reshape(-1), generator).reshape(cur.shape)
    else:
        new = torch.as_tensor(new_values, dtype=cur.dtype, device=cur.device).expand_as(cur)
    W_dec_KD = sae.W_dec.to(h_BTD.dtype)[idx]  # [..., K, D]
    return torch.einsum("...k,...kd->...d", new - cur, W_dec_KD)

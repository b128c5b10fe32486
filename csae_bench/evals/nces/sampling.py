"""Which features and tokens the NCES eval intervenes on: seeded, stratified by frequency.

Alive features are split into strata of equal width in log activation frequency (empty strata
dropped) and sampled equally from each, so rare features are not crowded out by frequent ones; each sampled feature carries the
weight ``stratum size / stratum sample`` so means over the sample estimate means over all alive
features. Tokens are drawn from a feature's *eligible* active tokens (not BOS, and early enough in
the context for a full effect window): uniformly, or stratified by position — the tokens sorted by
position are cut into as many equal-count strata as tokens wanted and one is drawn from each
(systematic sampling: every active token is equally likely, so the estimate of the feature's mean
is unchanged, while a few tokens can no longer all land early or all late in the context, where
position dominates the per-token effect — issue 14, item 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from csae_bench.interventions.types import FeatureStats

TOKEN_SAMPLING = ("uniform", "position")
"""The ways :func:`sample_tokens` draws a feature's tokens (``NCESEvalConfig.token_sampling``)."""


@dataclass
class ActiveTokens:
    """Sparse eligible activations, sorted by feature: entry ``k`` says feature ``feat_P[k]`` is
    active at ``(ctx_P[k], pos_P[k])``. ``offsets_F1`` indexes each feature's slice."""

    ctx_P: Tensor
    pos_P: Tensor
    feat_P: Tensor
    offsets_F1: Tensor

    def of(self, feature: int) -> tuple[Tensor, Tensor]:
        a, b = int(self.offsets_F1[feature]), int(self.offsets_F1[feature + 1])
        return self.ctx_P[a:b], self.pos_P[a:b]

    def count(self, feature: int) -> int:
        return int(self.offsets_F1[feature + 1] - self.offsets_F1[feature])


@torch.no_grad()
def collect_active(
    sae, h_NTD: Tensor, eligible_NT: Tensor, counted_NT: Tensor, seed: int, batch_contexts: int = 8
) -> tuple[ActiveTokens, FeatureStats]:
    """Encode every eval token once: feature statistics over ``counted_NT`` tokens (non-BOS) and
    the sparse list of active tokens where ``eligible_NT``."""
    d_sae = sae.W_dec.shape[0]
    stats = FeatureStats.empty(d_sae)
    ctx, pos, feat = [], [], []
    for start in range(0, len(h_NTD), batch_contexts):
        h = h_NTD[start : start + batch_contexts]
        f = sae.encode(h.to(sae.W_dec.dtype)).float()
        stats.update(f[counted_NT[start : start + len(h)]], seed=seed)
        c, p, i = ((f > 0) & eligible_NT[start : start + len(h), :, None]).nonzero(as_tuple=True)
        ctx.append(c + start), pos.append(p), feat.append(i)
    ctx_P, pos_P, feat_P = torch.cat(ctx).cpu(), torch.cat(pos).cpu(), torch.cat(feat).cpu()
    order = torch.argsort(feat_P, stable=True)
    ctx_P, pos_P, feat_P = ctx_P[order], pos_P[order], feat_P[order]
    offsets = torch.zeros(d_sae + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.bincount(feat_P, minlength=d_sae), 0)
    return ActiveTokens(ctx_P, pos_P, feat_P, offsets), stats


@dataclass
class FeatureSample:
    feature_idx: Tensor
    stratum: Tensor
    weight: Tensor
    n_alive: int


def stratified_features(
    frequency_F: Tensor, n_features: int, n_strata: int, gen: torch.Generator
) -> FeatureSample:
    """Sample up to ``n_features`` alive features equally from ``n_strata`` equal-width strata of
    log frequency (leftover quota goes to strata with features to spare)."""
    alive = (frequency_F > 0).nonzero(as_tuple=True)[0]
    n_alive = len(alive)
    if n_alive == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return FeatureSample(empty, empty, torch.zeros(0), 0)
    # fewer features than strata: fewer, wider strata, so every stratum gets a sample and the
    # weights still cover every alive feature
    n_strata = max(1, min(n_strata, n_features))
    log_f = frequency_F[alive].double().log10()
    lo, hi = float(log_f.min()), float(log_f.max())
    edges = torch.linspace(lo, hi, n_strata + 1, dtype=torch.float64)[1:-1]
    bin_of = torch.bucketize(log_f, edges, right=True)
    strata = [alive[bin_of == b] for b in range(n_strata) if (bin_of == b).any()]
    quota = [0] * len(strata)
    left = min(n_features, n_alive)
    while left > 0:  # round-robin: equal allocation, capped by stratum size
        for s, members in enumerate(strata):
            if left > 0 and quota[s] < len(members):
                quota[s] += 1
                left -= 1
    idx, stratum, weight = [], [], []
    for s, (members, q) in enumerate(zip(strata, quota, strict=True)):
        pick = members[torch.randperm(len(members), generator=gen)[:q]]
        idx.append(pick)
        stratum.append(torch.full((q,), s))
        weight.append(torch.full((q,), len(members) / q))
    return FeatureSample(torch.cat(idx), torch.cat(stratum), torch.cat(weight).float(), n_alive)


def sample_tokens(
    active: ActiveTokens,
    features: Tensor,
    n_per_feature: int,
    gen: torch.Generator,
    by_position: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Up to ``n_per_feature`` eligible active tokens per feature, without replacement: uniformly,
    or (``by_position``) one from each of ``n`` equal-count strata of the tokens sorted by position
    (ties in random order). Returns ``feature_M, ctx_M, pos_M`` and ``owner_M`` (index into
    ``features``)."""
    feat, ctx, pos, owner = [], [], [], []
    for j, f in enumerate(features.tolist()):
        c, p = active.of(f)
        pick = torch.randperm(len(c), generator=gen)
        if by_position and len(c) > n_per_feature:
            pick = pick[torch.argsort(p[pick], stable=True)]  # by position, ties shuffled
            n = n_per_feature
            edges = torch.arange(n + 1) * len(c) // n  # stratum k is rows edges[k]..edges[k+1]-1
            within = (torch.rand(n, generator=gen) * (edges[1:] - edges[:-1])).long()
            pick = pick[edges[:-1] + within]
        else:
            pick = pick[:n_per_feature]
        feat.append(torch.full((len(pick),), f))
        ctx.append(c[pick]), pos.append(p[pick]), owner.append(torch.full((len(pick),), j))
    cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.long)  # noqa: E731
    return cat(feat), cat(ctx), cat(pos), cat(owner)

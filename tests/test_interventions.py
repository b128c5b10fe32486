"""Intervention types and the feature edit (csae_bench.interventions.types)."""

from __future__ import annotations

import pytest
import torch
from helpers import SPECS, random_sae

from csae_bench.interventions import (
    Clamp,
    FeatureStats,
    InterventionError,
    Mean,
    Resample,
    Zero,
    feature_edit_BTD,
    make_intervention,
)

# Tiny ops on a shared 2-core machine run far faster on one thread (fixture in conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def acts_NF():
    gen = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(200, 16, generator=gen))
    a[:, 3] = 0.0  # a dead feature
    return a


def test_make_intervention_parses_every_spec():
    kinds = [type(make_intervention(s)) for s in SPECS]
    assert kinds == [Zero, Mean, Mean, Resample, Clamp, Clamp]
    assert make_intervention("clamp:-1").alpha == -1.0
    assert make_intervention("mean_all").over == "all"
    assert [make_intervention(s).name for s in SPECS] == SPECS


@pytest.mark.parametrize("bad", ["zeros", "clamp:x", "", "mean:active"])
def test_unknown_spec_lists_the_valid_ones(bad):
    with pytest.raises(InterventionError, match="zero|clamp"):
        make_intervention(bad)


def test_targets_match_their_definitions(acts_NF):
    idx = torch.tensor([0, 1, 2, 3, 0])
    cur = acts_NF[7, idx]
    active_mean = (acts_NF.sum(0) / (acts_NF > 0).sum(0).clamp(min=1))[idx]
    assert torch.equal(Zero().target(cur, idx), torch.zeros(5))
    torch.testing.assert_close(Mean("active").fit(acts_NF).target(cur, idx), active_mean)
    torch.testing.assert_close(Mean("all").fit(acts_NF).target(cur, idx), acts_NF.mean(0)[idx])
    torch.testing.assert_close(Clamp(-1.0).fit(acts_NF).target(cur, idx), -acts_NF.max(0).values[idx])
    assert Mean("active").fit(acts_NF).target(cur, idx)[3] == 0  # dead feature: 0, not NaN


def test_resample_draws_values_of_the_same_feature(acts_NF):
    r = Resample().fit(acts_NF)
    idx = torch.arange(16).repeat(20)
    out = r.target(torch.zeros(len(idx)), idx, torch.Generator().manual_seed(0))
    for f in range(16):
        assert torch.isin(out[idx == f], acts_NF[:, f]).all()
    again = r.target(torch.zeros(len(idx)), idx, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded


@pytest.mark.parametrize("spec", ["mean", "mean_all", "resample", "clamp:2"])
def test_unfitted_intervention_says_what_to_do(spec):
    with pytest.raises(InterventionError, match="fit"):
        make_intervention(spec).target(torch.ones(2), torch.tensor([0, 1]))


def test_feature_stats_stream_equals_one_shot(acts_NF):
    one = FeatureStats.from_acts(acts_NF, pool_size=64)
    streamed = FeatureStats.empty(16, pool_size=64)
    for chunk in acts_NF.split(37):
        streamed.update(chunk)
    torch.testing.assert_close(one.sum_F, streamed.sum_F)
    torch.testing.assert_close(one.count_active_F, streamed.count_active_F)
    torch.testing.assert_close(one.max_F, streamed.max_F)
    assert streamed.n_tokens == 200 and streamed.pool_PF.shape == (64, 16)


@pytest.mark.parametrize("kind", ["topk", "relu"])
@pytest.mark.parametrize("spec", SPECS)
def test_feature_edit_keeps_the_error_term(kind, spec):
    sae = random_sae(kind)
    gen = torch.Generator().manual_seed(1)
    h = 3 * torch.randn(2, 5, 64, generator=gen)
    f = sae.encode(h)
    iv = make_intervention(spec).fit(f.reshape(-1, 256))
    idx = f.argmax(-1, keepdim=True)  # an active feature at every position
    delta = feature_edit_BTD(sae, h, idx, iv, generator=torch.Generator().manual_seed(0))
    new = iv.target(f.gather(-1, idx).reshape(-1), idx.reshape(-1), torch.Generator().manual_seed(0))
    f_edit = f.scatter(-1, idx, new.reshape(2, 5, 1))
    # h' = h + delta has the same SAE error term as h, with the feature at its new value
    torch.testing.assert_close((h + delta) - sae.decode(f_edit), h - sae.decode(f), atol=1e-5, rtol=1e-5)


def test_feature_edit_sets_several_features_per_position():
    sae = random_sae()
    h = torch.randn(3, 4, 64)
    f = sae.encode(h)
    idx = torch.tensor([1, 7, 9])
    delta = feature_edit_BTD(sae, h, idx, 0.5)
    expect = torch.einsum("btk,kd->btd", 0.5 - f[..., idx], sae.W_dec[idx])
    torch.testing.assert_close(delta, expect)


def test_feature_edit_rejects_bad_input():
    sae = random_sae()
    h = torch.randn(1, 2, 64)
    with pytest.raises(InterventionError, match="out of range"):
        feature_edit_BTD(sae, h, torch.tensor([256]), 0.0)
    with pytest.raises(InterventionError, match="d_in"):
        feature_edit_BTD(sae, torch.randn(1, 2, 32), torch.tensor([0]), 0.0)
    with pytest.raises(InterventionError, match="feature_idx"):
        feature_edit_BTD(sae, h, torch.zeros(1, 3, 1, dtype=torch.long), 0.0)

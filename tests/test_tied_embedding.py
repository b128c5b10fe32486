"""One copy of a tied embedding (csae_bench.tied_embedding): exact outputs, hooks intact."""

import math

import pytest
import torch

from csae_bench.tied_embedding import TiedEmbed, share_tied_embedding
from tests.helpers import random_tokens, tiny_model


def _tie(model, scale: float) -> None:
    with torch.no_grad():
        model.embed.W_E.copy_(model.unembed.W_U.T * scale)


@pytest.mark.parametrize("scale", [1.0, math.sqrt(64)])
def test_tied_model_gives_identical_logits_and_cache(scale):
    model = tiny_model()
    _tie(model, scale)
    tokens = random_tokens(2, 16, seed=0)
    with torch.no_grad():
        before, cache_before = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    n_before = sum(p.numel() for p in model.parameters())
    assert share_tied_embedding(model)
    assert isinstance(model.embed, TiedEmbed)
    with torch.no_grad():
        after, cache_after = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    assert torch.equal(before, after)
    assert torch.equal(
        cache_before["blocks.1.hook_resid_post"], cache_after["blocks.1.hook_resid_post"]
    )
    # W_E is no longer a parameter, and the old Embed is gone from the hook bookkeeping too.
    assert sum(p.numel() for p in model.parameters()) == n_before - model.cfg.d_vocab * 64
    assert model.mod_dict["embed"] is model.embed
    assert "embed.W_E" not in dict(model.named_parameters())
    assert torch.equal(model.W_E, model.unembed.W_U.T * scale)
    assert not share_tied_embedding(model)  # once


def test_untied_model_is_left_alone():
    model = tiny_model()  # random W_E and W_U: not tied
    embed = model.embed
    assert not share_tied_embedding(model)
    assert model.embed is embed


def test_nearly_tied_model_is_left_alone():
    model = tiny_model()
    _tie(model, 1.0)
    with torch.no_grad():
        model.embed.W_E[3, 5] += 1e-6  # one entry off: not bit-for-bit
    assert not share_tied_embedding(model)


def test_gradients_reach_the_shared_unembedding():
    model = tiny_model()
    _tie(model, 2.0)
    share_tied_embedding(model)
    model.unembed.W_U.requires_grad_(True)
    model(random_tokens(1, 8, seed=1)).sum().backward()
    assert model.unembed.W_U.grad is not None and torch.isfinite(model.unembed.W_U.grad).all()

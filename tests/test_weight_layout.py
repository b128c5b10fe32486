"""TransformerLens weights in the layout its forward reads (csae_bench.weight_layout): no copies,
bit-identical activations and logits."""

import pytest
import torch

from csae_bench.interventions.engine import EffectEngine, EngineConfig
from csae_bench.weight_layout import store_in_forward_layout
from tests.helpers import random_tokens, tiny_model

HOOK = "blocks.1.hook_resid_post"


@pytest.mark.parametrize("arch", ["gemma3", "gpt2"])
def test_relaid_model_gives_identical_logits_and_activations(arch):
    model = tiny_model(arch)
    tokens = random_tokens(2, 16, seed=0)
    with torch.no_grad():
        before, cache_before = model.run_with_cache(tokens, names_filter=HOOK)
    shapes = {name: p.shape for name, p in model.named_parameters()}
    moved = store_in_forward_layout(model)
    with torch.no_grad():
        after, cache_after = model.run_with_cache(tokens, names_filter=HOOK)
    assert torch.equal(before, after)
    assert torch.equal(cache_before[HOOK], cache_after[HOOK])
    assert {name: p.shape for name, p in model.named_parameters()} == shapes
    # what TransformerLens makes contiguous on every call is contiguous already
    attn = model.blocks[0].attn
    assert model.unembed.W_U.T.is_contiguous()
    assert attn.W_O.permute(2, 0, 1).is_contiguous() and attn.W_Q.transpose(1, 2).is_contiguous()
    if arch == "gemma3":  # GatedMLP copies its three matrices; GPT-2's MLP does not
        assert model.blocks[0].mlp.W_in.T.is_contiguous()
        assert moved == model.cfg.n_layers * 7 + 1
    assert store_in_forward_layout(model) == 0


def test_engine_effects_agree_across_layouts():
    """Our own matmuls read the re-laid weights through other strides: same effects to rounding."""
    tokens = random_tokens(4, 24, seed=1)
    plain = tiny_model().to(torch.float64)
    relaid = tiny_model().to(torch.float64)
    store_in_forward_layout(relaid)
    gen = torch.Generator().manual_seed(0)
    ctx, pos = torch.randint(0, 4, (10,), generator=gen), torch.randint(1, 18, (10,), generator=gen)
    delta = torch.randn(10, 64, generator=gen, dtype=torch.float64)
    a = EffectEngine(plain, HOOK, tokens, EngineConfig(window=3)).effects(ctx, pos, delta)
    b = EffectEngine(relaid, HOOK, tokens, EngineConfig(window=3)).effects(ctx, pos, delta)
    torch.testing.assert_close(a.kl, b.kl, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.dloss, b.dloss, rtol=1e-10, atol=1e-12)

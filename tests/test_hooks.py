"""hooks.py: hook names and layers, the suffix from a hook to the logits, the soft-capped
unembedding and the token masks — each checked against TransformerLens's own forward pass."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model as _tiny
from transformer_lens.utilities import get_act_name

from csae_bench import hooks


def test_names_and_layers():
    assert hooks.block_hook_name(3) == get_act_name("resid_post", 3) == "blocks.3.hook_resid_post"
    assert hooks.layer_of_hook("blocks.11.hook_resid_pre") == 11
    assert hooks.parse_layer("hook_embed") is None and hooks.parse_layer("model.layers.3") is None
    with pytest.raises(hooks.HookError, match="Cannot read a layer"):
        hooks.layer_of_hook("hook_embed")
    with pytest.raises(hooks.HookError, match=r"out of range: the model has layers 0\.\.3"):
        hooks.layer_of_hook("blocks.4.hook_resid_post", n_layers=4)
    with pytest.raises(KeyError):  # a caller's own error class
        hooks.layer_of_hook("hook_embed", error=KeyError)


@pytest.mark.parametrize("name", ["blocks.0.hook_resid_post", "blocks.17.attn.hook_z", "blocks.3", "blocks.x.hook_resid_pre", "blocks.hook"])
def test_layer_rule_is_saelens(name):
    from sae_lens.util import extract_layer_from_tlens_hook_name

    assert hooks.parse_layer(name) == extract_layer_from_tlens_hook_name(name)


def test_resume_layer_reads_residual_hooks_only():
    model = _tiny("gpt2")
    assert hooks.resume_layer(model, "blocks.1.hook_resid_post") == 2
    assert hooks.resume_layer(model, "blocks.1.hook_resid_pre") == 1
    for bad in ("blocks.1.hook_mlp_out", "blocks.1.attn.hook_resid_post"):
        with pytest.raises(hooks.HookError, match="residual-stream hook"):
            hooks.resume_layer(model, bad)


@pytest.mark.parametrize(("arch", "softcap"), [("gpt2", None), ("gemma3", None), ("gemma3", 3.0)])
@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.2.hook_resid_pre", "blocks.3.hook_resid_post"])
def test_hook_to_logits_equals_the_model(arch, softcap, hook, tiny_tokens):
    model, tokens = _tiny(arch, softcap), tiny_tokens[:2]
    start = hooks.resume_layer(model, hook)
    with torch.no_grad():
        logits = model(tokens)
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
        x = hooks.final_residual(model, cache[hook], start)
        ours = hooks.model_logits(model, x)
        cols = torch.tensor([5, 1, 300])
        rows = hooks.model_logits(model, hooks.final_norm(model, hooks.run_from(model, cache[hook], start)[:, -1]), cols)
        full, slope = hooks.unembed(x, model.W_U, model.b_U, model.cfg.output_logits_soft_cap)
    torch.testing.assert_close(ours, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rows, logits[:, -1, cols], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, logits, rtol=1e-5, atol=1e-5)
    assert (slope is None) == (softcap is None)


def test_softcap_slope_is_the_derivative():
    raw = torch.linspace(-20, 20, 41, dtype=torch.float64, requires_grad=True)
    hooks.softcap(raw, 5.0).sum().backward()
    torch.testing.assert_close(hooks.softcap_slope(raw.detach(), 5.0), raw.grad)
    assert hooks.softcap_slope(raw, None) is None and hooks.softcap_slope(raw, -1.0) is None


def test_token_masks():
    class Tok:
        bos_token_id, eos_token_id, pad_token_id = 2, 1, 0

    class WithTok:
        tokenizer = Tok()

    class NoTok:
        tokenizer = None

    tokens = torch.tensor([[2, 5, 1, 0], [7, 2, 3, 4]])
    assert hooks.non_bos_mask(WithTok(), tokens).tolist() == [[False, True, True, True], [True, False, True, True]]
    assert hooks.non_bos_mask(NoTok(), tokens).all()
    assert hooks.special_token_ids(WithTok(), tokens) == {0, 1, 2}
    assert hooks.special_token_ids(NoTok(), tokens) == {2, 7}  # each context's first token
    assert hooks.keep_mask(tokens, {0, 1, None}).tolist() == [[True, True, False, False], [True, True, True, True]]

"""Activation harvest: stop_at_layer, BOS dropped, same stream for every SAE, disk cache."""

from __future__ import annotations

import pytest
import torch

from csae_bench.activations.harvest import (
    ActivationError,
    ActivationSource,
    harvest_activations,
    hook_name_for_layer,
)


@pytest.fixture(scope="module")
def model(word_tokenizer):
    from helpers import tiny_model

    model = tiny_model()
    model.tokenizer = word_tokenizer  # only bos_token_id is used by the harvest
    return model


def test_harvest_matches_full_forward_and_drops_bos(model, tiny_tokens):
    acts = harvest_activations(model, "blocks.1.hook_resid_post", tiny_tokens, batch_contexts=3, show_progress=False)
    _, cache = model.run_with_cache(tiny_tokens, names_filter="blocks.1.hook_resid_post")
    ref = cache["blocks.1.hook_resid_post"][:, 1:].reshape(-1, model.cfg.d_model)
    assert acts.shape == ref.shape
    torch.testing.assert_close(acts, ref, rtol=1e-5, atol=1e-5)


def test_layer_out_of_range_names_the_valid_range(model, tiny_tokens):
    with pytest.raises(ActivationError, match=r"layers 0\.\.3"):
        hook_name_for_layer(model, 7)
    with pytest.raises(ActivationError, match="out of range"):
        harvest_activations(model, "blocks.9.hook_resid_post", tiny_tokens)


def test_batches_are_identical_for_identical_seeds_and_cover_the_budget(model, tiny_tokens):
    src = ActivationSource(model, "blocks.1.hook_resid_post", tiny_tokens, seed=3)
    a = list(src.batches(16, n_tokens=400))
    b = list(src.batches(16, n_tokens=400))
    assert len(a) == 25 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_bounded_buffer_streams_chunks(model, tiny_tokens):
    src = ActivationSource(model, "blocks.1.hook_resid_post", tiny_tokens, max_buffer_tokens=64)
    assert src.contexts_per_chunk == 2
    served = sum(len(x) for x in src.batches(8))
    assert served == 8 * 31  # one epoch of 248 non-BOS tokens in batches of 8


def test_disk_cache_round_trip_and_corruption(model, tiny_tokens, tmp_path):
    path = tmp_path / "acts.safetensors"
    src = ActivationSource(model, "blocks.1.hook_resid_post", tiny_tokens, cache_path=path)
    acts = src.all_activations()
    assert path.exists()
    torch.testing.assert_close(ActivationSource(model, "blocks.1.hook_resid_post", tiny_tokens, cache_path=path).all_activations(), acts)
    path.write_bytes(b"garbage")
    torch.testing.assert_close(ActivationSource(model, "blocks.1.hook_resid_post", tiny_tokens, cache_path=path).all_activations(), acts)

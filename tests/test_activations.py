"""Activation harvest and store: stop_at_layer, BOS dropped, same stream for every SAE, sharded
disk store (resumable, verified, streamed), stored dtype."""

from __future__ import annotations

import pytest
import torch

from csae_bench.activations.harvest import (
    ActivationError,
    harvest_activations,
    hook_name_for_layer,
)
from csae_bench.activations.source import MANIFEST, ActivationSource

HOOK = "blocks.1.hook_resid_post"


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


def test_shards_stream_one_epoch_exactly(model, tiny_tokens):
    src = ActivationSource(model, HOOK, tiny_tokens, shard_tokens=64)
    assert src.contexts_per_shard == 2 and src.n_shards == 4
    batches = list(src.batches(8))
    assert sum(len(x) for x in batches) == 8 * 31  # one epoch of 248 non-BOS tokens
    # every token served once: the multiset of rows equals the harvest's
    served = torch.cat(batches).sort(dim=0).values
    torch.testing.assert_close(served, src.all_activations().float().sort(dim=0).values)


def test_seeds_change_the_order_not_the_data(model, tiny_tokens):
    a = torch.cat(list(ActivationSource(model, HOOK, tiny_tokens, seed=0, shard_tokens=64).batches(8)))
    b = torch.cat(list(ActivationSource(model, HOOK, tiny_tokens, seed=1, shard_tokens=64).batches(8)))
    assert not torch.equal(a, b)
    torch.testing.assert_close(a.sort(dim=0).values, b.sort(dim=0).values)


def test_batch_larger_than_the_harvest_says_what_to_do(model, tiny_tokens):
    with pytest.raises(ActivationError, match="lower batch_size"):
        next(ActivationSource(model, HOOK, tiny_tokens[:2]).batches(1000))


def test_store_round_trip_resume_and_corruption(model, tiny_tokens, tmp_path):
    folder = tmp_path / "acts"
    src = ActivationSource(model, HOOK, tiny_tokens, cache_path=folder, shard_tokens=64)
    assert not src.is_harvested()
    assert src.harvest(show_progress=False) == folder / MANIFEST
    assert src.is_harvested() and len(list(folder.glob("shard_*.safetensors"))) == 4
    acts = src.all_activations()
    again = ActivationSource(model, HOOK, tiny_tokens, cache_path=folder, shard_tokens=64)
    torch.testing.assert_close(again.all_activations(), acts)
    # a corrupt shard is harvested again, never used
    (folder / "shard_00002.safetensors").write_bytes(b"garbage")
    torch.testing.assert_close(again.all_activations(), acts)
    # a killed harvest (manifest and one shard missing) resumes with the missing shard only
    (folder / MANIFEST).unlink()
    (folder / "shard_00001.safetensors").unlink()
    untouched = (folder / "shard_00003.safetensors").stat().st_mtime_ns
    again.harvest(show_progress=False)
    assert (folder / "shard_00003.safetensors").stat().st_mtime_ns == untouched
    torch.testing.assert_close(again.all_activations(), acts)


def test_store_refuses_other_tokens(model, tiny_tokens, tmp_path):
    folder = tmp_path / "acts"
    ActivationSource(model, HOOK, tiny_tokens, cache_path=folder).harvest(show_progress=False)
    other = ActivationSource(model, HOOK, tiny_tokens.flip(0), cache_path=folder)
    assert not other.is_harvested()
    torch.testing.assert_close(
        other.all_activations(), harvest_activations(model, HOOK, tiny_tokens.flip(0), show_progress=False)
    )


def test_bf16_model_stores_bf16_and_serves_float32(model, tiny_tokens, tmp_path):
    import copy

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    src = ActivationSource(bf16, HOOK, tiny_tokens, cache_path=tmp_path / "acts")
    src.harvest(show_progress=False)
    assert src.all_activations().dtype == torch.bfloat16
    batch = next(src.batches(8))
    assert batch.dtype == torch.float32

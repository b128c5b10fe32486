"""Model sources: the embedded default is a real pretrained model; hub architectures load from
local directories of tiny random models; bad input fails fast and clearly."""

from __future__ import annotations

import time

import pytest
import torch

from csae_bench import models
from csae_bench.models import ModelLoadError, load_model, resolve_model

# Ordinary English written for this test (not from the corpus).
PARAGRAPHS = [
    "The library on the corner of our street opens at nine in the morning. Most days a small "
    "queue forms outside before the doors are unlocked, mostly students with heavy bags and "
    "retired people who come to read the newspapers.",
    "When the rain finally stopped, the children ran outside to look for snails in the garden. "
    "Their mother told them to put on their boots, but nobody listened, and soon the kitchen "
    "floor was covered in mud.",
    "The committee agreed to postpone the vote until next month, because several members had "
    "not yet read the report. The chairman said he was disappointed but understood the reasons.",
]


def _tiny_tokenizer(tmp_path):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for p in PARAGRAPHS for w in p.replace(".", " .").replace(",", " ,").split()})
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(tk_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>"), len(vocab)


def test_local_gpt2_directory_loads_offline_and_matches_hf(tmp_path):
    """The gpt2 loading path (config from config.json, weight conversion), on a tiny random GPT-2."""
    import transformers

    tokenizer, vocab = _tiny_tokenizer(tmp_path)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_ctx=64, n_embd=32, n_layer=2,
                                  n_head=2, bos_token_id=2, eos_token_id=1)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    model = load_model(str(tmp_path))
    assert model.cfg.n_layers == 2 and model.cfg.d_model == 32
    toks = torch.randint(4, vocab, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model(toks, return_type="loss").item() == pytest.approx(
            hf(toks, labels=toks).loss.item(), rel=1e-4)
    # a second load (another dtype) reuses the tokenizer, which prepends BOS as TransformerLens wants
    again = load_model(str(tmp_path), dtype="float64")
    assert again.tokenizer is model.tokenizer
    assert model.to_tokens("The library opens")[0, 0].item() == 2


def test_gemma_2_architecture_weights_convert_exactly():
    """TransformerLens knows Gemma-2 configs by name, so the gemma-2-2b path is checked on a tiny
    random Gemma-2 with the 2b config's architecture (softcaps, local/global attention, post-norms)
    shrunk to a few dimensions: HF weights -> TransformerLens weights -> same loss."""
    import dataclasses

    import transformers
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    full = loading.get_pretrained_model_config("google/gemma-2-2b", fold_ln=False)  # no hub: by name
    tiny = dataclasses.replace(full, d_model=32, d_head=16, n_heads=2, n_key_value_heads=1, d_mlp=64,
                               n_layers=2, d_vocab=128, d_vocab_out=128, n_ctx=64, window_size=8,
                               attn_types=["global", "local"], rotary_dim=16,
                               tokenizer_name=None)
    hf_cfg = transformers.Gemma2Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=64, sliding_window=8,
        final_logit_softcapping=full.output_logits_soft_cap, attn_logit_softcapping=full.attn_scores_soft_cap,
        query_pre_attn_scalar=int(round(full.attn_scale ** 2)), rms_norm_eps=full.eps, layer_types=["full_attention", "sliding_attention"],
    )
    torch.manual_seed(0)
    hf = transformers.Gemma2ForCausalLM(hf_cfg).eval()
    state = loading.get_pretrained_state_dict("google/gemma-2-2b", tiny, hf)
    model = HookedTransformer(tiny)
    model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)
    toks = torch.randint(3, 128, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model(toks, return_type="loss").item() == pytest.approx(
            hf(toks, labels=toks).loss.item(), rel=1e-3)


def test_unknown_model_name_lists_valid_choices():
    with pytest.raises(ModelLoadError, match="Use one of embedded, gpt2"):
        resolve_model("definitely-not-a-model")


def test_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_model_offline_fails_fast_with_one_clear_line(monkeypatch):
    """No network attempt and no retry back-off (huggingface_hub's ~25 s loop sleeps between tries):
    asserted by construction, not by a wall-time bound that a loaded machine could break."""
    import socket

    def forbidden(*args, **kwargs):
        raise AssertionError("an offline load must not open a connection or sleep for a retry")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(time, "sleep", forbidden)
    with pytest.raises(ModelLoadError) as err:
        load_model("gpt2")
    assert "--model embedded" in str(err.value)
    assert "\n" not in str(err.value)


def test_gemma_2_2b_uses_bf16_on_gpu():
    spec = resolve_model("gemma-2-2b")
    assert spec.name == "google/gemma-2-2b" and spec.dtype == "bfloat16"


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "delete_manifest"])
def test_corrupt_embedded_cache_is_detected(tmp_path, monkeypatch, damage):
    """A damaged cache fails its integrity check (and is then rebuilt, never used)."""
    monkeypatch.setenv("CSAE_BENCH_CACHE", str(tmp_path))
    target = tmp_path / "gemma-3-270m"
    target.mkdir()
    weights = target / "model.safetensors"
    weights.write_bytes(b"x" * 1000)
    (target / "config.json").write_text("{}")
    import json

    models._manifest_path(target).write_text(json.dumps({
        "version": models._CACHE_FORMAT_VERSION,
        "files": {"model.safetensors": [1000, models._sha256(weights)], "config.json": [2, ""]},
    }))
    assert models._cache_is_valid(target)
    if damage == "truncate":
        weights.write_bytes(b"x" * 10)
    elif damage == "corrupt":
        weights.write_bytes(b"y" * 1000)
    else:
        models._manifest_path(target).unlink()
    assert not models._cache_is_valid(target)

    rebuilt = []
    monkeypatch.setattr(models, "_build_embedded_cache", lambda t: rebuilt.append(t))
    models.embedded_model_dir()
    assert rebuilt == [target]


def test_embedded_model_is_a_real_pretrained_model_and_matches_hf(embedded_model):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(models.embedded_model_dir(), dtype=torch.float32).eval()
    tl_losses, hf_losses = [], []
    for text in PARAGRAPHS:
        toks = embedded_model.to_tokens(text)
        with torch.no_grad():
            tl_losses.append(embedded_model(toks, return_type="loss").item())
            hf_losses.append(hf(toks, labels=toks).loss.item())
    # A random model at a 262k vocabulary scores ln(262144) ≈ 12.5 nats/token.
    assert max(tl_losses) < 4.5, tl_losses
    assert tl_losses == pytest.approx(hf_losses, abs=1e-3)

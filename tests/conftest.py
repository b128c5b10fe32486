"""Shared fixtures. Tests run offline; the embedded model is loaded once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch


def tiny_config(arch: str = "gemma3", d_model: int = 64, n_layers: int = 4, d_vocab: int = 512):
    """A tiny random TransformerLens config of a given family (gemma3 / gpt2 / gemma2)."""
    from transformer_lens import HookedTransformerConfig

    common = dict(n_layers=n_layers, d_model=d_model, n_ctx=128, d_head=16, n_heads=d_model // 16,
                  d_vocab=d_vocab, seed=0, device="cpu")
    if arch == "gpt2":
        return HookedTransformerConfig(**common, d_mlp=4 * d_model, act_fn="gelu_new",
                                       normalization_type="LN", positional_embedding_type="standard")
    return HookedTransformerConfig(**common, d_mlp=2 * d_model, act_fn="gelu_pytorch_tanh",
                                   normalization_type="RMS", positional_embedding_type="rotary",
                                   gated_mlp=True, use_normalization_before_and_after=True,
                                   n_key_value_heads=2, final_rms=True)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread: tiny ops on a shared 2-core machine are far
    faster that way. Opt in per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny random Gemma-like HookedTransformer (no tokenizer: feed token ids)."""
    from transformer_lens import HookedTransformer

    torch.manual_seed(0)
    model = HookedTransformer(tiny_config())
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_tokens():
    gen = torch.Generator().manual_seed(0)
    toks = torch.randint(3, 512, (8, 32), generator=gen)
    toks[:, 0] = 2  # BOS
    return toks


@pytest.fixture(scope="session")
def embedded_model():
    """The real embedded Gemma-3-270M (converted once into the user cache, ~10 s per load)."""
    from csae_bench.models import load_model

    return load_model("embedded")


@pytest.fixture(scope="session")
def embedded_eval_tokens(embedded_model):
    from csae_bench.data import load_tokens

    return load_tokens(embedded_model.tokenizer, split="eval", context_size=64, n_contexts=16)


@pytest.fixture(scope="session")
def word_tokenizer():
    """A real (fast) Hugging Face tokenizer over a small word vocabulary, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"word{i}" for i in range(500)] + "the a of and is to in it that was".split()
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")

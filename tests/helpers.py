"""The tests' shared builders, one home each (pytest fixtures stay in conftest.py and call these).

- tiny random TransformerLens models of a given family, random token sets, random SAEBench SAEs;
- fast stand-ins for the slow parts of a run (the model, the tokens and a few-step trainer that
  writes real SAELens-format SAE folders), the tiny run built on them, and the entry point of the
  subprocess the kill/resume test starts;
- the embedded model and its token sets, shared with ``benchmarks/``.

Imported by name (``from helpers import ...``): pytest puts this folder on ``sys.path``; the
subprocess and Ray workers of the run tests get it on theirs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

# ---------------------------------------------------------------- tiny models, tokens, SAEs


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


def tiny_model(arch: str = "gemma3", softcap: float | None = None):
    """A tiny random HookedTransformer of ``tiny_config(arch)`` (seed 0, eval mode; no tokenizer:
    feed token ids), with the final logits soft-capped at ``softcap`` if given."""
    from transformer_lens import HookedTransformer

    cfg = tiny_config(arch)
    if softcap is not None:
        cfg.output_logits_soft_cap = softcap
    torch.manual_seed(0)
    return HookedTransformer(cfg).eval()


def random_tokens(n_contexts: int, context_size: int, seed: int, d_vocab: int = 512) -> torch.Tensor:
    """``[n_contexts, context_size]`` random token ids in ``[3, d_vocab)``, BOS (2) first."""
    gen = torch.Generator().manual_seed(seed)
    toks = torch.randint(3, d_vocab, (n_contexts, context_size), generator=gen)
    toks[:, 0] = 2  # BOS
    return toks


SPECS = ["zero", "mean", "mean_all", "resample", "clamp:5", "clamp:-1"]
"""Every intervention type, as ``make_intervention`` parses them."""


def random_sae(kind: str = "topk", d_in: int = 64, d_sae: int = 256, seed: int = 0):
    """A SAEBench SAE with random weights and unit-norm decoder rows."""
    from sae_bench.custom_saes.relu_sae import ReluSAE
    from sae_bench.custom_saes.topk_sae import TopKSAE

    gen = torch.Generator().manual_seed(seed)
    if kind == "topk":
        sae = TopKSAE(d_in, d_sae, 8, "tiny", 1, torch.device("cpu"), torch.float32)
    else:
        sae = ReluSAE(d_in, d_sae, "tiny", 1, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in**0.5)
        W = torch.randn(d_sae, d_in, generator=gen)
        sae.W_dec.copy_(W / W.norm(dim=1, keepdim=True))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=gen))
    return sae


def write_saelens6_folder(folder, d_in: int, d_sae: int, hook: str, model_name: str, nan_row: int | None = None):
    """An SAELens 6 SAE folder (cfg.json with metadata + sae_weights.safetensors) of random
    weights; with ``nan_row``, that decoder row is NaN."""
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(0)
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu")
    cfg.metadata.model_name, cfg.metadata.hook_name = model_name, hook
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, d_in), dim=1))
        sae.W_enc.copy_(sae.W_dec.T)
        if nan_row is not None:
            sae.W_dec[nan_row] = float("nan")
    sae.save_model(str(folder))
    return folder


# ---------------------------------------------------------------- the embedded model


def embedded_model():
    """The real embedded Gemma-3-270M (converted once into the user cache, ~10 s per load)."""
    from csae_bench.models import load_model

    return load_model("embedded")


def embedded_tokens(model, split: str, context_size: int, n_contexts: int, seed: int = 0) -> torch.Tensor:
    """``n_contexts`` contexts of the embedded corpus's ``split`` in ``model``'s tokens."""
    from csae_bench.data import load_tokens

    return load_tokens(model.tokenizer, split=split, context_size=context_size, n_contexts=n_contexts, seed=seed)


# ---------------------------------------------------------------- the tiny run (pipeline stand-ins)

FAKE_ARCHS = ["relu", "topk"]


def tiny_tokens(model, cfg, split: str, n_contexts: int, seed: int) -> torch.Tensor:
    """The run's token loader: random contexts of the run's ``context_size``, eval apart from train."""
    return random_tokens(n_contexts, cfg.context_size, seed * 2 + (split == "eval"), model.cfg.d_vocab)


def fast_train(model, source, settings: dict, out_dir: Path, gradient_pool=None, resume: bool = True):
    """A few Adam steps per architecture on the shared stream; one folder per architecture,
    written atomically (temp folder renamed), skipping finished ones like the real trainer."""
    from csae_bench.activations.harvest import layer_of_hook
    from csae_bench.architectures import build_training_sae

    delay = float(os.environ.get("CSAE_TEST_TRAIN_DELAY", "0"))
    out_dir = Path(out_dir)
    done = {}
    for arch in settings["architectures"]:
        folder = out_dir / arch
        if resume and (folder / "cfg.json").exists():
            done[arch] = folder
            continue
        torch.manual_seed(settings["seed"] * 100 + len(arch))
        opts = {"k": 8} if arch == "topk" else {}
        sae = build_training_sae(arch, source.d_in, settings["d_sae"], **opts)
        with torch.no_grad():
            sae.W_dec.copy_(torch.randn_like(sae.W_dec) / source.d_in**0.5)
            sae.W_enc.copy_(sae.W_dec.T)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
        for batch in source.batches(settings["batch_size"], settings["train_tokens"]):
            x_hat = sae.decode(sae.encode(batch))
            loss = (x_hat - batch).pow(2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        time.sleep(delay)
        meta = sae.cfg.metadata
        meta.model_name = settings["model_name"]
        meta.hook_name = settings["hook_name"]
        meta.hook_layer = layer_of_hook(settings["hook_name"])
        meta.context_size = settings["context_size"]
        meta.prepend_bos = True
        meta.training_tokens = settings["train_tokens"]
        tmp = out_dir / f".{arch}.tmp"
        sae.save_inference_model(tmp)
        tmp.rename(folder)
        done[arch] = folder
    return done


def tiny_run_config(out: Path, **overrides):
    from csae_bench.suite import RunConfig

    settings = dict(model="tiny", layer=2, architectures=list(FAKE_ARCHS), evals=["core"], seeds=[0],
                    d_sae=128, train_tokens=2048, batch_size=256, context_size=32, eval_contexts=16,
                    out=str(out), eval_settings={"core": {"batch_size_prompts": 8}},
                    # one thread and float32 in every process and on every CPU kind, so resumed and
                    # straight runs compare bit for bit
                    threads=1, dtype="float32")
    settings.update(overrides)
    return RunConfig(**settings)


def tiny_resources(cfg):
    from csae_bench.pipeline import Resources

    return Resources(cfg, model_loader=lambda name, device, dtype: tiny_model(), token_loader=tiny_tokens,
                     train_fn=fast_train)


def run_tiny(out: Path, **overrides) -> Path:
    """The tiny run (2 architectures, core eval) done in this process, results under ``out``."""
    from csae_bench.run import execute

    cfg = tiny_run_config(out, **overrides)
    execute(cfg, tiny_resources(cfg), plots=False)
    return out


def run_in_subprocess(out: str) -> None:
    """Entry point of the subprocess the kill/resume test starts and kills."""
    import sys

    from csae_bench.cli import guarded, setup_logging
    from csae_bench.run import execute

    setup_logging(False)
    cfg = tiny_run_config(Path(out))
    sys.exit(guarded(execute, cfg, tiny_resources(cfg), plots=False))


class WordTokenizer:
    """'w17 w3' -> [20, 6]: enough of a tokenizer for a tiny random model (the probing tests)."""

    bos_token_id, pad_token_id, eos_token_id, padding_side = 2, 0, 1, "right"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [int(w[1:]) + 3 for w in text.split()]


def loud_word_model():
    """:func:`tiny_model` with a :class:`WordTokenizer` and loud label words (w1, w2: embedding
    rows 4 and 5 × 20), so the random model's output follows them."""
    import torch

    model = tiny_model()
    model.tokenizer = WordTokenizer()
    with torch.no_grad():
        model.W_E[[4, 5]] *= 20
    return model

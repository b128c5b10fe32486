"""Fast stand-ins for the slow parts of a run (shared by test_run.py and its subprocess script):
a tiny random Gemma-like model, random token sets, and a few-step trainer that writes real
SAELens-format SAE folders."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

FAKE_ARCHS = ["relu", "topk"]


def tiny_model():
    from conftest import tiny_config
    from transformer_lens import HookedTransformer

    torch.manual_seed(0)
    model = HookedTransformer(tiny_config())
    model.eval()
    return model


def tiny_tokens(model, cfg, split: str, n_contexts: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 2 + (split == "eval"))
    toks = torch.randint(3, model.cfg.d_vocab, (n_contexts, cfg.context_size), generator=gen)
    toks[:, 0] = 2  # BOS
    return toks


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
                    threads=1)  # one thread in every process, so resumed and straight runs compare bit for bit
    settings.update(overrides)
    return RunConfig(**settings)


def tiny_resources(cfg):
    from csae_bench.pipeline import Resources

    return Resources(cfg, model_loader=lambda name, device, dtype: tiny_model(), token_loader=tiny_tokens,
                     train_fn=fast_train)


def run_in_subprocess(out: str) -> None:
    """Entry point of the subprocess the kill/resume test starts and kills."""
    import sys

    from csae_bench.cli import guarded, setup_logging
    from csae_bench.run import execute

    setup_logging(False)
    cfg = tiny_run_config(Path(out))
    sys.exit(guarded(execute, cfg, tiny_resources(cfg), plots=False))

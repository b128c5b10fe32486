"""The bf16 noise floor of the intervention engine (issue 13): per-intervention KL through a bf16
path vs the float32 path, on the same edits of the embedded model's layer-6 residual.

    python benchmarks/precision_noise_floor.py            # prints the markdown table of docs/precision.md

Edits are random unit directions scaled to a fraction ``f`` of the residual norm at the edited
position (feature edits of a trained SAE sit near f ≈ 0.01: median effect ≈ 0.005 nats). Paths:
``autocast`` (float32 weights, bf16 matmuls), ``bf16`` (bf16 weights) and ``bf16 paired`` (bf16
weights with the clean reference rows run in the same batch as the edits, so rounding of identical
inputs cancels). Numbers, not timings: run it on any machine.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import torch

from csae_bench import hooks
from csae_bench.data import load_tokens
from csae_bench.interventions.engine import EffectEngine, EngineConfig
from csae_bench.models import load_model

HOOK = "blocks.6.hook_resid_post"
FRACTIONS = (0.0, 0.003, 0.01, 0.03, 0.1, 0.3)
N_CONTEXTS, CONTEXT, M = 16, 64, 128


class PairedCleanEngine(EffectEngine):
    """The engine with each batch's clean reference rows recomputed in that batch."""

    def _run_batch(self, sel, p, ctx_idx_M, pos_M, wlen, delta_MD, kl, dloss, dx, stats) -> None:
        ctx_b, pos_b, wlen_b = ctx_idx_M[sel], pos_M[sel], wlen[sel]
        B, seq, rel = len(sel), int((pos_b + wlen_b).max()) - p, pos_b - p
        uctx, uinv = torch.unique(ctx_b, return_inverse=True)
        rows = torch.cat([ctx_b, uctx])
        inp = self.h_clean_NTD[rows, p : p + seq].clone()
        inp[torch.arange(B), rel] += delta_MD[sel]
        cache = self._prefix_cache(rows, p) if p > 0 else None
        x = hooks.final_residual(self.model, inp, self.layer + 1, past_kv_cache=cache)
        valid = torch.arange(int(wlen_b.max()))[None, :] < wlen_b[:, None]
        b_idx, w_idx = valid.nonzero(as_tuple=True)
        key = uinv[b_idx] * seq + rel[b_idx] + w_idx
        uniq, inverse = torch.unique(key, return_inverse=True)
        next_tok = self.tokens[ctx_b[b_idx], pos_b[b_idx] + w_idx + 1]
        kl_R, loss_clean, loss_int = self._kl(
            x[B:][uniq // seq, uniq % seq], inverse, x[:B][b_idx, rel[b_idx] + w_idx], next_tok
        )
        kl.index_add_(0, sel[b_idx], kl_R)
        dloss.index_add_(0, sel[b_idx], loss_int - loss_clean)


def effects(model, tokens, ctx, pos, engine_cls=EffectEngine, autocast=False) -> dict[float, np.ndarray]:
    ac = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ac:
        engine = engine_cls(model, HOOK, tokens, EngineConfig(window=4))
        h = engine.h_clean_NTD[ctx, pos].float()
        direction = torch.randn(len(ctx), h.shape[1], generator=torch.Generator().manual_seed(1))
        direction /= direction.norm(dim=1, keepdim=True)
        return {
            f: engine.effects(ctx, pos, direction * f * h.norm(dim=1, keepdim=True)).kl.numpy()
            for f in FRACTIONS
        }


def main() -> None:
    torch.manual_seed(0)
    model = load_model("embedded", dtype="float32")
    tokens = load_tokens(model.tokenizer, "embedded", "eval", CONTEXT, N_CONTEXTS, seed=0)
    g = torch.Generator().manual_seed(0)
    ctx = torch.randint(0, N_CONTEXTS, (M,), generator=g)
    pos = torch.randint(1, CONTEXT - 6, (M,), generator=g)
    ref = effects(model, tokens, ctx, pos)
    paths = {"autocast": effects(model, tokens, ctx, pos, autocast=True)}
    model = model.to(torch.bfloat16)
    paths["bf16"] = effects(model, tokens, ctx, pos)
    paths["bf16 paired"] = effects(model, tokens, ctx, pos, engine_cls=PairedCleanEngine)
    out = [
        f"{M} edits on {N_CONTEXTS} contexts of {CONTEXT} tokens, W = 4, layer 6 of the embedded model.",
        "",
        "| f = ‖δ‖/‖h‖ | fp32 median KL | path | median KL | max KL | median rel. err | p90 rel. err |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in FRACTIONS:
        for name, by_f in paths.items():
            kl = by_f[f]
            rel = np.abs(kl - ref[f]) / np.maximum(ref[f], 1e-12)
            err = f"{np.median(rel):.2f} | {np.quantile(rel, 0.9):.2f}" if f else "— | —"
            out.append(
                f"| {f} | {np.median(ref[f]):.2e} | {name} | {np.median(kl):.2e} | {kl.max():.2e} | {err} |"
            )
    sys.stdout.write("\n".join(out) + "\n")

if __name__ == "__main__":
    main()

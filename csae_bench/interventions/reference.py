"""The naive reference the engine is checked and benchmarked against: one full hooked forward
per intervention (``run_with_hooks`` patching ``h + delta`` at the hook), full logits, full
``log_softmax``. Slow and simple on purpose."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from csae_bench.interventions.engine import Effects


@torch.no_grad()
def naive_effects(
    model,
    hook_name: str,
    tokens: Tensor,
    ctx_idx_M: Tensor,
    pos_M: Tensor,
    delta_MD: Tensor,
    window: int | None,
) -> Effects:
    """Effects of ``h[ctx, pos] += delta`` at ``hook_name``, one full forward per intervention."""
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    ctx_len = tokens.shape[1]
    clean_logp: dict[int, Tensor] = {}
    kl, dloss, n = [], [], []
    for c, t, d in zip(ctx_idx_M.tolist(), pos_M.tolist(), delta_MD.to(device), strict=True):
        seq = tokens[c : c + 1]
        if c not in clean_logp:
            clean_logp[c] = F.log_softmax(model(seq).double(), -1)[0]

        def patch(h, hook, t=t, d=d):
            h = h.clone()
            h[0, t] += d.to(h.dtype)
            return h

        logits = model.run_with_hooks(seq, fwd_hooks=[(hook_name, patch)])
        logq = F.log_softmax(logits.double(), -1)[0]
        end = ctx_len - 1 if window is None else t + window
        logp = clean_logp[c][t:end]
        logq_w = logq[t:end]
        kl.append((logp.exp() * (logp - logq_w)).sum())
        nxt = seq[0, t + 1 : end + 1]
        dloss.append((logp.gather(-1, nxt[:, None]) - logq_w.gather(-1, nxt[:, None])).sum())
        n.append(end - t)
    return Effects(torch.stack(kl), torch.stack(dloss), torch.tensor(n))

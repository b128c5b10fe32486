"""Full-vocabulary KL, next-token loss and its gradient, without materializing full logits.

The next-token loss's gradient (:func:`loss_grad_x`, for the engine's attribution) is the
analytic ``∇_x log p`` of :func:`csae_bench.hooks.logprob_grads`, which the gradient pool uses too.

Two evaluation orders of the same KL, for two jobs:

* :func:`kl_and_losses` (the effect engine, no graph): the vocabulary in chunks with an online
  logsumexp, in float64 — memory ``rows × chunk``;
* :func:`mean_kl` (the CSAE's end-to-end term, differentiable): rows in chunks with a full
  ``log_softmax`` each, every chunk checkpointed so the backward pass recomputes its logits.

The unembedding is applied in vocabulary chunks; log-normalizers are accumulated with an online
logsumexp, so one pass over the vocabulary gives ``KL(p ‖ q)`` and both next-token losses, with
memory ``rows × chunk`` instead of ``rows × d_vocab`` (262k for Gemma-3).

With ``a`` the clean and ``b`` the intervened logits, ``KL = Σ_v p_v (a_v − b_v) − lse(a) + lse(b)``
and ``Σ_v p_v (a_v − b_v) = Σ_v e^{a_v − m} (a_v − b_v) / Σ_v e^{a_v − m}`` for a running max ``m``.
Logits are widened to float64 before anything else: a KL is ``E_p[a − b]`` minus a difference of
logsumexps, and an edit that shifts every logit by ``c`` makes both terms ~``c`` while the KL stays
small. Float32 entries (even with float64 sums) put ~3e-8 nats into each KL — the size of a weak
SAE's feature effects (the default run's ReLU: median 3e-7 nats), whose NCES then read −0.05
instead of −0.11; float32 sums ~1e-6 nats (+0.03). Float64 costs 2–7% of the engine's time once freed memory is not
faulted in again (:mod:`csae_bench.allocator`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from csae_bench.hooks import logprob_grads, rows_per_chunk, softcap, unembed


@dataclass
class ChunkedUnembed:
    """The model's unembedding, applied in vocabulary chunks (``W_U`` is ``[d_model, d_vocab]``)."""

    W_U_DV: Tensor
    b_U_V: Tensor
    softcap: float | None
    chunk: int = 32768

    @classmethod
    def from_model(cls, model, chunk: int = 32768) -> ChunkedUnembed:
        return cls(model.W_U.detach(), model.b_U.detach(), model.cfg.output_logits_soft_cap, chunk)

    @property
    def d_vocab(self) -> int:
        return self.W_U_DV.shape[1]

    def __post_init__(self) -> None:
        self._has_bias = bool(self.b_U_V.any())  # Gemma's b_U is all zeros: skip the add

    def logits(self, x_RD: Tensor, start: int, stop: int) -> Tensor:
        z = x_RD @ self.W_U_DV[:, start:stop]
        if self._has_bias:
            z += self.b_U_V[start:stop]
        return softcap(z, self.softcap)

    def token_logit(self, x_RD: Tensor, tokens_R: Tensor) -> Tensor:
        z = (x_RD * self.W_U_DV[:, tokens_R].T).sum(-1) + self.b_U_V[tokens_R]
        return softcap(z, self.softcap)

    def chunks(self):
        for start in range(0, self.d_vocab, self.chunk):
            yield start, min(start + self.chunk, self.d_vocab)


class _OnlineLSE:
    """Running logsumexp over chunks, per row, in float64."""

    def __init__(self, n: int, device) -> None:
        self.m = torch.full((n,), -torch.inf, dtype=torch.float64, device=device)
        self.s = torch.zeros(n, dtype=torch.float64, device=device)

    def update(self, z_RC: Tensor) -> tuple[Tensor, Tensor]:
        """Add a chunk; returns ``e^{z − m}`` ``[R, C]`` for the new running max and the factor
        ``[R]`` that rescales sums taken against the old one."""
        m_new = torch.maximum(self.m, z_RC.max(-1).values)
        scale = torch.exp(self.m - m_new)
        e = torch.exp(z_RC - m_new[:, None])
        self.s = self.s * scale + e.sum(-1)
        self.m = m_new
        return e, scale

    def value(self) -> Tensor:
        return self.m + torch.log(self.s)


@torch.no_grad()
def kl_and_losses(
    unembed: ChunkedUnembed,
    x_clean_UD: Tensor,
    x_int_RD: Tensor,
    next_tokens_R: Tensor | None,
    clean_index_R: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Per row: ``KL(p_clean ‖ p_int)`` and the clean and intervened next-token losses (``None``
    when ``next_tokens_R`` is ``None``), all float64 ``[R]``. Inputs are final normalized
    residuals (after ``ln_final``). ``clean_index_R`` maps each intervened row to its clean row in
    ``x_clean_UD`` (distinct clean rows are unembedded, and their logsumexp taken, once);
    ``None`` pairs rows one to one.

    Per vocabulary chunk, clean and intervened rows share one matmul (one read of ``W_U``);
    everything after it is float64 (module docstring)."""
    R, U = x_int_RD.shape[0], x_clean_UD.shape[0]
    if clean_index_R is None:
        clean_index_R = torch.arange(R, device=x_int_RD.device)
    lse_a, lse_b = _OnlineLSE(U, x_int_RD.device), _OnlineLSE(R, x_int_RD.device)
    t = torch.zeros(R, dtype=torch.float64, device=x_int_RD.device)
    x_both = torch.cat([x_clean_UD, x_int_RD.to(x_clean_UD.dtype)])
    for start, stop in unembed.chunks():
        z = unembed.logits(x_both, start, stop).double()
        a_UC, b_RC = z[:U], z[U:]
        e_a, scale_a = lse_a.update(a_UC)
        lse_b.update(b_RC)
        weighted = e_a[clean_index_R].mul_(a_UC[clean_index_R].sub_(b_RC))
        t = t * scale_a[clean_index_R] + weighted.sum(-1)
    la, lb = lse_a.value()[clean_index_R], lse_b.value()
    kl = (t / lse_a.s[clean_index_R] - la + lb).clamp(min=0.0)
    if next_tokens_R is None:
        return kl, None, None
    loss_a = la - unembed.token_logit(x_clean_UD[clean_index_R], next_tokens_R).double()
    loss_b = lb - unembed.token_logit(x_int_RD, next_tokens_R).double()
    return kl, loss_a, loss_b


@torch.no_grad()
def loss_grad_x(unembed: ChunkedUnembed, x_RD: Tensor, next_tokens_R: Tensor) -> Tensor:
    """``∂ loss / ∂ x`` per row for the next-token loss ``lse(z) − z_y`` with
    ``z = softcap(x W_U + b)``: ``−∇_x log p(y)`` (:func:`csae_bench.hooks.logprob_grads`, the one
    analytic gradient, which the gradient pool uses too), in row chunks of bounded logits."""
    out_RD = torch.empty_like(x_RD)
    step = rows_per_chunk(unembed.d_vocab)
    for start in range(0, len(x_RD), step):
        rows = slice(start, start + step)
        dx_RSD, _ = logprob_grads(
            x_RD[rows], unembed.W_U_DV, unembed.b_U_V, unembed.softcap, next_tokens_R[rows, None]
        )
        out_RD[rows] = -dx_RSD[:, 0]
    return out_RD


def _kl_rows(
    clean_x_RD: Tensor, spliced_x_RD: Tensor, W_U_DV: Tensor, b_U_V: Tensor, cap: float | None
) -> Tensor:
    """Summed ``KL(p_clean ‖ p_spliced)`` over a chunk of rows, over the full vocabulary."""
    clean_logp = torch.log_softmax(unembed(clean_x_RD, W_U_DV, b_U_V, cap)[0], dim=-1)
    spliced_logp = torch.log_softmax(unembed(spliced_x_RD, W_U_DV, b_U_V, cap)[0], dim=-1)
    return (clean_logp.exp() * (clean_logp - spliced_logp)).sum()


def mean_kl(model, clean_x_ND: Tensor, spliced_x_ND: Tensor) -> Tensor:
    """Mean per-row ``KL(p_clean ‖ p_spliced)`` of final residuals (after ``ln_final``), in row
    chunks; with a graph, each chunk is checkpointed so that the backward pass recomputes its
    logits instead of keeping ``N × d_vocab`` of them alive. The unembedding enters detached: only
    the path to the spliced residual carries gradients."""
    W_U_DV, b_U_V = model.W_U.detach(), model.b_U.detach()
    cap = model.cfg.output_logits_soft_cap
    step = rows_per_chunk(W_U_DV.shape[1])
    total = spliced_x_ND.new_zeros(())
    for start in range(0, len(spliced_x_ND), step):
        rows = slice(start, start + step)
        args = (clean_x_ND[rows], spliced_x_ND[rows], W_U_DV, b_U_V, cap)
        if spliced_x_ND.requires_grad:
            total = total + checkpoint(_kl_rows, *args, use_reentrant=False)
        else:
            total = total + _kl_rows(*args)
    return total / len(spliced_x_ND)

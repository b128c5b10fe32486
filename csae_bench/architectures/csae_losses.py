"""The CSAE's causal terms (docs/csae.md): the Fisher faithfulness loss from a :class:`GradientPool`,
the exact end-to-end KL it approximates, cheap Fisher NCES estimates for the verification loop,
and the sensitive directions used to re-initialize causally dead features.

They live next to the architecture that trains with them (:mod:`csae_bench.architectures.csae`)
and build only on the layers below it: the gradient pool (:mod:`csae_bench.activations`), the
model-side helpers (:mod:`csae_bench.hooks`) and the one full-vocabulary KL
(:mod:`csae_bench.interventions.kl`).

Notation: ``h`` the residual at the hook, ``ĥ`` the SAE reconstruction, ``g`` a sampled-token
gradient ``∇_h Σ_{t'} log p(y_{t'})`` (see :mod:`csae_bench.activations.gradient_pool`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from csae_bench.activations.gradient_pool import (
    GradientError,
    check_finite,
    frozen,
    suffix_start,
)
from csae_bench.hooks import final_residual, non_bos_mask
from csae_bench.interventions.kl import mean_kl


def _check_batch(acts_BD: Tensor, grads_BSD: Tensor, **others: Tensor) -> None:
    if acts_BD.ndim != 2 or grads_BSD.ndim != 3:
        raise GradientError(
            f"Expected acts [B, D] and grads [B, S, D]; got {tuple(acts_BD.shape)} and {tuple(grads_BSD.shape)}."
        )
    B, D = acts_BD.shape
    if grads_BSD.shape[0] != B or grads_BSD.shape[2] != D:
        raise GradientError(
            f"grads {tuple(grads_BSD.shape)} do not match acts {tuple(acts_BD.shape)}: "
            "sample both from the same GradientPool."
        )
    for name, t in others.items():
        if t.shape != acts_BD.shape:
            raise GradientError(
                f"{name} has shape {tuple(t.shape)}, expected {tuple(acts_BD.shape)} like acts."
            )


def fisher_faithfulness(acts_BD: Tensor, recon_BD: Tensor, grads_BSD: Tensor) -> Tensor:
    """``½ · mean_b mean_s (g_bs · (h_b − ĥ_b))²``: the second-order estimate of the output KL
    (summed over the later positions) caused by replacing ``h`` with ``ĥ`` at one position,
    averaged over tokens. Differentiable in ``recon_BD``; costs one batched dot product."""
    _check_batch(acts_BD, grads_BSD, recon=recon_BD)
    err_BD = acts_BD - recon_BD
    proj_BS = torch.einsum("bsd,bd->bs", grads_BSD.to(err_BD.dtype), err_BD)
    loss = 0.5 * proj_BS.square().mean()
    if not torch.isfinite(loss):
        check_finite(acts=acts_BD, recon=recon_BD, grads=grads_BSD)
        raise GradientError(
            "The Fisher term overflowed with finite inputs; the reconstruction error is too large."
        )
    return loss


@torch.no_grad()
def mean_fisher_factor(
    grads_NSD: Tensor,
    energy: float = 0.999,
    normalize: bool = False,
    clip_quantile: float | None = None,
) -> Tensor:
    """``L [D, R]`` with ``L Lᵀ ≈ F̄ = mean_{n,s} g_ns g_nsᵀ``, the pool's average Fisher matrix,
    keeping the fewest eigen-directions that hold ``energy`` of its trace (``B·D·R`` per step).

    ``clip_quantile``: cap each token's share — a token whose Fisher trace ``mean_s ‖g_ns‖²``
    exceeds that quantile of the pool's is scaled down to it. The per-token traces are heavy-tailed
    (on the embedded model the top token of a 1,143-token pool held 10% of the total, 200× the
    median), so without the cap a handful of tokens decide the metric's shape: adding one context
    to the pool changed ``F̂`` by 53% (6-9% with the cap at 0.95 or 0.99).

    ``normalize``: scale ``F̄`` to mean eigenvalue 1 (``F̄ · D / tr F̄``). Only its shape is kept —
    which directions the model is sensitive to, and how much more than to others — so a squared
    error under it is on the same footing as the plain squared error in any units, for any model."""
    if grads_NSD.ndim != 3 or len(grads_NSD) == 0:
        raise GradientError(
            f"Expected pool gradients [N, S, D] with N >= 1; got {tuple(grads_NSD.shape)}."
        )
    check_finite(grads=grads_NSD)
    g_NSD = grads_NSD.double()
    if clip_quantile is not None and clip_quantile < 1:
        trace_N = g_NSD.square().sum(-1).mean(-1)
        cap = torch.quantile(trace_N, clip_quantile)
        g_NSD = g_NSD * (cap / trace_N.clamp_min(1e-30)).clamp(max=1.0).sqrt()[:, None, None]
    g_MD = g_NSD.reshape(-1, g_NSD.shape[-1])
    fisher_DD = g_MD.T @ g_MD / len(g_MD)
    evals_R, evecs_DR = torch.linalg.eigh(fisher_DD)  # ascending
    evals_R, evecs_DR = evals_R.flip(0).clamp_min(0), evecs_DR.flip(1)
    total = evals_R.sum()
    if not total > 0:
        raise GradientError(
            "The gradient pool's Fisher matrix is zero: the gradients carry no signal "
            "(check the hook and that the pool was harvested from this model)."
        )
    cum = evals_R.cumsum(0) / total
    r = min(
        int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype)).item()) + 1, len(evals_R)
    )
    if normalize:
        evals_R = evals_R * (len(evals_R) / total)
    return (evecs_DR[:, :r] * evals_R[:r].sqrt()).float()


def metric_faithfulness(err_BD: Tensor, factor_DR: Tensor) -> Tensor:
    """``½ · mean_b δ_bᵀ F δ_b`` with ``F = L Lᵀ`` (``L = factor_DR``): the errors ``δ = h − ĥ``
    under a Fisher metric. With the pool's raw ``F̄`` this is the second-order estimate of the output
    KL in nats; with the normalized one (:func:`mean_fisher_factor`) a Fisher-shaped squared error."""
    if err_BD.ndim != 2 or factor_DR.ndim != 2 or err_BD.shape[1] != factor_DR.shape[0]:
        raise GradientError(
            f"err [B, D] and factor [D, R] do not match: {tuple(err_BD.shape)} vs "
            f"{tuple(factor_DR.shape)}."
        )
    loss = 0.5 * (err_BD @ factor_DR.to(err_BD.dtype)).square().sum(-1).mean()
    if not torch.isfinite(loss):
        check_finite(err=err_BD)
        raise GradientError(
            "The Fisher term overflowed with finite inputs; the reconstruction error is too large."
        )
    return loss


def end_to_end_kl(
    model, hook_name: str, tokens_BT: torch.LongTensor, sae_forward: Callable[[Tensor], Tensor]
) -> Tensor:
    """Exact mean ``KL(p_clean ‖ p_spliced)`` over the non-BOS positions of ``tokens_BT``, where
    ``sae_forward`` (``[N, D] → [N, D]``, the non-BOS residuals of the batch) replaces ``h`` at every
    non-BOS position. Differentiable with respect to the SAE parameters (not the model's: the model
    is frozen while the graph is built). Clean logits are computed under ``no_grad``; the prefix
    runs once; the 262k-vocab unembedding and KL are chunked and checkpointed."""
    if tokens_BT.ndim != 2:
        raise GradientError(f"tokens must be [batch, context], got shape {tuple(tokens_BT.shape)}.")
    start = suffix_start(model, hook_name)
    device = next(model.parameters()).device
    tokens_BT = tokens_BT.to(device)
    keep_BT = non_bos_mask(model, tokens_BT)
    if not keep_BT.any():
        raise GradientError("tokens hold no non-BOS position to measure the KL at.")
    with frozen(model):
        with torch.no_grad():
            h_BTD = model(tokens_BT, stop_at_layer=start)
            clean_x_ND = final_residual(model, h_BTD, start)[keep_BT]
        recon_ND = sae_forward(h_BTD[keep_BT])
        if recon_ND.shape != (int(keep_BT.sum()), h_BTD.shape[-1]):
            raise GradientError(
                f"sae_forward returned shape {tuple(recon_ND.shape)}; it must map "
                f"[N, D] residuals to [N, D] reconstructions (N={int(keep_BT.sum())})."
            )
        spliced_BTD = h_BTD.masked_scatter(keep_BT[..., None], recon_ND.to(h_BTD.dtype))
        spliced_x_ND = final_residual(model, spliced_BTD, start)[keep_BT]
        kl = mean_kl(model, clean_x_ND, spliced_x_ND)
    if not torch.isfinite(kl):
        check_finite(reconstruction=recon_ND)
        raise GradientError(
            "The end-to-end KL is not finite; the reconstruction pushes the model out of range."
        )
    return kl


@torch.no_grad()
def spliced_kl(
    model, hook_name: str, tokens_BT: torch.LongTensor, sae_forward: Callable[[Tensor], Tensor]
) -> float:
    """:func:`end_to_end_kl` without a graph, as a float: the exact metric the causal term targets."""
    return float(end_to_end_kl(model, hook_name, tokens_BT, sae_forward))


def _random_unit_FD(n: int, d: int, generator: torch.Generator, like: Tensor) -> Tensor:
    u = torch.randn(n, d, generator=generator, device=generator.device, dtype=torch.float32)
    return (u / u.norm(dim=-1, keepdim=True)).to(device=like.device, dtype=like.dtype)


@torch.no_grad()
def fisher_nces(
    feature_acts_BF: Tensor,
    W_dec_FD: Tensor,
    grads_BSD: Tensor,
    generator: torch.Generator,
    chunk_rows: int = 512,
    control: str = "sampled",
) -> tuple[Tensor, Tensor]:
    """Cheap second-order NCES per feature: ``(nces_F, n_active_F)``.

    ``E_i`` = mean over the tokens where feature ``i`` is active (``f > 0``) of
    ``½ mean_s (g · f_i d_i)²`` — the Fisher estimate of the effect of zero-ablating it;
    ``R_i`` = the same for a seeded random unit direction ``u_i`` (one per feature) of equal norm
    ``‖f_i d_i‖``. ``NCES_i = (E_i − R_i)/(E_i + R_i)``; NaN (and count 0) where never active.
    Decoder norms need not be 1 (the product ``f_i d_i`` is what counts).

    ``control="expected"`` replaces the one sampled ``u_i`` by the exact average over uniformly
    random unit directions, ``E_u[(g·u)²] = ‖g‖²/D`` — the same control without its sampling
    noise (``generator`` unused), steadier for keep/re-initialize decisions on few tokens.
    """
    if control not in ("sampled", "expected"):
        raise GradientError(f"control must be 'sampled' or 'expected', got {control!r}.")
    B, F = feature_acts_BF.shape
    if W_dec_FD.ndim != 2 or W_dec_FD.shape[0] != F:
        raise GradientError(
            f"W_dec {tuple(W_dec_FD.shape)} does not match {F} features of feature_acts."
        )
    if grads_BSD.ndim != 3 or grads_BSD.shape[0] != B or grads_BSD.shape[2] != W_dec_FD.shape[1]:
        raise GradientError(
            f"grads {tuple(grads_BSD.shape)} do not match feature_acts "
            f"{tuple(feature_acts_BF.shape)} and W_dec {tuple(W_dec_FD.shape)}."
        )
    check_finite(feature_acts=feature_acts_BF, W_dec=W_dec_FD, grads=grads_BSD)
    W_dec_FD = W_dec_FD.float()
    dec_norm_sq_F = W_dec_FD.square().sum(-1)
    U_FD = _random_unit_FD(F, W_dec_FD.shape[1], generator, W_dec_FD)
    E_F = W_dec_FD.new_zeros(F)
    R_F = W_dec_FD.new_zeros(F)
    n_active_F = torch.zeros(F, dtype=torch.long, device=W_dec_FD.device)
    for start in range(0, B, chunk_rows):
        f_bF = feature_acts_BF[start : start + chunk_rows].float()
        g_bSD = grads_BSD[start : start + chunk_rows].float()
        active_bF = f_bF > 0
        fsq_bF = f_bF.square() * active_bF
        E_F += 0.5 * (torch.einsum("bsd,fd->bsf", g_bSD, W_dec_FD).square().mean(1) * fsq_bF).sum(0)
        if control == "sampled":
            ctrl_bF = torch.einsum("bsd,fd->bsf", g_bSD, U_FD).square().mean(1)
        else:
            ctrl_bF = (g_bSD.square().sum(-1).mean(1) / g_bSD.shape[-1])[:, None]
        R_F += 0.5 * (ctrl_bF * fsq_bF).sum(0) * dec_norm_sq_F
        n_active_F += active_bF.sum(0)
    n = n_active_F.clamp(min=1).float()
    E_F, R_F = E_F / n, R_F / n
    nces_F = (E_F - R_F) / (E_F + R_F)
    nces_F[n_active_F == 0] = float("nan")
    return nces_F, n_active_F


@torch.no_grad()
def sensitive_directions(acts_BD: Tensor, recon_BD: Tensor, grads_BSD: Tensor, n: int) -> Tensor:
    """``[n, D]`` unit directions along which the SAE errs where the model is sensitive, to
    re-initialize causally dead features' decoder rows.

    Each token's error ``ε_b = h_b − ĥ_b`` is weighted by its Fisher error
    ``w_b = ½ mean_s (g_bs · ε_b)²``; the directions are the top principal directions of the rows
    ``√w_b · ε_b/‖ε_b‖`` (orthonormal, signed to point along the weighted errors, since a feature
    with positive activation adds ``+d``). Past the rank of that matrix, the normalized errors of
    the tokens with the next-largest Fisher error fill the remaining rows.
    """
    _check_batch(acts_BD, grads_BSD, recon=recon_BD)
    check_finite(acts=acts_BD, recon=recon_BD, grads=grads_BSD)
    if n < 1:
        raise GradientError(f"n must be >= 1, got {n}.")
    err_BD = (acts_BD - recon_BD).float()
    w_B = 0.5 * torch.einsum("bsd,bd->bs", grads_BSD.float(), err_BD).square().mean(1)
    norm_B = err_BD.norm(dim=-1)
    ok_B = norm_B > 0
    if not ok_B.any() or not (w_B > 0).any():
        raise GradientError(
            "The SAE reconstructs this batch exactly (or the gradients are zero): no "
            "error direction to re-initialize toward; use random directions instead."
        )
    unit_BD = err_BD[ok_B] / norm_B[ok_B, None]
    w_B = w_B[ok_B]
    rows_BD = w_B.sqrt()[:, None] * unit_BD
    _, sv, Vh = torch.linalg.svd(rows_BD, full_matrices=False)
    rank = int((sv > sv[0] * 1e-6).sum())
    dirs = Vh[: min(n, rank)]
    sign = torch.sign(dirs @ rows_BD.sum(0))
    dirs = dirs * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]
    if len(dirs) < n:
        order = torch.argsort(w_B, descending=True)
        extra = unit_BD[order[: n - len(dirs)]]
        if len(extra) < n - len(dirs):
            raise GradientError(
                f"Asked for {n} directions but the batch has only {len(unit_BD)} tokens with "
                "an error; pass a larger batch."
            )
        dirs = torch.cat([dirs, extra])
    return dirs.to(acts_BD.dtype)

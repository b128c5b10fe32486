"""Gradient harvest for the CSAE's causal faithfulness term (docs/csae.md).

For every (non-BOS) token of a corpus, the pool stores the residual ``h`` at the hook and ``S``
gradients ``g_s = ∇_h Σ_{t'} log p(y_{s,t'})`` with next tokens ``y_{s,t'} ~ p(·|clean)`` sampled
from the clean model at every position ``t'`` of the context. The gradients depend only on the
clean model, so one harvest is shared by every SAE step and every SAE trained alongside.

Why the sum over positions is the right quantity. Perturbing ``h`` at position ``t`` by ``δ``
changes the predictions at all positions ``t' ≥ t``. To second order, the summed KL is
``½ Σ_{t'} δᵀ F_{t'} δ`` with ``F_{t'} = E_y[∇log p(y_{t'}) ∇log p(y_{t'})ᵀ]``. Since the ``y_{t'}``
are sampled independently given the clean context and ``E_y[∇ log p(y)] = 0``, the cross terms of
``(Σ_{t'} ∇ log p(y_{t'}) · δ)²`` vanish in expectation, so ``½ E[(g_s · δ)²]`` is an unbiased
estimate of that summed Fisher term — and one backward pass per sample gives ``g_s`` for every
position of the batch at once.

Speed. The model is run only from the hook onward (``start_at_layer``), up to the final residual
(after ``ln_final``) — the logits are never built with a graph. The gradient of ``log p(y)`` with
respect to the final residual ``x`` is analytic: ``s'_y W_U[:, y] − Σ_v p_v s'_v W_U[:, v]``
(``s'`` the derivative of the logit soft-cap, 1 without one). It is computed under ``no_grad`` in
row chunks that bound the materialized logits (262k-vocab models), then one vector-Jacobian
product per sample carries it back to ``h``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from csae_bench import hooks
from csae_bench.activations.harvest import ActivationError, progress
from csae_bench.hooks import final_residual, non_bos_mask, rows_per_chunk
from csae_bench.utils import atomic_path

logger = logging.getLogger(__name__)



class GradientError(ActivationError):
    """Gradients could not be harvested or used; the message says what to do."""


@dataclass
class GradientPool:
    """Activations and sampled-token gradients for the same tokens, row ``n`` of both aligned."""

    acts_ND: Tensor
    """Residual activations at the hook, BOS dropped, float32, CPU."""
    grads_NSD: Tensor
    """``S`` gradients ``g = ∇_h Σ_{t'} log p(y_{t'})`` per token, ``y`` sampled from the clean model."""
    hook_name: str = ""
    """The hook the pool was harvested at (provenance; checked by users of the pool)."""

    def __post_init__(self) -> None:
        if self.acts_ND.ndim != 2 or self.grads_NSD.ndim != 3:
            raise GradientError(
                f"GradientPool needs acts [N, D] and grads [N, S, D]; got {tuple(self.acts_ND.shape)} "
                f"and {tuple(self.grads_NSD.shape)}."
            )
        n, d = self.acts_ND.shape
        if self.grads_NSD.shape[0] != n or self.grads_NSD.shape[2] != d:
            raise GradientError(
                f"GradientPool rows do not align: acts {tuple(self.acts_ND.shape)} vs grads "
                f"{tuple(self.grads_NSD.shape)} (expected grads [{n}, S, {d}])."
            )
        check_finite(acts=self.acts_ND, grads=self.grads_NSD)

    @property
    def n_tokens(self) -> int:
        return self.acts_ND.shape[0]

    @property
    def n_samples(self) -> int:
        return self.grads_NSD.shape[1]

    @property
    def d_in(self) -> int:
        return self.acts_ND.shape[1]

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A random batch ``(acts_BD, grads_BSD)`` of aligned rows (drawn with replacement)."""
        if batch_size < 1:
            raise GradientError(f"batch_size must be >= 1, got {batch_size}.")
        idx_B = torch.randint(0, self.n_tokens, (batch_size,), generator=generator)
        return self.acts_ND[idx_B], self.grads_NSD[idx_B]

    def save(self, path: str | Path) -> None:
        """Write the pool as one safetensors file, atomically."""
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file(
                {"acts": self.acts_ND.contiguous(), "grads": self.grads_NSD.contiguous()},
                str(tmp),
                metadata={"hook_name": self.hook_name, "format": "csae_bench.GradientPool/1"},
            )

    @classmethod
    def load(cls, path: str | Path) -> GradientPool:
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise GradientError(
                f"No gradient pool at {path}; harvest one with harvest_gradient_pool()."
            )
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "acts" not in f.keys() or "grads" not in f.keys():
                raise GradientError(
                    f"{path} is not a GradientPool file (needs 'acts' and 'grads')."
                )
            return cls(
                f.get_tensor("acts"), f.get_tensor("grads"), hook_name=meta.get("hook_name", "")
            )


def check_finite(**tensors: Tensor) -> None:
    """Raise a :class:`GradientError` naming every non-finite tensor among ``tensors``."""
    bad = [
        f"{name} ({int((~torch.isfinite(t)).sum())} of {t.numel()} values)"
        for name, t in tensors.items()
        if not torch.isfinite(t).all()
    ]
    if bad:
        raise GradientError(
            "Non-finite values in "
            + ", ".join(bad)
            + ". Check the model dtype (use float32 on CPU), "
            "the SAE's reconstruction, and that the activations come from the same hook as the gradients."
        )


def suffix_start(model, hook_name: str) -> int:
    """:func:`csae_bench.hooks.resume_layer` (the first block after the residual-stream hook
    ``hook_name``), raising :class:`GradientError`."""
    return hooks.resume_layer(model, hook_name, error=GradientError)


@contextlib.contextmanager
def frozen(model) -> Iterator[None]:
    """Build graphs through ``model`` without its parameters as leaves (no weight gradients are
    computed or accumulated); restores each parameter's ``requires_grad`` afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@torch.no_grad()
def sampled_logprob_grads(
    model, x_ND: Tensor, n_samples: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``(dx_SND, y_NS)``: ``∇_x log p(y_s)`` at final residuals ``x_ND`` for the sampled next
    tokens ``y_s ~ p(·|x)`` (also returned), analytically (:func:`csae_bench.hooks.logprob_grads`),
    in row chunks so at most ``MAX_LOGIT_ELEMENTS`` logits exist."""
    W_U_DV = model.W_U
    out_SND = x_ND.new_empty(n_samples, *x_ND.shape)
    y_NS = torch.empty(len(x_ND), n_samples, dtype=torch.long, device=x_ND.device)
    step = rows_per_chunk(W_U_DV.shape[1])
    for start in range(0, len(x_ND), step):
        rows = slice(start, start + step)
        dx_RSD, y_NS[rows] = hooks.logprob_grads(
            x_ND[rows],
            W_U_DV,
            model.b_U,
            model.cfg.output_logits_soft_cap,
            n_samples=n_samples,
            generator=generator,
        )
        out_SND[:, rows] = dx_RSD.transpose(0, 1)
    return out_SND, y_NS


def harvest_gradient_pool(
    model,
    hook_name: str,
    tokens: torch.LongTensor,
    n_samples: int = 4,
    batch_contexts: int = 4,
    seed: int = 0,
    show_progress: bool = True,
) -> GradientPool:
    """Harvest activations and ``n_samples`` sampled-token gradients per non-BOS token of
    ``tokens [n_ctx, ctx]`` at ``hook_name`` (see the module docstring for what ``g`` estimates).

    Cost per context batch: the prefix forward (no grad), one forward of the later blocks, the
    unembedding once (chunked, no grad), and one backward per sample through the later blocks.
    Deterministic for a given ``seed``.
    """
    if tokens.ndim != 2:
        raise GradientError(
            f"tokens must be [n_contexts, context_size], got shape {tuple(tokens.shape)}."
        )
    if n_samples < 1 or batch_contexts < 1:
        raise GradientError(
            f"n_samples and batch_contexts must be >= 1, got {n_samples} and {batch_contexts}."
        )
    start = suffix_start(model, hook_name)
    device = next(model.parameters()).device
    keep_all = non_bos_mask(model, tokens)
    n_keep, d_model = int(keep_all.sum()), model.cfg.d_model
    acts_ND = torch.empty(n_keep, d_model)
    grads_NSD = torch.empty(n_keep, n_samples, d_model)
    generator = torch.Generator(device=device).manual_seed(seed)
    filled = 0
    with progress("gradients") as bar, frozen(model):
        task = bar.add_task(
            f"Gradients at {hook_name}", total=len(tokens), info="", visible=show_progress
        )
        for b0 in range(0, len(tokens), batch_contexts):
            batch_BT = tokens[b0 : b0 + batch_contexts].to(device)
            keep_BT = keep_all[b0 : b0 + batch_contexts].to(device)
            with torch.no_grad():
                h_BTD = model(batch_BT, stop_at_layer=start)
            h_BTD = h_BTD.detach().requires_grad_(True)
            x_BTD = final_residual(model, h_BTD, start)
            B, T, D = x_BTD.shape
            dx_SND, _ = sampled_logprob_grads(
                model, x_BTD.detach().reshape(B * T, D), n_samples, generator
            )
            dx_SBTD = dx_SND.reshape(n_samples, B, T, D)
            n = int(keep_BT.sum())
            acts_ND[filled : filled + n] = h_BTD.detach()[keep_BT].float().cpu()
            for s in range(n_samples):
                (g_BTD,) = torch.autograd.grad(
                    x_BTD, h_BTD, grad_outputs=dx_SBTD[s], retain_graph=s < n_samples - 1
                )
                grads_NSD[filled : filled + n, s] = g_BTD[keep_BT].float().cpu()
            filled += n
            bar.update(task, advance=len(batch_BT), info=f"{filled * n_samples} token-samples")
    return GradientPool(acts_ND, grads_NSD, hook_name=hook_name)

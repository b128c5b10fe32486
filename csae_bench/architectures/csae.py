"""The Causal SAE (CSAE): a TopK SAE trained with a causal-faithfulness term and a verification loop.

Why TopK: at matched L0 TopK trains most reliably of SAELens's encoders (no sparsity coefficient
to tune, AuxK handles dead features), so the comparison with the TopK baseline isolates what the
causal parts add. Everything that is not new is SAELens's ``TopKTrainingSAE``.

The CSAE's loss is SAELens's TopK loss (MSE + AuxK) plus

* ``causal_coeff · ½ E_h[(h − ĥ)ᵀ F̂ (h − ĥ)]`` — the second-order expansion of the output KL when
  the residual ``h`` is replaced by the reconstruction ``ĥ``, with the Fisher matrix
  ``F = E_y[g gᵀ]`` (``g = ∇_h log p(y)``, next tokens sampled from the model) averaged over a
  shared gradient pool harvested once, and scaled to mean eigenvalue 1 (``fisher="mean"``, the
  default). It is applied to every training batch's own error, so it costs one ``[B, D] × [D, R]``
  product per step. ``fisher="per-token"`` instead pairs pool tokens with their own gradients
  (``fisher_faithfulness``): unbiased per token, but on the embedded model it overfit the small
  pool and *raised* the spliced KL (docs/csae.md), so it is kept only for comparison;
* optionally ``e2e_coeff * end_to_end_kl`` — the exact KL(clean ‖ spliced) (expensive: runs the
  rest of the model on every step; off by default, kept for the comparison with Braun et al.);

and, every ``verify_every`` steps, the trainer calls :meth:`CSAETrainingSAE.verify_and_reinit`:
cheap per-feature NCES estimates from the gradient pool; features below ``tau`` for ``patience``
checks in a row are re-initialized toward directions the model is sensitive to.

Each part switches off on its own (``causal_coeff=0``, ``e2e_coeff=0``, ``verify_every=0``) for the
ablation study. Activations fed to the SAE may be scaled by a constant (the trainer normalizes
the stream, as SAELens does); gradients live in the model's raw units, so the causal terms map
the reconstruction back with :attr:`CSAETrainingSAE.activation_scale`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from sae_lens.saes.topk_sae import (
    TopKSAE,
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from torch import Tensor
from typing_extensions import override

from csae_bench.architectures.options import TopKOptions, trainer_only
from csae_bench.architectures.surgery import reinit_features

logger = logging.getLogger(__name__)


def _causal() -> ModuleType:
    """``csae_bench.architectures.csae_losses``, imported on first use (it pulls in the gradient
    pool and the model-side helpers, which the registry does not need)."""
    from csae_bench.architectures import csae_losses

    return csae_losses


FISHER_MODES = ("mean", "per-token")


@dataclass
class CSAEOptions(TopKOptions):
    """``csae``: TopK options plus the causal parts, as the trainer sets them (the defaults are
    the CPU run's; :class:`CSAETrainingSAEConfig` documents each causal field in full)."""

    causal_coeff: float = 100.0
    """Weight of the Fisher causal-faithfulness term (0 = off). With ``fisher="mean"`` it is
    relative to the MSE (2 = the Fisher-shaped squared error weighs as much as the plain one), so it
    carries over between models. 100 lowered the spliced-in KL by 22% versus TopK at the same L0 in
    the sweep on the embedded model (explained variance 0.73 vs 0.88; 30: −11% at 0.84; 300: −33%
    at 0.50; docs/csae.md, ``python -m csae_bench.studies.csae_sweep``). With ``"per-token"`` it is
    in nats."""
    fisher: str = "mean"
    """``"mean"`` (the pool's mean Fisher matrix as a metric on every training token's error)
    or ``"per-token"`` (each pool token's own gradients; see ``CSAETrainingSAEConfig.fisher``)."""
    causal_batch_size: int = 256
    """``fisher="per-token"``: gradient-pool tokens per step for the causal term."""
    e2e_coeff: float = 0.0
    """Weight of the exact end-to-end KL term (0 = off; expensive)."""
    verify_every: int = 50
    """Steps between causal verification checks (0 = off)."""
    verify_tokens: int = 1024
    """Gradient-pool tokens per verification check."""
    tau: float = 0.5
    """NCES threshold of the verification loop."""
    patience: int = 2
    """Failed checks in a row before a feature is re-initialized."""
    max_reinit_frac: float = 0.02
    """At most this fraction of features re-initialized per verification check."""
    n_grad_samples: int = trainer_only(4)
    """Sampled next tokens per position in the gradient pool (when the trainer harvests it)."""
    grad_tokens: int = trainer_only(1024)
    """Tokens in the gradient pool (when the trainer harvests it; gradients are costly on CPU)."""

    @property
    def needs_gradient_pool(self) -> bool:
        """Whether a causal part that reads the gradient pool is on (the term or verification)."""
        return self.causal_coeff > 0 or self.verify_every > 0


@dataclass
class CSAEConfig(TopKSAEConfig):
    """Inference config of a CSAE: a TopK SAE (the causal parts only shape training)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "csae"


class CSAE(TopKSAE):
    """Inference CSAE: SAELens's TopK forward pass under its own architecture name."""

    cfg: CSAEConfig  # type: ignore[assignment]


@dataclass
class CSAETrainingSAEConfig(TopKTrainingSAEConfig):
    """Training config of a CSAE (SAELens's TopK training config plus the causal parts)."""

    causal_coeff: float = 100.0
    """Weight of the Fisher causal-faithfulness term (0 switches it off). ``fisher="mean"``: relative
    to the MSE — the term is ``½ δᵀ F̂ δ`` in the SAE's own (normalized) units with ``F̂`` the pool's
    Fisher scaled to mean eigenvalue 1, so 2 weighs the Fisher-shaped error like the plain squared
    error, whatever the model (100: see docs/csae.md for the sweep). ``"per-token"``: the term is a
    KL estimate in nats."""
    fisher: str = "mean"
    """How the term uses the gradient pool. ``"mean"``: the pool's average Fisher matrix
    ``F̄ = E[g gᵀ]`` (its shape) as a metric on every training token's error; the pool only has to
    estimate a ``D × D`` matrix. ``"per-token"``: each pool token's own gradients on that token's
    error (an unbiased per-token KL estimate, but only pool tokens enter the term, and a small pool
    is overfit: on the embedded model it raised the spliced KL, see docs/csae.md)."""
    fisher_energy: float = 0.999
    """``"mean"``: keep the top eigen-directions of ``F̄`` holding this fraction of its trace."""
    fisher_clip_quantile: float = 0.95
    """``"mean"``: cap every pool token's Fisher trace at this quantile of the pool's before
    averaging (1 = no cap): a few extreme tokens would otherwise set the metric's shape."""
    causal_batch_size: int = 256
    """``"per-token"``: tokens drawn from the gradient pool for the causal term on each step."""
    e2e_coeff: float = 0.0
    """Weight of the exact end-to-end KL term (0 = off; runs the model's later layers each step)."""
    e2e_contexts: int = 2
    """Contexts per step for the end-to-end KL term."""
    verify_every: int = 0
    """Steps between causal verification checks (0 = no verification loop)."""
    verify_tokens: int = 1024
    """Pool tokens used for one verification check."""
    tau: float = 0.5
    """NCES threshold below which a feature counts as failing a check."""
    patience: int = 2
    """Consecutive failed checks before a feature is re-initialized."""
    min_active: int = 8
    """Pool tokens a feature must be active on in a check to be judged at all."""
    max_reinit_frac: float = 0.02
    """At most this fraction of d_sae is re-initialized per check (lowest NCES first), so the
    loop refines the dictionary instead of churning it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if self.causal_coeff < 0 or self.e2e_coeff < 0:
            problems.append(
                f"causal_coeff={self.causal_coeff} and e2e_coeff={self.e2e_coeff} must be >= 0"
            )
        if self.verify_every < 0:
            problems.append(
                f"verify_every={self.verify_every} must be >= 0 (0 disables verification)"
            )
        if self.patience < 1:
            problems.append(f"patience={self.patience} must be >= 1")
        if not -1.0 < self.tau < 1.0:
            problems.append(f"tau={self.tau} must lie in (-1, 1), the range of NCES")
        if not 0 <= self.max_reinit_frac <= 1 or self.min_active < 1:
            problems.append(
                f"max_reinit_frac={self.max_reinit_frac} must be in [0, 1] and min_active >= 1"
            )
        if self.fisher not in FISHER_MODES:
            problems.append(f"fisher={self.fisher!r} must be one of {', '.join(FISHER_MODES)}")
        if not 0 < self.fisher_energy <= 1 or not 0 < self.fisher_clip_quantile <= 1:
            problems.append(
                f"fisher_energy={self.fisher_energy} and fisher_clip_quantile="
                f"{self.fisher_clip_quantile} must be in (0, 1]"
            )
        if self.causal_batch_size < 1 or self.verify_tokens < 1:
            problems.append("causal_batch_size and verify_tokens must be >= 1")
        if problems:
            raise ValueError("Invalid CSAE config: " + "; ".join(problems) + ".")

    @override
    @classmethod
    def architecture(cls) -> str:
        return "csae"


class CSAETrainingSAE(TopKTrainingSAE):
    """SAELens TopK training SAE + causal faithfulness + verification (see module docstring).

    Attach the shared gradient pool with :meth:`attach_causal` before training; without it the
    causal terms are skipped with a warning (the SAE still trains as TopK).
    """

    cfg: CSAETrainingSAEConfig  # type: ignore[assignment]

    def __init__(self, cfg: CSAETrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self.gradient_pool: Any | None = None
        self.generator: torch.Generator | None = None
        self.activation_scale: float = 1.0
        self._e2e: tuple[Any, str, Tensor] | None = None
        self.fisher_factor_DR: Tensor | None = None
        """``fisher="mean"``: ``L`` with ``F̂ ≈ L Lᵀ`` (normalized metric), built from the pool by attach_causal."""
        self._warned_no_pool = False
        self.last_reinit_F = torch.zeros(0, dtype=torch.long)
        """Features re-initialized by the latest verification check."""
        # Consecutive failed verification checks per feature (a buffer: saved in checkpoints).
        self.register_buffer(
            "failed_checks_F", torch.zeros(cfg.d_sae, dtype=torch.long, device=self.device)
        )

    def attach_causal(
        self,
        gradient_pool: Any | None,
        generator: torch.Generator,
        activation_scale: float = 1.0,
        e2e: tuple[Any, str, Tensor] | None = None,
    ) -> None:
        """Give the SAE what its causal terms need: the shared ``GradientPool``, a generator for
        sampling it, the constant the trainer multiplies activations by before the SAE sees them,
        and for ``e2e_coeff > 0`` a ``(model, hook_name, tokens [n_ctx, ctx])`` triple."""
        if self.cfg.e2e_coeff > 0 and e2e is None:
            raise ValueError(
                "e2e_coeff > 0 needs (model, hook_name, tokens) for the end-to-end KL term."
            )
        self.gradient_pool = gradient_pool
        self.generator = generator
        self.activation_scale = float(activation_scale)
        self._e2e = e2e
        self.fisher_factor_DR = None
        if gradient_pool is not None and self.cfg.fisher == "mean":
            factor = _causal().mean_fisher_factor(
                gradient_pool.grads_NSD,
                self.cfg.fisher_energy,
                normalize=True,
                clip_quantile=self.cfg.fisher_clip_quantile,
            )
            self.fisher_factor_DR = factor.to(self.device, self.dtype)

    def reconstruct_raw(self, acts_BD: Tensor) -> Tensor:
        """Reconstruction of raw-unit activations (scaled in, unscaled out)."""
        s = self.activation_scale
        return self.decode(self.encode(acts_BD * s)) / s

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        out = super().training_forward_pass(step_input)
        if self.cfg.causal_coeff > 0:
            if self.gradient_pool is None or self.generator is None:
                if not self._warned_no_pool:
                    logger.warning(
                        "CSAE has causal_coeff > 0 but no gradient pool attached; "
                        "the causal term is skipped (call attach_causal)."
                    )
                    self._warned_no_pool = True
            elif self.fisher_factor_DR is not None:
                # This very batch's error (in the SAE's units, like the MSE) under the pool's mean
                # Fisher metric: no extra forward pass, and every training token is held to it.
                err_BD = step_input.sae_in - out.sae_out
                term = _causal().metric_faithfulness(err_BD, self.fisher_factor_DR)
                self._add_loss(out, "causal_loss", self.cfg.causal_coeff * term)
            else:
                acts_BD, grads_BSD = self.gradient_pool.sample(
                    self.cfg.causal_batch_size, self.generator
                )
                acts_BD = acts_BD.to(self.device, self.dtype)
                grads_BSD = grads_BSD.to(self.device, self.dtype)
                term = _causal().fisher_faithfulness(
                    acts_BD, self.reconstruct_raw(acts_BD), grads_BSD
                )
                self._add_loss(out, "causal_loss", self.cfg.causal_coeff * term)
        if self.cfg.e2e_coeff > 0 and self._e2e is not None and self.generator is not None:
            model, hook_name, tokens = self._e2e
            idx = torch.randint(len(tokens), (self.cfg.e2e_contexts,), generator=self.generator)
            kl = _causal().end_to_end_kl(model, hook_name, tokens[idx], self.reconstruct_raw)
            self._add_loss(out, "e2e_kl_loss", self.cfg.e2e_coeff * kl)
        return out

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        state_dict.pop("failed_checks_F", None)  # training state, not part of the inference SAE
        super().process_state_dict_for_saving_inference(state_dict)

    @staticmethod
    def _add_loss(out: TrainStepOutput, name: str, value: Tensor) -> None:
        out.losses[name] = value
        out.loss = out.loss + value

    @torch.no_grad()
    def verify_and_reinit(self) -> dict[str, float]:
        """One verification check: estimate each feature's NCES on pool tokens, count failures
        (``NCES < tau``; features never active on the sample are not judged), and re-initialize
        features that failed ``patience`` checks in a row toward sensitive directions. Returns the
        check's statistics; ``reinit_indices`` (a LongTensor) is stored on ``self.last_reinit_F``
        so the trainer can reset their optimizer state."""
        self.last_reinit_F = torch.zeros(0, dtype=torch.long)
        if self.gradient_pool is None or self.generator is None:
            return {}
        causal = _causal()
        s = self.activation_scale
        acts_BD, grads_BSD = self.gradient_pool.sample(self.cfg.verify_tokens, self.generator)
        acts_BD = acts_BD.to(self.device, self.dtype)
        grads_BSD = grads_BSD.to(self.device, self.dtype)
        feats_BF = self.encode(acts_BD * s)
        # Effects are measured in raw units: a feature's raw contribution is f_i * (scaled d_i) / s.
        # NCES is invariant to how the norm is split, so pass unit directions with folded acts.
        norms_F = self.W_dec.norm(dim=-1).clamp_min(1e-8)
        if self.cfg.rescale_acts_by_decoder_norm:
            feats_BF = feats_BF / norms_F
        W_dec_FD = self.W_dec / norms_F[:, None]
        feats_BF = feats_BF * norms_F / s
        # The expected random-direction control (‖g‖²/D) instead of one sampled direction: the
        # same control without its sampling noise, steadier for keep/re-initialize decisions.
        nces_F, n_active_F = causal.fisher_nces(
            feats_BF, W_dec_FD, grads_BSD, self.generator, control="expected"
        )
        judged_F = torch.isfinite(nces_F) & (n_active_F.to(nces_F.device) >= self.cfg.min_active)
        failed_F = judged_F & (nces_F < self.cfg.tau)
        self.failed_checks_F[failed_F] += 1
        self.failed_checks_F[judged_F & ~failed_F] = 0
        due_F = torch.nonzero(self.failed_checks_F >= self.cfg.patience).flatten()
        cap = int(self.cfg.max_reinit_frac * self.cfg.d_sae)
        reinit_F = due_F[torch.argsort(nces_F[due_F])[:cap]]  # lowest NCES first
        if len(reinit_F):
            recon_BD = self.reconstruct_raw(acts_BD)
            dirs_ND = causal.sensitive_directions(acts_BD, recon_BD, grads_BSD, len(reinit_F))
            self._reinit_features(reinit_F[: len(dirs_ND)], dirs_ND.to(self.device, self.dtype))
            self.failed_checks_F[reinit_F] = 0
        self.last_reinit_F = reinit_F.cpu()
        mean = nces_F[judged_F].mean().item() if judged_F.any() else float("nan")
        return {
            "nces_mean": mean,
            "judged": int(judged_F.sum()),
            "failed": int(failed_F.sum()),
            "reinitialized": len(reinit_F),
        }

    def _reinit_features(self, idx_N: Tensor, dirs_ND: Tensor) -> None:
        """Point features ``idx_N`` at directions ``dirs_ND`` (:func:`.surgery.reinit_features`:
        the decoder row at the mean decoder norm, the encoder column scaled like the mean encoder
        column, the encoder bias 0)."""
        reinit_features(self, idx_N, dirs_ND)

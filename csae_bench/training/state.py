"""One architecture's training state: its SAE, optimizer, sparsity controller, dead-feature
counters and generator, and the optimizer step that moves them (:class:`SAERunState`)."""

from __future__ import annotations

import time
from typing import Any

import torch
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput

from csae_bench.architectures import REGISTRY, build_training_sae
from csae_bench.precision import autocast, resolve_dtype
from csae_bench.training import dead_features
from csae_bench.training.checkpoint import CheckpointMismatchError, NonFiniteError
from csae_bench.training.config import TrainConfig
from csae_bench.training.schedule import lr_scheduler
from csae_bench.training.sparsity import L0Controller


class SAERunState:
    """One architecture's SAE, optimizer, controller and counters.

    ``index`` is the architecture's position in ``cfg.architectures``: the SAE's initialization
    and its generator (resampling, pool sampling) are seeded with ``cfg.seed * 1000 + index``,
    without touching torch's global RNG."""

    def __init__(self, arch: str, d_in: int, cfg: TrainConfig, index: int) -> None:
        self.arch = arch
        self.cfg = cfg
        self.steered = REGISTRY[arch].sparsity != "k"
        """Sparsity set by a penalty coefficient (ReLU/JumpReLU), not by k."""
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(cfg.seed * 1000 + index)
            self.sae = build_training_sae(arch, d_in, cfg.d_sae, **cfg.sae_options(arch))
        self.sae.train()
        self.optimizer = torch.optim.Adam(
            [p for p in self.sae.parameters() if p.requires_grad],
            lr=cfg.arch_lr.get(arch, cfg.lr),
            betas=(cfg.adam_beta1, 0.999),
        )
        self.scheduler = lr_scheduler(self.optimizer, cfg)
        self.generator = torch.Generator().manual_seed(cfg.seed * 1000 + index)
        self.dtype = resolve_dtype(cfg.dtype)
        """Matmul dtype of the forward (``torch.autocast``); parameters stay float32."""
        self.initial_coefficients: dict[str, float] = {
            name: float(getattr(c, "value", c)) for name, c in self.sae.get_coefficients().items()
        }
        """SAELens's sparsity coefficients of the SAE as built (``{"l1": …}``, ``{"l0": …}`` or {})."""
        self.controller: L0Controller | None = None
        if self.steered and cfg.calibrate_l0:
            (c0,) = self.initial_coefficients.values()
            self.controller = L0Controller(c0, cfg.target_l0, gain=cfg.controller_gain)
        self.steps_since_fired_F = torch.zeros(cfg.d_sae, dtype=torch.long)
        self.wall_s = 0.0
        self.last: dict[str, float] = {}
        self.n_resampled = 0
        self.n_reinit_causal = 0
        self.last_verification: dict[str, float] = {}
        """Statistics of the CSAE's latest verification check."""
        self.loss_curve: list[tuple[int, float, float]] = []
        """(step, total loss, MSE) every ``log_every`` steps."""

    @torch.no_grad()
    def calibrate_init(self, x_BD: torch.Tensor) -> None:
        """Data-dependent init on the first (normalized) batch ``x_BD [B, d_in]``, the same for
        every architecture where it applies: ``b_dec`` = the batch mean (as OpenAI/Anthropic
        initialize it), so reconstruction starts at the mean; ReLU/JumpReLU start at the target L0
        (:func:`~csae_bench.training.dead_features.calibrate_features`). The penalty's coefficient
        is then calibrated from there by the controller."""
        sae = self.sae
        sae.b_dec.data = x_BD.mean(0).to(sae.b_dec.dtype)
        dead_features.calibrate_features(self, torch.arange(self.cfg.d_sae), x_BD)

    def coefficients(self) -> dict[str, float]:
        """The sparsity coefficient for the next step, by SAELens's name (``{}`` for the TopK family)."""
        if self.controller is not None:
            (name,) = self.initial_coefficients
            return {name: self.controller.coefficient}
        return dict(self.initial_coefficients)

    def step(self, x_BD: torch.Tensor, step: int) -> TrainStepOutput:
        """Optimizer step ``step`` on the normalized batch ``x_BD [B, d_in]`` at the scheduler's
        learning rate, then the scheduler, the controller update and feature maintenance.

        Raises :class:`~csae_bench.training.checkpoint.NonFiniteError` (naming the SAE, the step
        and the loss terms) on a non-finite loss, before any parameter moves."""
        t0 = time.perf_counter()
        dead_F = self.steps_since_fired_F >= self.cfg.dead_window
        with autocast(self.dtype, x_BD.device):
            out = self.sae.training_forward_pass(
                TrainStepInput(
                    sae_in=x_BD,
                    coefficients=self.coefficients(),
                    dead_neuron_mask=dead_F,
                    n_training_steps=step,
                    is_logging_step=False,
                )
            )
        if not torch.isfinite(out.loss):
            terms = {k: float(v.detach()) for k, v in out.losses.items()}
            raise NonFiniteError(
                f"{self.arch}: non-finite loss at step {step} (terms {terms}). Nothing "
                "from this step was saved; lower lr or check the activations."
            )
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.sae.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            fired_BF = out.feature_acts > 0
            l0 = float(fired_BF.sum(-1).float().mean())
            self.steps_since_fired_F += 1
            self.steps_since_fired_F[fired_BF.any(0).cpu()] = 0
        if self.controller is not None:
            self.controller.frozen = step >= self.cfg.n_steps * (1 - self.cfg.freeze_frac)
            self.controller.update(l0)
        self.last = {
            "loss": float(out.loss.detach()),
            **{k: float(v.detach()) for k, v in out.losses.items()},
            "l0": l0,
            "dead_frac": float(dead_F.float().mean()),
        }
        if step % self.cfg.log_every == 0 or step + 1 == self.cfg.n_steps:
            self.loss_curve.append((step, self.last["loss"], self.last["mse_loss"]))
        dead_features.maintain(self, x_BD, out, step)
        self.wall_s += time.perf_counter() - t0
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint needs to continue this SAE bit for bit."""
        return {
            "sae": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "controller": self.controller.state_dict() if self.controller else None,
            "steps_since_fired_F": self.steps_since_fired_F.clone(),
            "generator": self.generator.get_state(),
            "wall_s": self.wall_s,
            "last": self.last,
            "n_resampled": self.n_resampled,
            "n_reinit_causal": self.n_reinit_causal,
            "loss_curve": list(self.loss_curve),
            "last_verification": dict(self.last_verification),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" not in state:
            raise CheckpointMismatchError(
                f"{self.arch}: the checkpoint predates the torch LR scheduler and cannot be "
                "continued exactly; delete it or pass resume=False."
            )
        self.scheduler.load_state_dict(state["scheduler"])
        if state["controller"] is not None:
            self.controller = L0Controller.from_state_dict(state["controller"])
        self.steps_since_fired_F = state["steps_since_fired_F"].clone()
        self.generator.set_state(state["generator"])
        self.wall_s = state["wall_s"]
        self.last = state["last"]
        self.n_resampled = state["n_resampled"]
        self.n_reinit_causal = state["n_reinit_causal"]
        self.loss_curve = [tuple(p) for p in state["loss_curve"]]
        self.last_verification = state["last_verification"]

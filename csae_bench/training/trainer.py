"""Train several SAE architectures alongside on one activation stream.

Every SAE sees the same batches in the same order (one iterator over ``source.batches``, each batch
given to every SAE), the same token budget, the same seed and the same optimizer schedule. Losses
are SAELens's own (``TrainingSAE.training_forward_pass``); this module only owns the loop:

* **Normalization.** Activations are multiplied by one constant so that their mean norm is
  ``sqrt(d_in)`` (SAELens's ``expected_average_only_in``), which makes coefficients transfer
  between models; the constant is folded into the saved weights, so saved SAEs take raw activations.
* **Matched L0.** TopK, CSAE and random-decoder use ``k = target_l0``. ReLU (L1) and JumpReLU (L0
  via STE) start at the target L0 (first-batch calibration of each feature's bias/threshold,
  :meth:`_Run.calibrate_init`) and then calibrate their coefficient online with
  :class:`~csae_bench.training.sparsity.L0Controller` toward ``target_l0``; the controller freezes
  for the last ``freeze_frac`` of training; the L0 reached is reported in ``training_summary.json``
  (``l0`` next to ``target_l0``) — it is steered, not guaranteed. JumpReLU passes the STE gradient
  to the encoder (``jumprelu_ste_to_input``, Anthropic's variant): with DeepMind's threshold-only
  gradient Adam moves thresholds ~lr per step and a 250-step CPU run ended at L0 447 for a target of 32.
* **Init.** ``b_dec`` starts at the first batch's mean for every architecture.
* **Dead features.** A feature is dead when it has not fired for ``dead_window`` steps. TopK-family
  SAEs get SAELens's AuxK loss on dead features; ReLU and JumpReLU get dead-feature resampling
  every ``resample_every`` steps (dead encoder/decoder rows pointed at the worst-reconstructed
  inputs' residuals, optimizer state reset). CSAE additionally re-initializes causally failing
  features (its verification loop, every ``verify_every`` steps).
* **Checkpoints.** Every ``checkpoint_every`` steps all SAEs, optimizers, controllers, dead
  counters and generators go to ``out_dir/checkpoint.safetensors`` (tensors + JSON, no pickle) atomically; ``resume=True`` continues
  the same run bit for bit. NaN/inf in activations or a loss stops training with the step and SAE
  named, before anything is written.
* **Outputs.** ``out_dir/<architecture>/`` is a SAELens-format SAE (``SAE.load_from_disk`` works;
  :func:`load_base_sae` gives SAEBench's ``BaseSAE``) plus ``training_summary.json``. An
  architecture whose folder is complete is skipped, so the command is resumable per SAE.

CPU defaults (see :class:`TrainConfig`): the embedded Gemma-3-270M at layer 6 (a middle layer:
18 layers, features there are neither token-level nor output-level; it is also cheap to reach,
``stop_at_layer=7``), 2048 features (3.2× expansion of d_model 640: wide enough for useful
features, narrow enough that five SAEs step in about half a second together on 2 cores), k = 32,
batch 1024 and 250k tokens (244 Adam steps at lr 1e-3). Measured with these defaults (held-out
eval split, mean-centred EV / L0 / dead fraction over the last 50 steps): relu 0.47 / 33 / 3%,
topk 0.94 / 32 / 17%, jumprelu 0.92 / 21 / 59%, csae 0.88 / 32 / 60%, random-decoder 0.30 / 32 / 4%;
single-threaded SAE time 84-152 s each on a machine shared with three other jobs.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from rich.console import Group
from rich.live import Live
from rich.table import Table
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput

from csae_bench.activations.harvest import ActivationSource, layer_of_hook, progress
from csae_bench.architectures import (
    TOPK_FAMILY,
    CSAETrainingSAE,
    build_training_sae,
    check_architecture,
)
from csae_bench.architectures.export import load_base_sae, to_base_sae
from csae_bench.errors import BadInputError
from csae_bench.training.checkpoint import (
    RUN_DEFINING_FIELDS,
    CheckpointMismatchError,
    NonFiniteError,
    load_checkpoint,
    save_checkpoint,
)
from csae_bench.training.sparsity import L0Controller
from csae_bench.utils import atomic_write_json, versions

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.safetensors"
LEGACY_CHECKPOINT_NAME = "checkpoint.pt"  # pickled (format 1): never read, see checkpoint.py
SUMMARY_NAME = "training_summary.json"
POOL_NAME = "gradient_pool.safetensors"

__all__ = [
    "CheckpointMismatchError",
    "NonFiniteError",
    "TrainConfig",
    "TrainingError",
    "load_base_sae",
    "mean_centred_explained_variance",
    "train_alongside",
    "to_base_sae",
]


class TrainingError(BadInputError, RuntimeError):
    """Training cannot proceed; the message says what to do."""


@dataclass
class TrainConfig:
    """Settings shared by every SAE trained alongside (defaults: CPU run on the embedded model)."""

    architectures: tuple[str, ...] = ("relu", "topk", "jumprelu", "csae", "random-decoder")
    """Architectures to train, by csae_bench name (see ``csae_bench.architectures.ARCHITECTURES``)."""
    d_sae: int = 2048
    """Features per SAE (same for all)."""
    train_tokens: int = 250_000
    """Training tokens per SAE (same stream for all; rounded down to whole batches)."""
    batch_size: int = 1024
    """Tokens per optimizer step."""
    lr: float = 1e-3
    """Adam learning rate (after warm-up, before decay)."""
    arch_lr: dict[str, float] = field(default_factory=dict)
    """Per-architecture learning rates overriding ``lr`` (published recipes tune them per architecture)."""
    adam_beta1: float = 0.9
    """Adam beta1 (Gemma Scope uses 0)."""
    seed: int = 0
    """Seed of initializations, resampling and pool sampling (the stream's own seed is the source's)."""
    target_l0: int = 32
    """Target active features per token: k for the TopK family; the calibration target otherwise."""
    hook_name: str = "blocks.6.hook_resid_post"
    """Hook the activations come from (recorded in every saved SAE)."""
    model_name: str = "google/gemma-3-270m"
    """Model name recorded in the saved SAEs (SAEBench's ``cfg.model_name``)."""
    checkpoint_every: int = 50
    """Steps between atomic checkpoints (0 = only at the end of an interrupted run)."""
    context_size: int | None = None
    """Context length of the token stream, recorded in the SAE metadata (None = read from the source)."""
    warmup_frac: float = 0.05
    """Fraction of steps with a linear learning-rate warm-up."""
    decay_frac: float = 0.2
    """Fraction of final steps with a linear learning-rate decay to 0."""
    grad_clip: float = 1.0
    """Gradient-norm clip per SAE (0 = off)."""
    normalize_activations: bool = True
    """Scale activations so their mean norm is sqrt(d_in) (folded into the saved weights)."""
    norm_batches: int = 8
    """Batches used to estimate the normalization constant."""
    dead_window: int = 50
    """Steps without firing after which a feature counts as dead."""
    resample_every: int = 50
    """ReLU/JumpReLU: steps between dead-feature resamplings (0 = never); none in the decay phase."""
    # ---- ReLU (L1)
    l1_coefficient: float = 2.0
    """ReLU: initial L1 coefficient (calibrated toward target_l0 when calibrate_l0)."""
    # ---- JumpReLU
    l0_coefficient: float = 0.05
    """JumpReLU: initial L0 coefficient (calibrated toward target_l0 when calibrate_l0)."""
    jumprelu_init_threshold: float = 0.1
    """JumpReLU: initial threshold (in normalized units)."""
    jumprelu_bandwidth: float = 0.05
    """JumpReLU: STE bandwidth."""
    jumprelu_ste_to_input: bool = True
    """JumpReLU: pass the L0 penalty's straight-through gradient to the encoder too (Anthropic's
    variant). With False (DeepMind's) only the threshold learns sparsity, and Adam moves it by
    about lr per step: far too slow to reach the target L0 in a short CPU run."""
    calibrate_l0: bool = True
    """ReLU/JumpReLU: steer the sparsity coefficient toward target_l0 (False = fixed coefficient)."""
    controller_gain: float = 0.03
    """ReLU/JumpReLU: controller gain (log-coefficient change per step per unit log L0 error)."""
    freeze_frac: float = 0.15
    """ReLU/JumpReLU: fraction of final steps with the coefficient frozen."""
    # ---- TopK family
    aux_loss_coefficient: float = 1 / 32
    """TopK family: weight of SAELens's AuxK dead-feature loss (OpenAI's 1/32)."""
    # ---- CSAE
    causal_coeff: float = 100.0
    """CSAE: weight of the Fisher causal-faithfulness term (0 = off). With ``fisher="mean"`` it is
    relative to the MSE (2 = the Fisher-shaped squared error weighs as much as the plain one), so it
    carries over between models. 100 lowered the spliced-in KL by 22% versus TopK at the same L0 in
    the sweep on the embedded model (explained variance 0.73 vs 0.88; 30: −11% at 0.84; 300: −33%
    at 0.50; docs/csae.md, ``python -m csae_bench.studies.csae_sweep``). With ``"per-token"`` it is in nats."""
    fisher: str = "mean"
    """CSAE: ``"mean"`` (the pool's mean Fisher matrix as a metric on every training token's error)
    or ``"per-token"`` (each pool token's own gradients; see ``CSAETrainingSAEConfig.fisher``)."""
    causal_batch_size: int = 256
    """CSAE, ``fisher="per-token"``: gradient-pool tokens per step for the causal term."""
    e2e_coeff: float = 0.0
    """CSAE: weight of the exact end-to-end KL term (0 = off; expensive)."""
    verify_every: int = 50
    """CSAE: steps between causal verification checks (0 = off)."""
    verify_tokens: int = 1024
    """CSAE: gradient-pool tokens per verification check."""
    tau: float = 0.5
    """CSAE: NCES threshold of the verification loop."""
    patience: int = 2
    """CSAE: failed checks in a row before a feature is re-initialized."""
    max_reinit_frac: float = 0.02
    """CSAE: at most this fraction of features re-initialized per verification check."""
    n_grad_samples: int = 4
    """CSAE: sampled next tokens per position in the gradient pool (when harvested here)."""
    grad_tokens: int = 1024
    """CSAE: tokens in the gradient pool (when harvested here; gradients are costly on CPU)."""
    heldout_tokens: int = 8192
    """Held-out tokens for the final explained variance / L0 (eval split when the model has a tokenizer)."""
    log_every: int = 5
    """Steps between progress-display updates."""
    show_progress: bool = True
    """Show the rich live display."""

    def __post_init__(self) -> None:
        self.architectures = tuple(self.architectures)
        if not self.architectures:
            raise ValueError(
                "architectures is empty: name at least one of relu, topk, jumprelu, csae, random-decoder."
            )
        for a in self.architectures:
            check_architecture(a)
        if len(set(self.architectures)) != len(self.architectures):
            raise ValueError(f"architectures has duplicates: {self.architectures}.")
        problems = []
        if self.d_sae < 1:
            problems.append(f"d_sae={self.d_sae} must be >= 1")
        if not 1 <= self.target_l0 <= self.d_sae:
            problems.append(f"target_l0={self.target_l0} must be in 1..d_sae={self.d_sae}")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} must be >= 1")
        if self.train_tokens < self.batch_size:
            problems.append(
                f"train_tokens={self.train_tokens} must be >= batch_size={self.batch_size}"
            )
        if not self.lr > 0:
            problems.append(f"lr={self.lr} must be > 0")
        if self.checkpoint_every < 0:
            problems.append(f"checkpoint_every={self.checkpoint_every} must be >= 0")
        if not (
            0 <= self.warmup_frac < 1
            and 0 <= self.decay_frac < 1
            and self.warmup_frac + self.decay_frac <= 1
        ):
            problems.append("warmup_frac and decay_frac must be in [0, 1) and sum to <= 1")
        if problems:
            raise ValueError("Invalid TrainConfig: " + "; ".join(problems) + ".")
        for a in self.arch_lr:
            if a not in self.architectures:
                raise ValueError(
                    f"arch_lr names {a!r}, which is not in architectures {self.architectures}."
                )
        layer_of_hook(self.hook_name)

    @property
    def n_steps(self) -> int:
        return self.train_tokens // self.batch_size

    def identity(self, d_in: int) -> dict[str, Any]:
        """What a checkpoint must match to be resumed by this config."""
        return {"d_in": d_in, **{k: getattr(self, k) for k in RUN_DEFINING_FIELDS}}


def mean_centred_explained_variance(acts_ND: torch.Tensor, recon_ND: torch.Tensor) -> float:
    """1 − Σ‖h−ĥ‖² / Σ‖h−mean(h)‖² (centred on the mean; SAEBench's own is centred on zero)."""
    resid = (acts_ND - recon_ND).pow(2).sum()
    total = (acts_ND - acts_ND.mean(0)).pow(2).sum()
    return float(1 - resid / total)


# ------------------------------------------------------------------------------- one SAE's state


class _Run:
    """One architecture's SAE, optimizer, controller and counters."""

    def __init__(self, arch: str, d_in: int, cfg: TrainConfig, index: int) -> None:
        self.arch = arch
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(cfg.seed * 1000 + index)
            self.sae = build_training_sae(arch, d_in, cfg.d_sae, **_arch_options(arch, cfg))
        self.sae.train()
        self.lr_scale = cfg.arch_lr.get(arch, cfg.lr) / cfg.lr
        self.optimizer = torch.optim.Adam(
            [p for p in self.sae.parameters() if p.requires_grad],
            lr=cfg.lr,
            betas=(cfg.adam_beta1, 0.999),
        )
        self.generator = torch.Generator().manual_seed(cfg.seed * 1000 + index)
        self.controller: L0Controller | None = None
        if arch in ("relu", "jumprelu") and cfg.calibrate_l0:
            c0 = cfg.l1_coefficient if arch == "relu" else cfg.l0_coefficient
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
        """Data-dependent init on the first batch, the same for every architecture where it applies:
        ``b_dec`` = the batch mean (as OpenAI/Anthropic initialize it), so reconstruction starts at
        the mean; ReLU/JumpReLU start at the target L0: each feature's JumpReLU threshold (ReLU: its
        encoder bias) is set so it fires on a ``target_l0 / d_sae`` fraction of the batch. The
        penalty's coefficient is then calibrated from there by the controller."""
        sae = self.sae
        sae.b_dec.data = x_BD.mean(0).to(sae.b_dec.dtype)
        self._calibrate_features(torch.arange(self.cfg.d_sae), x_BD)

    @torch.no_grad()
    def _calibrate_features(self, idx_N: torch.Tensor, x_BD: torch.Tensor) -> None:
        """ReLU/JumpReLU: set features ``idx_N`` to fire on a ``target_l0 / d_sae`` fraction of
        ``x_BD`` (JumpReLU: the threshold, with b_enc = 0; ReLU: b_enc)."""
        if self.arch not in ("relu", "jumprelu"):
            return
        sae = self.sae
        pre_BN = sae.process_sae_in(x_BD) @ sae.W_enc[:, idx_N]
        n = len(pre_BN)  # kthvalue, not quantile: quantile refuses inputs over 16M elements
        kth = min(n, max(1, math.ceil(n * (1 - self.cfg.target_l0 / self.cfg.d_sae))))
        cut_N = pre_BN.kthvalue(kth, dim=0).values
        if self.arch == "jumprelu":
            sae.threshold.data[idx_N] = cut_N.clamp_min(1e-3).to(sae.threshold.dtype)
            sae.b_enc.data[idx_N] = 0.0
        else:
            sae.b_enc.data[idx_N] = -cut_N.to(sae.b_enc.dtype)

    @property
    def coefficient_name(self) -> str | None:
        return {"relu": "l1", "jumprelu": "l0"}.get(self.arch)

    def coefficients(self) -> dict[str, float]:
        name = self.coefficient_name
        if name is None:
            return {}
        if self.controller is not None:
            return {name: self.controller.coefficient}
        return {name: self.cfg.l1_coefficient if self.arch == "relu" else self.cfg.l0_coefficient}

    def step(self, x_BD: torch.Tensor, step: int, lr: float) -> TrainStepOutput:
        t0 = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * self.lr_scale
        dead_F = self.steps_since_fired_F >= self.cfg.dead_window
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
        self._maintain(x_BD, out, step)
        self.wall_s += time.perf_counter() - t0
        return out

    def _maintain(self, x_BD: torch.Tensor, out: TrainStepOutput, step: int) -> None:
        """Dead-feature resampling (ReLU/JumpReLU) and the CSAE verification loop."""
        cfg = self.cfg
        in_decay = step >= cfg.n_steps * (1 - cfg.decay_frac)
        if (
            self.arch in ("relu", "jumprelu")
            and cfg.resample_every
            and (step + 1) % cfg.resample_every == 0
            and not in_decay
        ):
            dead_F = torch.nonzero(self.steps_since_fired_F >= cfg.dead_window).flatten()
            if len(dead_F):
                self._resample(dead_F, x_BD, out.sae_out.detach())
        if (
            isinstance(self.sae, CSAETrainingSAE)
            and cfg.verify_every
            and (step + 1) % cfg.verify_every == 0
            and not in_decay
        ):
            stats = self.sae.verify_and_reinit()
            reinit = getattr(self.sae, "last_reinit_F", torch.zeros(0, dtype=torch.long))
            if len(reinit):
                self._reset_optimizer_rows(reinit)
                self.steps_since_fired_F[reinit] = 0
                self.n_reinit_causal += len(reinit)
            if stats:
                self.last_verification = {"step": step, **stats}

    @torch.no_grad()
    def _resample(self, dead_F: torch.Tensor, x_BD: torch.Tensor, recon_BD: torch.Tensor) -> None:
        """Point dead features at the residuals of the worst-reconstructed inputs of this batch
        (Anthropic's resampling, simplified): unit decoder rows at the mean alive norm, encoder
        columns 0.2× the mean alive encoder norm, threshold/bias set to fire at the target rate,
        Adam state reset."""
        sae = self.sae
        resid_BD = x_BD - recon_BD
        err_B = resid_BD.pow(2).sum(-1)
        n = min(len(dead_F), len(x_BD))
        picks = torch.multinomial(
            err_B / err_B.sum(), n, replacement=False, generator=self.generator
        )
        dirs_ND = resid_BD[picks]
        dirs_ND = dirs_ND / dirs_ND.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        idx = dead_F[:n]
        alive = torch.ones(sae.cfg.d_sae, dtype=torch.bool)
        alive[dead_F] = False
        dec_norm = sae.W_dec.norm(dim=-1)[alive].mean() if alive.any() else torch.tensor(1.0)
        enc_norm = sae.W_enc.norm(dim=0)[alive].mean() if alive.any() else torch.tensor(1.0)
        sae.W_dec.data[idx] = dirs_ND * dec_norm
        sae.W_enc.data[:, idx] = (dirs_ND * enc_norm * 0.2).T
        sae.b_enc.data[idx] = 0.0
        self._calibrate_features(idx, x_BD)  # fire again at the target rate, not never
        self._reset_optimizer_rows(idx)
        self.steps_since_fired_F[idx] = 0
        self.n_resampled += n

    def _reset_optimizer_rows(self, idx_F: torch.Tensor) -> None:
        sae = self.sae
        for param, dim in (
            (sae.W_dec, 0),
            (sae.W_enc, 1),
            (sae.b_enc, 0),
            (getattr(sae, "threshold", None), 0),
        ):
            if param is None or param not in self.optimizer.state:
                continue
            for key in ("exp_avg", "exp_avg_sq"):
                self.optimizer.state[param][key].index_fill_(dim, idx_F, 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "sae": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
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
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
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


def _arch_options(arch: str, cfg: TrainConfig) -> dict[str, Any]:
    if arch == "relu":
        return {"l1_coefficient": cfg.l1_coefficient}
    if arch == "jumprelu":
        return {
            "l0_coefficient": cfg.l0_coefficient,
            "jumprelu_init_threshold": cfg.jumprelu_init_threshold,
            "jumprelu_bandwidth": cfg.jumprelu_bandwidth,
            "jumprelu_ste_to_input": cfg.jumprelu_ste_to_input,
        }
    opts: dict[str, Any] = {"k": cfg.target_l0, "aux_loss_coefficient": cfg.aux_loss_coefficient}
    if arch == "random-decoder":
        opts["decoder_seed"] = cfg.seed
    if arch == "csae":
        opts.update(
            causal_coeff=cfg.causal_coeff,
            fisher=cfg.fisher,
            causal_batch_size=cfg.causal_batch_size,
            e2e_coeff=cfg.e2e_coeff,
            verify_every=cfg.verify_every,
            verify_tokens=cfg.verify_tokens,
            tau=cfg.tau,
            max_reinit_frac=cfg.max_reinit_frac,
            patience=cfg.patience,
        )
    assert arch in TOPK_FAMILY
    return opts


# ------------------------------------------------------------------------------- the loop


def _lr_at(step: int, cfg: TrainConfig) -> float:
    n = cfg.n_steps
    warm = max(1, int(n * cfg.warmup_frac))
    decay_start = n - int(n * cfg.decay_frac)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if step >= decay_start:
        return cfg.lr * (n - step) / max(1, n - decay_start)
    return cfg.lr


def _activation_scale(source: ActivationSource, cfg: TrainConfig) -> float:
    if not cfg.normalize_activations:
        return 1.0
    norms = [
        b.norm(dim=-1).mean()
        for b in islice(
            source.batches(
                cfg.batch_size, cfg.batch_size * cfg.norm_batches, epoch_seed=cfg.seed + 7919
            ),
            cfg.norm_batches,
        )
    ]
    mean_norm = float(torch.stack(norms).mean())
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise NonFiniteError(
            f"Activation norms are {mean_norm}; check the model and hook {cfg.hook_name}."
        )
    return math.sqrt(source.d_in) / mean_norm


def _heldout_activations(
    model, source: ActivationSource, cfg: TrainConfig
) -> tuple[torch.Tensor, str]:
    from csae_bench.activations.harvest import harvest_activations

    ctx = source.tokens.shape[1]
    n_ctx = max(1, -(-cfg.heldout_tokens // ctx))
    if getattr(model, "tokenizer", None) is not None:
        try:
            from csae_bench.data import load_tokens

            toks = load_tokens(model.tokenizer, split="eval", context_size=ctx, n_contexts=n_ctx)
            return harvest_activations(model, cfg.hook_name, toks, show_progress=False)[
                : cfg.heldout_tokens
            ], "eval split"
        except Exception as err:  # a model without the embedded corpus' eval split: say so
            logger.warning(
                "No eval-split tokens for held-out activations (%s); using training batches.", err
            )
    logger.warning(
        "Held-out activations unavailable; final metrics use a training batch (labelled 'train')."
    )
    batch = next(
        source.batches(min(cfg.heldout_tokens, source.n_tokens), epoch_seed=cfg.seed + 104729)
    )
    return batch, "train"


def _display(runs: dict[str, _Run], step: int, n_steps: int) -> Table:
    table = Table(title=f"step {step}/{n_steps}", show_lines=False)
    for col in ("SAE", "loss", "mse", "other terms", "L0", "dead %", "coef", "s/step"):
        table.add_column(col, justify="right" if col != "SAE" else "left")
    for arch, run in runs.items():
        last = run.last
        other = ", ".join(
            f"{k.replace('_loss', '')}={v:.3g}"
            for k, v in last.items()
            if k.endswith("_loss") and k != "mse_loss"
        )
        coef = run.coefficients()
        table.add_row(
            arch,
            f"{last.get('loss', float('nan')):.4g}",
            f"{last.get('mse_loss', float('nan')):.4g}",
            other,
            f"{last.get('l0', float('nan')):.1f}",
            f"{100 * last.get('dead_frac', 0):.1f}",
            ", ".join(f"{k}={v:.3g}" for k, v in coef.items()) or "-",
            f"{run.wall_s / max(1, step):.3f}",
        )
    return table


def train_alongside(
    model,
    source: ActivationSource,
    cfg: TrainConfig,
    out_dir: Path,
    gradient_pool: Any | None = None,
    resume: bool = True,
    heldout_acts: torch.Tensor | None = None,
    stop_after_steps: int | None = None,
) -> dict[str, Path]:
    """Train ``cfg.architectures`` alongside on ``source`` and save each to ``out_dir/<arch>/``.

    Returns ``{architecture: folder}`` for every finished SAE (a SAELens-format folder plus
    ``training_summary.json``). Folders that already exist are skipped. ``gradient_pool`` (a
    ``GradientPool``) feeds the CSAE's causal terms; when it is None and a CSAE with causal parts
    is requested, one is harvested from the source's tokens (``cfg.grad_tokens``). ``heldout_acts``
    ``[N, d_in]`` are used for the final metrics (default: the eval split, when the model has a
    tokenizer). ``stop_after_steps`` checkpoints and returns early (time-boxed jobs; resume later).
    """
    out_dir = Path(out_dir)
    if source.hook_name != cfg.hook_name:
        raise TrainingError(
            f"The activation source is for {source.hook_name} but cfg.hook_name is "
            f"{cfg.hook_name}; make them agree."
        )
    done = {a: out_dir / a for a in cfg.architectures if (out_dir / a / SUMMARY_NAME).exists()}
    todo = [a for a in cfg.architectures if a not in done]
    for a in done:
        logger.info("%s already trained at %s; skipping.", a, done[a])
    if not todo:
        return done

    d_in = source.d_in
    runs = {a: _Run(a, d_in, cfg, cfg.architectures.index(a)) for a in todo}
    scale = _activation_scale(source, cfg)
    _attach_causal(runs, model, source, cfg, gradient_pool, scale, out_dir)

    ckpt_path = out_dir / CHECKPOINT_NAME
    start = 0
    if (out_dir / LEGACY_CHECKPOINT_NAME).exists():
        logger.warning(
            "Not reading %s: pickled checkpoints of older versions can run code when loaded. "
            "Training starts over; delete the file to silence this.",
            out_dir / LEGACY_CHECKPOINT_NAME,
        )
    if ckpt_path.exists() and resume:
        state = load_checkpoint(ckpt_path, cfg.identity(d_in))
        missing = [a for a in todo if a not in state["archs"]]
        if missing:
            raise CheckpointMismatchError(
                f"Checkpoint {ckpt_path} has no state for {missing}; "
                "delete it or pass resume=False."
            )
        for a in todo:
            runs[a].load_state_dict(state["archs"][a])
        start, scale = int(state["step"]), float(state["activation_scale"])
        logger.info("Resuming %s from step %d (%s).", ", ".join(todo), start, ckpt_path)

    def write_checkpoint(step: int) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "identity": cfg.identity(d_in),
                "step": step,
                "activation_scale": scale,
                "config": asdict(cfg),
                "archs": {a: r.state_dict() for a, r in runs.items()},
            },
        )

    n_steps = cfg.n_steps
    stream: Iterator[torch.Tensor] = islice(
        source.batches(cfg.batch_size, n_steps * cfg.batch_size), start, None
    )
    bar = progress("train")
    task = bar.add_task(f"Training {len(runs)} SAEs", total=n_steps, completed=start, info="")
    step = start
    with (
        Live(Group(bar, _display(runs, start, n_steps)), refresh_per_second=2, transient=False)
        if cfg.show_progress
        else _nullcontext() as live
    ):
        for step, batch in enumerate(stream, start=start):
            if not torch.isfinite(batch).all():
                raise NonFiniteError(
                    f"Non-finite activations in the batch of step {step} (hook "
                    f"{cfg.hook_name}); nothing from this step was saved."
                )
            x_BD = batch * scale
            if step == 0:
                for run in runs.values():
                    run.calibrate_init(x_BD)
            lr = _lr_at(step, cfg)
            for run in runs.values():
                run.step(x_BD, step, lr)
            bar.update(task, completed=step + 1)
            if live is not None and ((step + 1) % cfg.log_every == 0 or step + 1 == n_steps):
                live.update(Group(bar, _display(runs, step + 1, n_steps)))
            if (
                cfg.checkpoint_every
                and (step + 1) % cfg.checkpoint_every == 0
                and step + 1 < n_steps
            ):
                write_checkpoint(step + 1)
            if stop_after_steps is not None and step + 1 >= stop_after_steps and step + 1 < n_steps:
                write_checkpoint(step + 1)
                logger.info("Stopped after step %d; checkpoint at %s.", step + 1, ckpt_path)
                return done
    if heldout_acts is None:
        heldout_acts, heldout_on = _heldout_activations(model, source, cfg)
    else:
        heldout_on = "given"
    for arch, run in runs.items():
        done[arch] = _finalize(run, out_dir / arch, cfg, scale, heldout_acts, heldout_on, source)
    ckpt_path.unlink(missing_ok=True)
    return done


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _attach_causal(
    runs: dict[str, _Run],
    model,
    source: ActivationSource,
    cfg: TrainConfig,
    pool: Any | None,
    scale: float,
    out_dir: Path,
) -> None:
    run = runs.get("csae")
    if run is None:
        return
    needs_pool = cfg.causal_coeff > 0 or cfg.verify_every > 0
    if pool is None and needs_pool:
        from csae_bench.activations.gradient_pool import GradientPool, harvest_gradient_pool

        pool_path = out_dir / POOL_NAME
        if pool_path.exists():
            pool = GradientPool.load(pool_path)
        else:
            ctx = source.tokens.shape[1]
            n_ctx = max(1, -(-cfg.grad_tokens // ctx))
            logger.info("Harvesting a gradient pool of %d contexts for the CSAE.", n_ctx)
            pool = harvest_gradient_pool(
                model,
                cfg.hook_name,
                source.tokens[:n_ctx],
                n_samples=cfg.n_grad_samples,
                seed=cfg.seed,
                show_progress=cfg.show_progress,
            )
            pool.save(pool_path)  # kept next to the checkpoint so a resumed run reuses it
    pool_hook = getattr(pool, "hook_name", "")
    if pool is not None and pool_hook and pool_hook != cfg.hook_name:
        raise TrainingError(
            f"The gradient pool was harvested at {pool_hook}, not {cfg.hook_name}; "
            "harvest one at the training hook."
        )
    e2e = (model, cfg.hook_name, source.tokens) if cfg.e2e_coeff > 0 else None
    run.sae.attach_causal(pool, run.generator, activation_scale=scale, e2e=e2e)


@torch.no_grad()
def _finalize(
    run: _Run,
    folder: Path,
    cfg: TrainConfig,
    scale: float,
    heldout_ND: torch.Tensor,
    heldout_on: str,
    source: ActivationSource,
) -> Path:
    """Fold the normalization into a copy of the SAE, save it SAELens-style with metadata, measure
    it on held-out activations through the SAEBench export, write the summary; all atomically
    (a temporary folder renamed into place)."""
    sae = type(run.sae)(copy.deepcopy(run.sae.cfg))  # a fresh copy: no pool or model attached
    sae.load_state_dict(run.sae.state_dict())
    sae.eval()
    if scale != 1.0:
        sae.fold_activation_norm_scaling_factor(scale)
    meta = sae.cfg.metadata
    meta.model_name = cfg.model_name
    meta.hook_name = cfg.hook_name
    meta.hook_layer = layer_of_hook(cfg.hook_name)
    meta.context_size = cfg.context_size or int(source.tokens.shape[1])
    meta.prepend_bos = True
    meta.training_tokens = cfg.n_steps * cfg.batch_size
    meta.csae_bench_architecture = run.arch
    meta.activation_scale = scale

    base = to_base_sae(sae)
    feats_NF = base.encode(heldout_ND)
    recon_ND = base.decode(feats_NF)
    fired_F = (feats_NF > 0).any(0)
    summary = {
        "architecture": run.arch,
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name,
        "d_in": sae.cfg.d_in,
        "d_sae": cfg.d_sae,
        "target_l0": cfg.target_l0,
        "l0": float((feats_NF > 0).sum(-1).float().mean()),
        "explained_variance_mean_centred": mean_centred_explained_variance(heldout_ND, recon_ND),
        "mse_per_token": float((heldout_ND - recon_ND).pow(2).sum(-1).mean()),
        "metrics_on": heldout_on,
        "heldout_tokens": len(heldout_ND),
        "dead_fraction_train": float((run.steps_since_fired_F >= cfg.dead_window).float().mean()),
        "dead_window_steps": cfg.dead_window,
        "never_fired_fraction_heldout": float((~fired_F).float().mean()),
        "final_loss_terms": {k: v for k, v in run.last.items()},
        "loss_curve": run.loss_curve,
        "sparsity_coefficient": run.coefficients() or None,
        "resampled_features": run.n_resampled,
        "causal_reinitialized_features": run.n_reinit_causal,
        "last_verification": run.last_verification or None,
        "wall_seconds": run.wall_s,
        "train_tokens": cfg.n_steps * cfg.batch_size,
        "steps": cfg.n_steps,
        "seed": cfg.seed,
        "activation_scale": scale,
        "config": asdict(cfg),
        "versions": versions(),
    }
    tmp = folder.parent / f".{folder.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    sae.save_inference_model(tmp)
    atomic_write_json(tmp / SUMMARY_NAME, summary)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    logger.info(
        "%s: L0 %.1f, mean-centred EV %.3f, saved to %s",
        run.arch,
        summary["l0"],
        summary["explained_variance_mean_centred"],
        folder,
    )
    return folder

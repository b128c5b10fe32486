"""Settings of the ablation study (defaults: ≤ 25 minutes on 2 shared CPU cores)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PREFIX = "ablation"
"""Prefix of the study's bookkeeping files under ``--out`` (``ablation_config.json``, ...)."""
RANDOM_CONTROL = "zero+isotropic"
"""The original design's random-direction control as an ablation row: zero ablation measured against
an isotropic random direction of equal norm (instead of the other-feature control the study's other rows use)."""


@dataclass
class AblationConfig:
    """Settings of the ablation study (defaults: ≤ 25 minutes on 2 shared CPU cores)."""

    seeds: tuple[int, ...] = (0, 1)
    """Training seeds (each: its own activation stream, SAE inits and NCES feature sample)."""
    layer: int = 6
    """Layer of ``blocks.<layer>.hook_resid_post`` on the embedded Gemma-3-270M."""
    d_sae: int = 1024
    """Features per SAE."""
    target_l0: int = 32
    """k of TopK / CSAE / random-decoder: the L0 they are matched at."""
    train_tokens: int = 32_768
    """Training tokens per SAE."""
    batch_size: int = 256
    """Tokens per optimizer step."""
    context_size: int = 128
    """Tokens per context (training and eval)."""
    grad_tokens: int = 512
    """Tokens in the CSAE's gradient pool (one pool per seed, shared by the CSAE variants)."""
    n_grad_samples: int = 2
    """Sampled next tokens per pool position."""
    verify_every: int = 16
    """CSAE verification interval in steps (when on)."""
    eval_contexts: int = 8
    """Eval contexts (held-out split), the same for every seed, SAE and eval."""
    core_contexts: int = 4
    """Of those, contexts the core eval runs on (its full-vocabulary forwards dominate its cost)."""
    interventions: tuple[str, ...] = (
        "zero",
        "mean",
        "resample",
        "clamp:2",
        "clamp:-1",
        RANDOM_CONTROL,
    )
    """Intervention types compared (``zero+isotropic`` = zero ablation vs the isotropic control)."""
    type_saes: tuple[str, ...] = ("topk", "csae", "random-decoder")
    """SAEs evaluated under every intervention type."""
    n_features: int = 12
    """Features sampled per NCES run."""
    tokens_per_feature: int = 3
    """Active tokens per sampled feature."""
    effect_window: int = 4
    """NCES window W."""
    n_bootstrap: int = 500
    """Bootstrap resamples of the NCES confidence intervals."""
    variants: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "csae-no-causal-term": {"causal_coeff": 0.0},
            "csae-no-verification": {"verify_every": 0},
        }
    )
    """CSAE variants with one causal part off: name -> TrainConfig overrides."""

    @property
    def hook_name(self) -> str:
        from csae_bench.hooks import block_hook_name

        return block_hook_name(self.layer)

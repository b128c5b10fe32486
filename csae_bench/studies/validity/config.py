"""Settings of the validity study (issue 14) and the candidate metrics it judges.

The criteria are pre-declared in docs/validity.md; this module only names them: which SAEs are
trained and which are nulls, which sets (layer, seeds) are measured, and, per candidate metric,
its direction and its power rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFIX = "validity"
"""Prefix of the study's bookkeeping files under ``--out`` (``validity_config.json``, ...)."""
CHOICE_NAME = "validity_choice.json"
"""The selection set's choice, frozen under ``--out`` the first time it is made (the confirmation
reads it; nothing is re-chosen after the confirmation sets are seen)."""

SELECT, CONFIRM = "select", "confirm"


@dataclass(frozen=True)
class MetricSpec:
    """One candidate metric of docs/validity.md."""

    name: str
    label: str
    kind: Literal["nces_fw", "nces", "raw_kl", "kl_per_norm", "verified", "iia"]
    control: str | None = None
    """NCES control whose records the metric reads (None: probing)."""
    higher_is_better: bool = True
    relative_power: bool = False
    """Power rule (check 4): half-width ≤ this fraction of the trained SAEs' value (raw effects)
    instead of an absolute half-width."""
    simplicity: int = 0
    """Tie-break of the choice rule: lower is the simpler definition."""


@dataclass
class ValidityConfig:
    """Settings of the validity study (defaults: docs/validity.md's selection set)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Selection seeds (each: its own SAE inits and stream order; one harvest per layer)."""
    confirm_seeds: tuple[int, ...] = (3, 4, 5)
    """Fresh seeds of the confirmation sets (used once, after the choice)."""
    layer: int = 6
    """Selection layer (``blocks.<layer>.hook_resid_post`` of the embedded Gemma-3-270M)."""
    confirm_layer: int = 12
    """The second confirmation set's layer (the first is ``layer`` with ``confirm_seeds``)."""
    phase: str = SELECT
    """``select``: the selection set only; ``confirm``: also both confirmation sets."""
    trained: tuple[str, ...] = ("topk", "csae")
    """Trained SAEs judged (ReLU / JumpReLU are not: their L0 is steered, not matched)."""
    nulls: tuple[str, ...] = ("random-decoder", "permuted-decoder", "init", "pca")
    """Null SAEs, built on the same stream at the same d_sae and k."""
    init_null: str = "init"
    """The null that is TopK at initialization: the 0-token point of every snapshot series."""
    d_sae: int = 1024
    """Features per SAE (the default run's)."""
    target_l0: int = 32
    train_tokens: int = 2_097_152
    """Training tokens per SAE (512 steps of ``batch_size``: the default run's)."""
    harvest_tokens: int = 1_048_576
    """Harvested tokens per layer (the stream is replayed, reshuffled, to reach ``train_tokens``)."""
    batch_size: int = 4096
    context_size: int = 128
    corpus: str = "english"
    grad_tokens: int = 1024
    """Tokens of the CSAE's gradient pool (one per layer, shared by the seeds)."""
    n_snapshots: int = 5
    """Log-spaced training snapshots of each SAE (the last is the final SAE)."""
    eval_contexts: int = 64
    """Held-out eval contexts (the same for every seed and SAE)."""
    controls: tuple[str, ...] = ("data", "feature")
    """NCES controls measured; the first one's records also feed the raw-effect metrics (4, 5: the
    feature edits' KL, which no control changes)."""
    intervention: str = "zero"
    n_features: int = 256
    """NCES features per final SAE (aimed at a CI half-width ≤ 0.03 over 3 seeds)."""
    tokens_per_feature: int = 8
    snapshot_n_features: int = 64
    """NCES features per snapshot (time-box: snapshots only feed the Spearman of check 3)."""
    effect_window: int = 4
    n_bootstrap: int = 2000
    """Draws of the hierarchical bootstrap (seeds, then features, then tokens)."""
    bootstrap_seed: int = 0
    probing: bool = True
    """Run the causal probing eval (metric 6) on every final SAE."""
    probing_examples_per_class: int = 80
    probe_snapshots: bool = True
    """Probe the snapshots too (check 3 of the probing metrics needs them)."""

    def __post_init__(self) -> None:
        if self.phase not in (SELECT, CONFIRM):
            raise ValueError(f"phase={self.phase!r}: use {SELECT!r} or {CONFIRM!r}.")
        if self.init_null not in self.nulls:
            raise ValueError(f"init_null={self.init_null!r} is not one of nulls={self.nulls}.")
        if not self.controls:
            raise ValueError("controls is empty: name at least one NCES control.")
        if self.snapshot_n_features > self.n_features:
            raise ValueError("snapshot_n_features must not exceed n_features.")

    @property
    def saes(self) -> tuple[str, ...]:
        return (*self.trained, *self.nulls)

    def final_tokens(self, sae: str) -> int:
        """Training tokens of a final SAE (0: the init null)."""
        return 0 if sae == self.init_null else self.train_tokens

    def sets(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        """Set name -> (layer, seeds): the selection set, and in phase ``confirm`` both
        confirmation sets."""
        out = {"selection": (self.layer, tuple(self.seeds))}
        if self.phase == CONFIRM:
            out[f"confirm layer {self.layer}"] = (self.layer, tuple(self.confirm_seeds))
            out[f"confirm layer {self.confirm_layer}"] = (
                self.confirm_layer,
                tuple(self.confirm_seeds),
            )
        return out

    def metrics(self) -> list[MetricSpec]:
        """The candidate metrics of docs/validity.md, in its order."""
        first = self.controls[0]
        out = []
        for c in self.controls:
            # `feature` draws each SAE's control from its own decoder; the others are shared
            tag = "own-SAE control" if c == "feature" else "shared control"
            out += [
                MetricSpec(
                    f"nces_fw[{c}]", f"NCES freq-weighted ({tag} `{c}`)", "nces_fw", c, simplicity=3
                ),
                MetricSpec(f"nces[{c}]", f"NCES unweighted ({tag} `{c}`)", "nces", c, simplicity=2),
            ]
        out += [
            MetricSpec(
                "raw_kl",
                "raw effect: median KL (nats)",
                "raw_kl",
                first,
                relative_power=True,
                simplicity=0,
            ),
            MetricSpec(
                "kl_per_norm",
                "KL / ‖δ‖² (median)",
                "kl_per_norm",
                first,
                relative_power=True,
                simplicity=1,
            ),
        ]
        if self.probing:
            out += [
                MetricSpec(
                    "probing_verified",
                    "probing: fraction of tasks verified",
                    "verified",
                    simplicity=4,
                ),
                MetricSpec("iia", "IIA at the smallest k", "iia", simplicity=4),
            ]
        return out


POWER_ABS = 0.03
"""Check 4: per-SAE CI half-width ≤ 0.03 in the metric's units ..."""
POWER_REL = 0.10
"""... or, for raw effects, ≤ 10% of the trained SAEs' value."""
RHO_MIN = 0.6
"""Check 3: mean Spearman ρ over seeds ≥ 0.6 for every trained SAE."""
SD_FRACTION = 1 / 3
"""Check 2: reseed sd < one third of the smallest trained − null gap."""
LEVEL = 0.95
"""Two-sided level of every bootstrap CI."""

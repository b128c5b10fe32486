"""What one training run does: :class:`TrainConfig`, the settings shared by every SAE trained
alongside, with each architecture's own options nested under :attr:`TrainConfig.options`.

Per-architecture options (``k``'s companions, the L1 / L0 coefficients, JumpReLU's bandwidth, the
CSAE's causal terms) are the options dataclasses registered next to each architecture
(:func:`csae_bench.architectures.options_class`), as SAELens nests them in each SAE's training
config. Suite files, ``[train]`` tables and callers may still give them as flat keys
(``causal_coeff = 30``): :meth:`TrainConfig.from_flat` routes each key to the architectures that
have it, and :meth:`TrainConfig.to_flat` writes the same flat form back (training summaries and
checkpoints record it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from csae_bench.activations.harvest import layer_of_hook
from csae_bench.architectures import (
    ARCHITECTURES,
    DEFAULT_ARCHITECTURES,
    check_architecture,
    check_derived,
    options_class,
)
from csae_bench.errors import BadInputError
from csae_bench.training.checkpoint import RUN_DEFINING_FIELDS


class TrainingError(BadInputError, RuntimeError):
    """Training cannot proceed; the message says what to do."""


def default_options() -> dict[str, Any]:
    """Every registered architecture's options at their defaults."""
    return {arch: options_class(arch)() for arch in ARCHITECTURES}


@dataclass
class TrainConfig:
    """Settings shared by every SAE trained alongside (defaults: CPU run on the embedded model).

    Raises ``ValueError`` naming every bad field (sizes, fractions, duplicate architectures,
    ``arch_lr`` for an architecture not trained), :class:`~csae_bench.architectures.
    UnknownArchitectureError` for an unknown architecture, :class:`~csae_bench.architectures.
    MissingBaseArchitectureError` for ``permuted-decoder`` without ``topk`` and
    ``ActivationError`` for a hook name without a layer."""

    architectures: tuple[str, ...] = DEFAULT_ARCHITECTURES
    """Architectures to train, by csae_bench name (see ``csae_bench.architectures.REGISTRY``); the
    nulls among them (``permuted-decoder``, ``init``, ``pca``) are derived after training."""
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
    """Steps between atomic checkpoints (0 = only at the end of an interrupted run). These are
    resume state, deleted once training ends; the kept intermediate SAEs are ``n_snapshots``."""
    n_snapshots: int = 0
    """Training snapshots per SAE (what issue 14 calls "training checkpoints"; 0 = none, the
    validity study uses 5): SAELens-format copies of each SAE at ``n_snapshots`` log-spaced steps
    from ``max(1, n_steps/100)`` to ``n_steps``, the last one being the final SAE's weights, in
    ``<arch>/snapshots/tokens_<N, 12 digits>/`` (:mod:`csae_bench.training.snapshots`). At most
    ``n_steps``."""
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
    """Coefficient-steered SAEs (ReLU/JumpReLU): steps between dead-feature resamplings (0 =
    never); none in the decay phase."""
    calibrate_l0: bool = True
    """Coefficient-steered SAEs: steer the sparsity coefficient toward target_l0 (False = fixed)."""
    controller_gain: float = 0.03
    """Coefficient-steered SAEs: controller gain (log-coefficient change per step per unit log L0 error)."""
    freeze_frac: float = 0.15
    """Coefficient-steered SAEs: fraction of final steps with the coefficient frozen."""
    dtype: str = "float32"
    """Matmul precision of training steps (``float32``, ``bfloat16``, ``float16``, or ``auto``:
    bf16 where the hardware runs it natively). Mixed precision: the forward runs under
    ``torch.autocast``; master weights, Adam state, gradients and loss reductions stay float32.
    bf16 steps ran 1.8× (d_sae 2048) to 2.3× (d_sae 1024) faster than float32 on the AVX512-BF16
    development CPU (benchmarks/test_training_bench.py)."""
    heldout_tokens: int = 8192
    """Held-out tokens for the final explained variance / L0 (eval split when the model has a tokenizer)."""
    heldout_corpus: str = "embedded"
    """Corpus whose eval split gives those held-out tokens: the corpus the SAEs train on (the
    pipeline and the studies pass the run's ``corpus``; see :func:`csae_bench.data.load_corpus`)."""
    log_every: int = 5
    """Steps between progress-display updates."""
    show_progress: bool = True
    """Show the rich live display."""
    options: dict[str, Any] = field(default_factory=default_options)
    """Architecture name -> its options dataclass (``ReLUOptions``, ``CSAEOptions``...), one entry
    per registered architecture. A plain dict per architecture is accepted and converted; missing
    architectures get their defaults."""

    def __post_init__(self) -> None:
        self.architectures = tuple(self.architectures)
        if not self.architectures:
            raise ValueError(
                f"architectures is empty: name at least one of {', '.join(ARCHITECTURES)}."
            )
        for a in self.architectures:
            check_architecture(a)
        if len(set(self.architectures)) != len(self.architectures):
            raise ValueError(f"architectures has duplicates: {self.architectures}.")
        check_derived(self.architectures)
        self.options = self._built_options(self.options)
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
        if isinstance(self.n_snapshots, bool) or not isinstance(self.n_snapshots, int):
            problems.append(f"n_snapshots={self.n_snapshots!r} must be a whole number")
        elif self.batch_size >= 1 and not 0 <= self.n_snapshots <= max(self.n_steps, 1):
            problems.append(
                f"n_snapshots={self.n_snapshots} must be in 0..{max(self.n_steps, 1)} "
                "(the steps, train_tokens // batch_size)"
            )
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

    @staticmethod
    def _built_options(given: dict[str, Any]) -> dict[str, Any]:
        built = default_options()
        for arch, opts in given.items():
            cls = options_class(arch)  # an unknown architecture raises, listing the valid ones
            if isinstance(opts, dict):
                valid = [f.name for f in fields(cls)]
                unknown = sorted(set(opts) - set(valid))
                if unknown:
                    raise ValueError(
                        f"options[{arch!r}] has unknown keys {unknown}; "
                        f"{cls.__name__} fields: {', '.join(valid)}."
                    )
                opts = cls(**opts)
            elif not isinstance(opts, cls):
                raise ValueError(
                    f"options[{arch!r}] must be a {cls.__name__} or a dict, got {opts!r}."
                )
            built[arch] = opts
        return built

    # ------------------------------------------------------------------ the flat form

    @classmethod
    def flat_keys(cls) -> list[str]:
        """Every key :meth:`from_flat` accepts: the shared fields, each option field of any
        architecture, and the architecture names themselves (a table of that one's options)."""
        shared = [f.name for f in fields(cls) if f.name != "options"]
        option_keys = {f.name: None for a in ARCHITECTURES for f in fields(options_class(a))}
        return [*shared, *option_keys, *ARCHITECTURES]

    @classmethod
    def from_flat(cls, **settings: Any) -> TrainConfig:
        """A config from flat keys: shared fields by name, an option field (``causal_coeff``,
        ``aux_loss_coefficient``...) for every architecture that has it, and an architecture name
        mapping to a dict of that architecture's options (applied after the flat keys).

        Raises ``TypeError`` naming an unknown key (and the valid ones); otherwise as the
        constructor."""
        shared = {f.name for f in fields(cls)} - {"options"}
        kwargs: dict[str, Any] = {}
        options: dict[str, dict[str, Any]] = {a: {} for a in ARCHITECTURES}
        owners = {a: {f.name for f in fields(options_class(a))} for a in ARCHITECTURES}
        per_arch: dict[str, dict[str, Any]] = {}
        for key, value in settings.items():
            if key in shared:
                kwargs[key] = value
            elif key in ARCHITECTURES and isinstance(value, dict):
                per_arch[key] = dict(value)
            elif any(key in names for names in owners.values()):
                for arch, names in owners.items():
                    if key in names:
                        options[arch][key] = value
            else:
                raise TypeError(
                    f"TrainConfig has no setting {key!r}; valid keys: {', '.join(cls.flat_keys())}."
                )
        for arch, opts in per_arch.items():
            options[arch].update(opts)
        return cls(**kwargs, options=options)

    def to_flat(self, arch: str | None = None) -> dict[str, Any]:
        """The flat form :meth:`from_flat` reads: shared fields then every option field. An option
        that several architectures share (``aux_loss_coefficient``) takes ``arch``'s value when
        given, else the first registered architecture's."""
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        flat["arch_lr"] = dict(self.arch_lr)
        order = [arch, *ARCHITECTURES] if arch is not None else list(ARCHITECTURES)
        for a in reversed(order):
            opts = self.options[a]
            flat.update({f.name: getattr(opts, f.name) for f in fields(opts)})
        return flat

    # ------------------------------------------------------------------ derived

    @property
    def n_steps(self) -> int:
        """Optimizer steps: ``train_tokens // batch_size``."""
        return self.train_tokens // self.batch_size

    def sae_options(self, arch: str) -> dict[str, Any]:
        """Keyword arguments of ``arch``'s SAELens training config for this run."""
        return self.options[arch].sae_config(target_l0=self.target_l0, seed=self.seed)

    def identity(self, d_in: int) -> dict[str, Any]:
        """What a checkpoint must match to be resumed by this config."""
        return {"d_in": d_in, **{k: getattr(self, k) for k in RUN_DEFINING_FIELDS}}

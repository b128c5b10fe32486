"""The SAELens side of the registry: registering the new architectures and building training SAEs.

Importing this module registers ``csae`` and ``random-decoder`` in SAELens's registry (guarded, so
a re-import never raises SAELens's duplicate-name error); SAELens's own ``relu`` (``standard``),
``topk`` and ``jumprelu`` are already there. Afterwards ``SAE.load_from_disk`` and
``TrainingSAE.from_dict`` work for every architecture in :data:`csae_bench.architectures.REGISTRY`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    get_sae_training_class,
    register_sae_class,
    register_sae_training_class,
)

from csae_bench.architectures import REGISTRY, TOPK_FAMILY, saelens_name
from csae_bench.architectures.csae import CSAE, CSAEConfig, CSAETrainingSAE, CSAETrainingSAEConfig
from csae_bench.architectures.random_decoder import (
    RandomDecoderSAE,
    RandomDecoderSAEConfig,
    RandomDecoderTrainingSAE,
    RandomDecoderTrainingSAEConfig,
)


def register_with_saelens() -> None:
    """Register the CSAE and the random-decoder control with SAELens (idempotent)."""
    for name, inference, training in (
        ("csae", (CSAE, CSAEConfig), (CSAETrainingSAE, CSAETrainingSAEConfig)),
        (
            "random-decoder",
            (RandomDecoderSAE, RandomDecoderSAEConfig),
            (RandomDecoderTrainingSAE, RandomDecoderTrainingSAEConfig),
        ),
    ):
        if name not in SAE_CLASS_REGISTRY:
            register_sae_class(name, *inference)
        if name not in SAE_TRAINING_CLASS_REGISTRY:
            register_sae_training_class(name, *training)


register_with_saelens()


def training_config_class(name: str) -> type[Any]:
    """SAELens training-config dataclass for architecture ``name``.

    Raises :class:`~csae_bench.architectures.UnknownArchitectureError` for an unknown name."""
    return get_sae_training_class(saelens_name(name))[1]


def build_training_sae(name: str, d_in: int, d_sae: int, **options: Any) -> Any:
    """A fresh SAELens ``TrainingSAE`` of architecture ``name`` reading ``[..., d_in]`` activations
    into ``d_sae`` features, initialized from torch's global RNG.

    ``options`` are fields of that architecture's SAELens training config (``k``,
    ``l1_coefficient``, ``causal_coeff``...; :meth:`ArchitectureOptions.sae_config` builds them).
    Raises :class:`~csae_bench.architectures.UnknownArchitectureError` for an unknown name and
    ``ValueError`` for a null (not trained: :mod:`csae_bench.architectures.nulls` builds those),
    an unknown option (naming the valid fields), a non-positive ``d_in`` / ``d_sae``, or (TopK
    family) ``k`` outside ``1..d_sae``."""
    sae_cls, cfg_cls = get_sae_training_class(saelens_name(name))
    if not REGISTRY[name].trained:
        raise ValueError(
            f"{name} is a null the trainer derives, not a trainable SAE; build it with "
            "csae_bench.architectures.nulls or list it in the run's architectures."
        )
    if not isinstance(d_in, int) or d_in < 1:
        raise ValueError(f"d_in must be a positive int, got {d_in!r}.")
    if not isinstance(d_sae, int) or d_sae < 1:
        raise ValueError(f"d_sae must be a positive int, got {d_sae!r}.")
    valid = {f.name for f in fields(cfg_cls)} - {"d_in", "d_sae"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(
            f"Options {unknown} are not fields of the {name} training config; valid: {sorted(valid)}."
        )
    if name in TOPK_FAMILY:
        k = options.get("k", 100)
        if not isinstance(k, int) or not 1 <= k <= d_sae:
            raise ValueError(
                f"k={k!r} must be an int in 1..d_sae={d_sae} for the {name} architecture."
            )
    return sae_cls(cfg_cls(d_in=d_in, d_sae=d_sae, **options))

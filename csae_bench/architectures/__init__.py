"""SAE architectures, registered once, here, in SAELens's own registry.

User-facing names and what they are:

=================  ==============  ===========================================================
name               SAELens name    what
=================  ==============  ===========================================================
``relu``           ``standard``    ReLU SAE with an L1 penalty (SAELens ``StandardTrainingSAE``)
``topk``           ``topk``        TopK SAE with AuxK (SAELens ``TopKTrainingSAE``)
``jumprelu``       ``jumprelu``    JumpReLU SAE, L0 penalty via STE (SAELens ``JumpReLUTrainingSAE``)
``csae``           ``csae``        Causal SAE (new: :mod:`csae_bench.architectures.csae`)
``random-decoder`` ``random-decoder`` frozen random decoder control (new: :mod:`.random_decoder`)
=================  ==============  ===========================================================

Only the two new architectures are registered (the baselines are SAELens's); registration is
guarded so re-importing this module never raises SAELens's duplicate-name error. Once this package
is imported, ``SAE.load_from_disk`` / ``TrainingSAE.from_dict`` work for every architecture.
"""

from __future__ import annotations

from typing import Any

from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)

from csae_bench.architectures.csae import CSAE, CSAEConfig, CSAETrainingSAE, CSAETrainingSAEConfig
from csae_bench.architectures.random_decoder import (
    RandomDecoderSAE,
    RandomDecoderSAEConfig,
    RandomDecoderTrainingSAE,
    RandomDecoderTrainingSAEConfig,
)
from csae_bench.errors import BadInputError

ARCHITECTURES: tuple[str, ...] = ("relu", "topk", "jumprelu", "csae", "random-decoder")
"""Every architecture csae_bench trains, by its user-facing name."""

SAELENS_NAMES: dict[str, str] = {
    "relu": "standard",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "csae": "csae",
    "random-decoder": "random-decoder",
}
"""User-facing name -> SAELens registry name."""

FROM_SAELENS: dict[str, str] = {v: k for k, v in SAELENS_NAMES.items()}
"""SAELens registry name -> user-facing name."""

TOPK_FAMILY: frozenset[str] = frozenset({"topk", "csae", "random-decoder"})
"""Architectures whose sparsity is set exactly by k (matched L0 by construction)."""


class UnknownArchitectureError(BadInputError, ValueError):
    """An architecture name that csae_bench does not know."""


def _register() -> None:
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


_register()


def check_architecture(name: str) -> str:
    """Return ``name`` if it is a known architecture; raise listing the valid ones otherwise."""
    if name not in SAELENS_NAMES:
        hint = f" (did you mean {FROM_SAELENS[name]!r}?)" if name in FROM_SAELENS else ""
        raise UnknownArchitectureError(
            f"Unknown architecture {name!r}{hint}. Valid architectures: {', '.join(ARCHITECTURES)}."
        )
    return name


def saelens_name(name: str) -> str:
    """SAELens's registry name for a user-facing architecture name."""
    return SAELENS_NAMES[check_architecture(name)]


def training_config_class(name: str) -> type[Any]:
    """SAELens training-config dataclass for ``name``."""
    from sae_lens.registry import get_sae_training_class

    return get_sae_training_class(saelens_name(name))[1]


def build_training_sae(name: str, d_in: int, d_sae: int, **options: Any) -> Any:
    """A fresh SAELens ``TrainingSAE`` of architecture ``name``.

    ``options`` are fields of that architecture's SAELens training config (``k``, ``l1_coefficient``,
    ``causal_coeff``...); unknown ones raise, naming the valid fields. ``d_sae`` and (TopK family)
    ``k`` are checked so that a nonsensical size fails here with a clear message."""
    from dataclasses import fields

    from sae_lens.registry import get_sae_training_class

    sae_cls, cfg_cls = get_sae_training_class(saelens_name(name))
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


__all__ = [
    "ARCHITECTURES",
    "CSAE",
    "CSAETrainingSAE",
    "CSAETrainingSAEConfig",
    "FROM_SAELENS",
    "RandomDecoderSAE",
    "RandomDecoderTrainingSAE",
    "SAELENS_NAMES",
    "TOPK_FAMILY",
    "UnknownArchitectureError",
    "build_training_sae",
    "check_architecture",
    "saelens_name",
    "training_config_class",
]

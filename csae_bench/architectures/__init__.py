"""SAE architectures: the one registry of what csae_bench trains.

User-facing names and what they are:

=================  ==============  ========  ====================================================
name               SAELens name    sparsity  what
=================  ==============  ========  ====================================================
``relu``           ``standard``    ``l1``    ReLU SAE with an L1 penalty (SAELens ``StandardTrainingSAE``)
``topk``           ``topk``        ``k``     TopK SAE with AuxK (SAELens ``TopKTrainingSAE``)
``jumprelu``       ``jumprelu``    ``l0``    JumpReLU SAE, L0 penalty via STE (SAELens ``JumpReLUTrainingSAE``)
``csae``           ``csae``        ``k``     Causal SAE (new: :mod:`csae_bench.architectures.csae`)
``random-decoder`` ``random-decoder`` ``k``  frozen random decoder control (new: :mod:`.random_decoder`)
=================  ==============  ========  ====================================================

This module is the single source of that table (:data:`REGISTRY`; :data:`ARCHITECTURES`,
:data:`SAELENS_NAMES`, :data:`FROM_SAELENS` and :data:`TOPK_FAMILY` are views of it) and imports
neither torch nor SAELens, so the CLI and the suite reader can list architectures cheaply. Each
entry names the dataclass of its per-architecture training options (``k``'s companions, the L1 /
L0 coefficients, JumpReLU's bandwidth, the CSAE's causal terms), which lives next to the
architecture: :mod:`.options` for SAELens's own three, :mod:`.csae`, :mod:`.random_decoder`.

The two new architectures are registered in SAELens's own registry by :mod:`.saelens` (imported
by everything that builds or loads an SAE); once it is imported, ``SAE.load_from_disk`` and
``TrainingSAE.from_dict`` work for every architecture. The SAELens-side names
(:func:`build_training_sae`, :func:`training_config_class`, the CSAE and random-decoder classes)
are importable from here too; they load :mod:`.saelens` on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Literal

from csae_bench.errors import BadInputError


@dataclass(frozen=True)
class ArchitectureSpec:
    """One registry entry."""

    name: str
    """User-facing name (suite files, ``--architectures``, result folders)."""
    saelens_name: str
    """Name in SAELens's registry (``cfg.architecture()`` of the saved SAE)."""
    sparsity: Literal["k", "l1", "l0"]
    """How sparsity is set: ``k`` exactly (TopK family: matched L0 by construction), or a penalty
    coefficient (``l1`` / ``l0``) that the trainer steers toward the target L0."""
    options: str
    """``module:Class`` of the architecture's training-options dataclass (loaded on demand)."""


REGISTRY: dict[str, ArchitectureSpec] = {}
"""User-facing name -> :class:`ArchitectureSpec`, in the order architectures are listed."""


def register_architecture(spec: ArchitectureSpec) -> ArchitectureSpec:
    """Add ``spec`` to :data:`REGISTRY`. Raises ``ValueError`` on a duplicate name."""
    if spec.name in REGISTRY:
        raise ValueError(f"Architecture {spec.name!r} is already registered.")
    REGISTRY[spec.name] = spec
    return spec


for _spec in (
    ArchitectureSpec("relu", "standard", "l1", "csae_bench.architectures.options:ReLUOptions"),
    ArchitectureSpec("topk", "topk", "k", "csae_bench.architectures.options:TopKOptions"),
    ArchitectureSpec(
        "jumprelu", "jumprelu", "l0", "csae_bench.architectures.options:JumpReLUOptions"
    ),
    ArchitectureSpec("csae", "csae", "k", "csae_bench.architectures.csae:CSAEOptions"),
    ArchitectureSpec(
        "random-decoder",
        "random-decoder",
        "k",
        "csae_bench.architectures.random_decoder:RandomDecoderOptions",
    ),
):
    register_architecture(_spec)

ARCHITECTURES: tuple[str, ...] = tuple(REGISTRY)
"""Every architecture csae_bench trains, by its user-facing name."""

SAELENS_NAMES: dict[str, str] = {n: s.saelens_name for n, s in REGISTRY.items()}
"""User-facing name -> SAELens registry name."""

FROM_SAELENS: dict[str, str] = {v: k for k, v in SAELENS_NAMES.items()}
"""SAELens registry name -> user-facing name."""

TOPK_FAMILY: frozenset[str] = frozenset(n for n, s in REGISTRY.items() if s.sparsity == "k")
"""Architectures whose sparsity is set exactly by k (matched L0 by construction)."""


class UnknownArchitectureError(BadInputError, ValueError):
    """An architecture name that csae_bench does not know."""


def check_architecture(name: str) -> str:
    """Return ``name`` if it is a known architecture.

    Raises :class:`UnknownArchitectureError` listing the valid names (and the user-facing name
    when ``name`` is a SAELens name such as ``standard``)."""
    if name not in REGISTRY:
        hint = f" (did you mean {FROM_SAELENS[name]!r}?)" if name in FROM_SAELENS else ""
        raise UnknownArchitectureError(
            f"Unknown architecture {name!r}{hint}. Valid architectures: {', '.join(ARCHITECTURES)}."
        )
    return name


def saelens_name(name: str) -> str:
    """SAELens's registry name for a user-facing architecture name (raises as
    :func:`check_architecture`)."""
    return REGISTRY[check_architecture(name)].saelens_name


def options_class(name: str) -> type[Any]:
    """The training-options dataclass of architecture ``name`` (raises as :func:`check_architecture`)."""
    module, _, cls = REGISTRY[check_architecture(name)].options.partition(":")
    return getattr(import_module(module), cls)


# Names served by the SAELens-side module, loaded (and registered with SAELens) on first use.
_FROM_SAELENS_MODULE = {
    "CSAE": "csae_bench.architectures.csae",
    "CSAETrainingSAE": "csae_bench.architectures.csae",
    "CSAETrainingSAEConfig": "csae_bench.architectures.csae",
    "RandomDecoderSAE": "csae_bench.architectures.random_decoder",
    "RandomDecoderTrainingSAE": "csae_bench.architectures.random_decoder",
    "build_training_sae": "csae_bench.architectures.saelens",
    "register_with_saelens": "csae_bench.architectures.saelens",
    "training_config_class": "csae_bench.architectures.saelens",
}


def __getattr__(name: str) -> Any:
    module = _FROM_SAELENS_MODULE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import_module("csae_bench.architectures.saelens")  # registers csae / random-decoder
    return getattr(import_module(module), name)


__all__ = [
    "ARCHITECTURES",
    "CSAE",
    "CSAETrainingSAE",
    "CSAETrainingSAEConfig",
    "FROM_SAELENS",
    "REGISTRY",
    "RandomDecoderSAE",
    "RandomDecoderTrainingSAE",
    "SAELENS_NAMES",
    "TOPK_FAMILY",
    "ArchitectureSpec",
    "UnknownArchitectureError",
    "build_training_sae",
    "check_architecture",
    "options_class",
    "register_architecture",
    "register_with_saelens",
    "saelens_name",
    "training_config_class",
]

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
``permuted-decoder`` ``topk``      ``k``     null: the trained TopK with its decoder rows permuted (:mod:`.nulls`)
``init``           ``topk``        ``k``     null: the TopK SAE at initialization, never stepped (:mod:`.nulls`)
``pca``            ``topk``        ``k``     null: top-k principal directions, signed (:mod:`.nulls`)
=================  ==============  ========  ====================================================

``random-decoder`` and the three nulls are *controls* (:attr:`ArchitectureSpec.control`): results
show them marked and never rank them as contenders. The nulls are not trained: the trainer derives
them next to the trained SAEs (:mod:`csae_bench.training.nulls`) and saves them as SAELens TopK
SAEs, their csae_bench name in the folder's metadata (``csae_bench_architecture``), so every eval
and loader reads them unchanged. ``permuted-decoder`` is derived from the run's ``topk``
(:attr:`ArchitectureSpec.derived_from`), which must then be trained alongside
(:func:`check_derived`). The default run trains the architectures with
:attr:`ArchitectureSpec.in_default_run` (:data:`DEFAULT_ARCHITECTURES`).

This module is the single source of that table (:data:`REGISTRY`; :data:`ARCHITECTURES`,
:data:`DEFAULT_ARCHITECTURES`, :data:`TRAINED_ARCHITECTURES`, :data:`CONTROL_ARCHITECTURES`,
:data:`SAELENS_NAMES`, :data:`FROM_SAELENS` and :data:`TOPK_FAMILY` are views of it) and imports
neither torch nor SAELens, so the CLI and the suite reader can list architectures cheaply. Each
entry names the dataclass of its per-architecture training options (``k``'s companions, the L1 /
L0 coefficients, JumpReLU's bandwidth, the CSAE's causal terms), which lives next to the
architecture: :mod:`.options` for SAELens's own three, :mod:`.csae`, :mod:`.random_decoder`,
:mod:`.nulls`.

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
    control: bool = False
    """A control (null model): shown marked (``ctrl`` in the table, hollow / dashed in the plots),
    never a contender; the NCES separation flag compares the other SAEs against it."""
    trained: bool = True
    """Trained by the optimizer; False for the nulls the trainer derives without a step."""
    derived_from: str | None = None
    """The architecture this one is derived from after training (it must be in the same run)."""
    in_default_run: bool = True
    """Part of the default architecture list (:data:`DEFAULT_ARCHITECTURES`)."""


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
        control=True,
    ),
    ArchitectureSpec(
        "permuted-decoder",
        "topk",
        "k",
        "csae_bench.architectures.nulls:PermutedDecoderOptions",
        control=True,
        trained=False,
        derived_from="topk",
    ),
    ArchitectureSpec(
        "init",
        "topk",
        "k",
        "csae_bench.architectures.nulls:InitOptions",
        control=True,
        trained=False,
        in_default_run=False,  # the validity study's 0-token point; random-decoder covers "random"
    ),
    ArchitectureSpec(
        "pca",
        "topk",
        "k",
        "csae_bench.architectures.nulls:PCAOptions",
        control=True,
        trained=False,
    ),
):
    register_architecture(_spec)

ARCHITECTURES: tuple[str, ...] = tuple(REGISTRY)
"""Every architecture csae_bench trains, by its user-facing name."""

DEFAULT_ARCHITECTURES: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.in_default_run)
"""The architectures a run trains when it names none."""

TRAINED_ARCHITECTURES: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.trained)
"""Architectures the optimizer trains (the others are nulls derived by the trainer)."""

CONTROL_ARCHITECTURES: frozenset[str] = frozenset(n for n, s in REGISTRY.items() if s.control)
"""Controls (null models): shown, marked, never a contender."""

SAELENS_NAMES: dict[str, str] = {n: s.saelens_name for n, s in REGISTRY.items()}
"""User-facing name -> SAELens registry name."""

FROM_SAELENS: dict[str, str] = {}
"""SAELens registry name -> user-facing name (the first architecture registered under it: the
nulls saved as SAELens ``topk`` SAEs say which null they are in their metadata instead)."""
for _name, _saelens in SAELENS_NAMES.items():
    FROM_SAELENS.setdefault(_saelens, _name)

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


class MissingBaseArchitectureError(BadInputError, ValueError):
    """A derived architecture (``permuted-decoder``) requested without the one it derives from."""


def check_derived(architectures: tuple[str, ...] | list[str]) -> None:
    """Raise :class:`MissingBaseArchitectureError` when an architecture in ``architectures`` is
    derived from one that is not there (``permuted-decoder`` without ``topk``); unknown names are
    left to :func:`check_architecture`."""
    for name in architectures:
        base = REGISTRY[name].derived_from if name in REGISTRY else None
        if base is not None and base not in architectures:
            raise MissingBaseArchitectureError(
                f"Architecture {name!r} is derived from a trained {base!r}: add {base} to the "
                f"architectures (e.g. --architectures {base},{name})."
            )


def is_control(name: str) -> bool:
    """True for a registered control architecture (:attr:`ArchitectureSpec.control`); False for
    any other name, registered or not."""
    spec = REGISTRY.get(name)
    return spec is not None and spec.control


def architecture_of(saelens_arch: str, metadata: Any = None) -> str | None:
    """The csae_bench name of a saved SAE: its metadata's ``csae_bench_architecture`` when that is
    a registered architecture saved under ``saelens_arch`` (the nulls), else
    :data:`FROM_SAELENS`'s name for ``saelens_arch``; None when csae_bench does not know it."""
    named = getattr(metadata, "csae_bench_architecture", None)
    if named is None and isinstance(metadata, dict):
        named = metadata.get("csae_bench_architecture")
    if named in REGISTRY and REGISTRY[named].saelens_name == saelens_arch:
        return str(named)
    return FROM_SAELENS.get(saelens_arch)


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
    "CONTROL_ARCHITECTURES",
    "CSAE",
    "CSAETrainingSAE",
    "CSAETrainingSAEConfig",
    "DEFAULT_ARCHITECTURES",
    "FROM_SAELENS",
    "MissingBaseArchitectureError",
    "REGISTRY",
    "RandomDecoderSAE",
    "RandomDecoderTrainingSAE",
    "SAELENS_NAMES",
    "TOPK_FAMILY",
    "TRAINED_ARCHITECTURES",
    "ArchitectureSpec",
    "UnknownArchitectureError",
    "architecture_of",
    "build_training_sae",
    "check_architecture",
    "check_derived",
    "is_control",
    "options_class",
    "register_architecture",
    "register_with_saelens",
    "saelens_name",
    "training_config_class",
]

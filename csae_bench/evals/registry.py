"""The one registry of eval types: a dict and a decorator.

An eval module registers an :class:`EvalSpec` with ``@register_eval``; the runner finds it by its
``eval_type_id``. A new eval type is one module plus one import line in ``evals/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Direction = Literal["higher", "lower"]


@dataclass
class EvalContext:
    """Everything an eval needs besides the SAE and its own config.

    ``eval_tokens`` ``[n_ctx, ctx]`` come from the corpus's held-out eval split and start with BOS.
    """

    model: Any
    """The run's ``transformer_lens.HookedTransformer`` (harvest/core dtype); None with
    :attr:`model_fn` set. Read it through :meth:`run_model`."""
    hook_name: str
    eval_tokens: torch.Tensor
    device: str = "cpu"
    seed: int = 0
    model_name: str = "embedded"
    extra: dict[str, Any] = field(default_factory=dict)
    """Per-job facts (release name, corpus, SAE folder)."""
    model_fn: Callable[[], Any] | None = None
    """Returns the run's model (loaded on first call: evals that only intervene never load it)
    when :attr:`model` is None."""
    engine_model_fn: Callable[[], Any] | None = None
    """Returns the model the intervention engine runs (loaded on first call: only evals that
    intervene pay for it); None: :attr:`model`. See :meth:`intervention_model`."""
    cache: dict[str, Any] = field(default_factory=dict)
    """Shared by every eval job of one process (the runner passes the same dict to each): work that
    depends only on the model, hook and tokens — NCES's clean pass and loss gradients — is done
    once per run, not once per SAE."""

    def run_model(self) -> Any:
        """The run's model (the core eval's): :attr:`model`, or :attr:`model_fn`'s."""
        if self.model is None and self.model_fn is not None:
            return self.model_fn()
        return self.model

    def intervention_model(self) -> Any:
        """The model interventions run through: float32 by default whatever :attr:`model`'s
        dtype, because bf16's rounding swamps feature-sized effects (docs/precision.md)."""
        return self.engine_model_fn() if self.engine_model_fn is not None else self.run_model()


@dataclass(frozen=True)
class EvalSpec:
    """An eval type.

    ``run(ctx, sae, sae_id, config) -> BaseEvalOutput``: ``sae`` is a SAEBench ``BaseSAE``;
    ``config`` an instance of ``config_cls``; the output an instance of ``output_cls``.
    ``headline``: flat metric paths (``"category.metric"``) shown on the leaderboard, with
    their direction. ``make_config(ctx, overrides)`` builds the default config for a run.
    """

    eval_type_id: str
    config_cls: type
    output_cls: type
    run: Callable[..., Any]
    headline: dict[str, Direction]
    make_config: Callable[[EvalContext, dict[str, Any]], Any] | None = None
    description: str = ""
    hook_kinds: tuple[str, ...] = ("hook_resid_post",)
    """Hook kinds (the last part of ``blocks.L.<kind>``) this eval can evaluate an SAE at;
    checked for every SAE before any work (:func:`csae_bench.architectures.loading.check_sae_fits`)."""
    check_overrides: Callable[[dict[str, Any]], None] | None = None
    """Rejects, before any work, suite overrides that would make the eval's output invalid; raises
    ``ValueError`` naming the key."""
    context_fields: frozenset[str] = frozenset()
    """Config fields ``make_config`` fills from the run (model, hook, seed, sizes of the eval
    tokens): not compared, unless the suite sets them, when a finished result is checked against
    what the run asks now (:func:`stale_settings`)."""


def stale_settings(
    spec: EvalSpec, stored: dict[str, Any], overrides: dict[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """``{field: (stored, asked)}``: the fields of a finished result's ``eval_config`` that differ
    from ``spec.config_cls(**overrides)`` (a changed suite value or a changed default), context
    fields aside. Fields the result does not have are not compared; overrides the config class
    refuses give ``{}`` (the job itself then fails with the clear error)."""
    import dataclasses
    import json

    try:
        asked = dataclasses.asdict(spec.config_cls(**overrides))
    except (TypeError, ValueError):
        return {}

    def plain(v: Any) -> Any:  # tuples vs lists, enums vs strings: compare as stored in JSON
        return json.loads(json.dumps(v, default=str))

    return {
        k: (stored[k], v)
        for k, v in asked.items()
        if k in stored
        and (k in overrides or k not in spec.context_fields)
        and plain(stored[k]) != plain(v)
    }


EVALS: dict[str, EvalSpec] = {}


def register_eval(spec: EvalSpec) -> EvalSpec:
    if spec.eval_type_id in EVALS:
        raise ValueError(f"Eval type {spec.eval_type_id!r} is already registered.")
    EVALS[spec.eval_type_id] = spec
    return spec


def get_eval(name: str) -> EvalSpec:
    from csae_bench import evals  # noqa: F401  (registers the built-in evals)

    try:
        return EVALS[name]
    except KeyError:
        raise KeyError(f"Unknown eval {name!r}; valid evals: {', '.join(sorted(EVALS))}.") from None


def available_evals() -> list[str]:
    from csae_bench import evals  # noqa: F401

    return sorted(EVALS)

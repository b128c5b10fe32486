"""What the jobs of one process share, loaded on first use: the model and the token sets.

The callables of :class:`Resources` are the seams tests (and other backends) replace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from csae_bench.suite import RunConfig

logger = logging.getLogger(__name__)


def _default_tokens(model, cfg: RunConfig, split: str, n_contexts: int, seed: int) -> torch.Tensor:
    from csae_bench.data import load_tokens

    return load_tokens(
        model.tokenizer,
        corpus=cfg.corpus,
        split=split,
        context_size=cfg.context_size,
        n_contexts=n_contexts,
        seed=seed,
    )


def _default_train(
    model, source, settings: dict[str, Any], out_dir: Path, gradient_pool=None, resume: bool = True
) -> dict[str, Path]:
    from csae_bench.training import TrainConfig, train_alongside

    return train_alongside(
        model,
        source,
        TrainConfig.from_flat(**settings),
        out_dir,
        gradient_pool=gradient_pool,
        resume=resume,
    )


def _default_gradients(
    model, hook_name: str, tokens: torch.Tensor, seed: int, settings: dict[str, Any]
):
    from csae_bench.activations.gradient_pool import harvest_gradient_pool

    return harvest_gradient_pool(model, hook_name, tokens, seed=seed, **settings)


def _dtype_of(model) -> str:
    try:
        return str(next(model.parameters()).dtype).removeprefix("torch.")
    except (AttributeError, StopIteration, TypeError):
        return type(model).__name__


def load_sae(folder: Path, device: str = "cpu"):
    """The SAE in ``folder`` for the evals (see :func:`csae_bench.architectures.loading.load_sae`)."""
    from csae_bench.architectures.loading import load_sae as _load

    return _load(folder, device=device)


@dataclass
class Resources:
    """What jobs share inside one process, loaded on first use: the model, token sets, the evals'
    per-model cache. The callables are the seams tests (and other backends) replace."""

    cfg: RunConfig
    model_loader: Callable[[str, str, str | None], Any] | None = None
    token_loader: Callable[[Any, RunConfig, str, int, int], torch.Tensor] = _default_tokens
    train_fn: Callable[..., dict[str, Path]] = _default_train
    gradient_fn: Callable[..., Any] = _default_gradients
    sae_loader: Callable[[Path, str], Any] = load_sae
    _model: Any = field(default=None, repr=False)
    _engine_model: Any = field(default=None, repr=False)
    _tokens: dict[tuple[str, int, int], torch.Tensor] = field(default_factory=dict, repr=False)
    eval_cache: dict[str, Any] = field(default_factory=dict, repr=False)
    """Handed to every eval job as ``EvalContext.cache`` (per-model work shared across SAEs)."""
    hold_one_model: bool = True
    """Hold at most one model when the run's and the engine's dtypes differ: loading one drops the
    other (and the eval cache's work on it), to be reloaded if asked for again. The pipeline runs
    its stages in order (harvest; gradient pool; core; NCES and probing), so a default run loads
    four times instead of twice (~10 s) and never holds a bf16 and a float32 Gemma-3-270M at once
    (−0.9 GB of peak RSS, issue 13)."""

    def _load(self, dtype: str):
        loader = self.model_loader
        if loader is None:
            from csae_bench.models import load_model as loader
        from csae_bench.utils import release_memory

        logger.info("Loading model %s on %s in %s", self.cfg.model, self.cfg.device, dtype)
        model = loader(self.cfg.model, self.cfg.device, dtype)
        release_memory()  # the load's transient copies, GBs for Gemma-3-270M
        return model

    @property
    def dtype(self) -> str:
        """The run's model dtype (``cfg.dtype`` with ``auto`` resolved for ``cfg.device``)."""
        from csae_bench.precision import dtype_name, resolve_dtype

        return dtype_name(resolve_dtype(self.cfg.dtype, self.cfg.device))

    @property
    def model(self):
        """The run's model in :attr:`dtype` (harvest, core eval), loaded on first use."""
        if self._model is None:
            if self._engine_model is not None and self.hold_one_model:
                self._forget("_engine_model")
            self._model = self._load(self.dtype)
        return self._model

    @property
    def engine_model(self):
        """The model interventions run through, in ``cfg.engine_dtype`` (float32 by default): the
        run's model itself when the dtypes agree, else a second copy loaded on first use."""
        if self.cfg.engine_dtype == self.dtype:
            return self.model
        if self._engine_model is None:
            if self._model is not None and self.hold_one_model:
                self._forget("_model")
            self._engine_model = self._load(self.cfg.engine_dtype)
        return self._engine_model

    def _forget(self, attr: str) -> None:
        """Drop the model held in ``attr`` and the eval cache's work on it (keys ``(kind,
        id(model), ...)``, the evals' convention; a later model may reuse the id)."""
        from csae_bench.utils import release_memory

        model = getattr(self, attr)
        setattr(self, attr, None)
        mine = [k for k in self.eval_cache if isinstance(k, tuple) and k[1:2] == (id(model),)]
        for key in mine:
            del self.eval_cache[key]
        logger.info("Releasing the %s model until it is needed again", _dtype_of(model))
        del model
        release_memory()

    def tokens(self, split: str, n_contexts: int, seed: int) -> torch.Tensor:
        """``n_contexts`` contexts of ``split`` shuffled with ``seed``, loaded once per request."""
        key = (split, n_contexts, seed)
        if key not in self._tokens:
            # any loaded model's tokenizer will do (they are the same): never load one for it
            loaded = self._model if self._model is not None else self._engine_model
            model = loaded if loaded is not None else self.model
            self._tokens[key] = self.token_loader(model, self.cfg, split, n_contexts, seed)
        return self._tokens[key]

    def train_contexts(self) -> int:
        """Contexts of the training split that hold the harvested (non-BOS) tokens:
        ``cfg.harvest_tokens`` capped at ``cfg.train_tokens`` (all of them when unset)."""
        from csae_bench.data import contexts_for_tokens

        n = min(self.cfg.harvest_tokens or self.cfg.train_tokens, self.cfg.train_tokens)
        return contexts_for_tokens(n, self.cfg.context_size, bos_counts=False)

    def eval_tokens(self) -> torch.Tensor:
        """The eval split's ``cfg.eval_contexts`` contexts (seed 0): one eval set for every seed
        and architecture, so results compare like for like."""
        return self.tokens("eval", self.cfg.eval_contexts, 0)

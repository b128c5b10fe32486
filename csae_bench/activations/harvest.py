"""Residual-stream activation source: one harvest feeds every SAE trained alongside.

Activations are harvested in context batches with ``stop_at_layer`` (layers after the hook are
never run), BOS positions dropped (SAELens/SAEBench exclude them), kept in a bounded shuffled
buffer, and optionally cached on disk as a safetensors file so later runs skip the model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from csae_bench import hooks
from csae_bench.errors import BadInputError

logger = logging.getLogger(__name__)


class ActivationError(BadInputError, RuntimeError):
    """Activations could not be produced; the message says what to do."""


def hook_name_for_layer(model, layer: int, site: str = "resid_post") -> str:
    """:func:`csae_bench.hooks.hook_name_for_layer`, raising :class:`ActivationError`."""
    return hooks.hook_name_for_layer(model, layer, site, error=ActivationError)


def layer_of_hook(hook_name: str, n_layers: int | None = None) -> int:
    """:func:`csae_bench.hooks.layer_of_hook`, raising :class:`ActivationError`."""
    return hooks.layer_of_hook(hook_name, n_layers, error=ActivationError)


def progress(description: str) -> Progress:
    """The rich progress bar used for long work throughout the package."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        transient=False,
    )


@torch.no_grad()
def harvest_activations(
    model,
    hook_name: str,
    tokens: torch.Tensor,
    batch_contexts: int = 8,
    drop_bos: bool = True,
    dtype: torch.dtype = torch.float32,
    show_progress: bool = True,
) -> torch.Tensor:
    """Activations at ``hook_name`` for every token of ``tokens`` ``[n_ctx, ctx]``, as
    ``[n_tokens, d_model]`` in context order (BOS positions removed when ``drop_bos``)."""
    layer = layer_of_hook(hook_name, model.cfg.n_layers)
    if tokens.ndim != 2:
        raise ActivationError(
            f"tokens must be [n_contexts, context_size], got shape {tuple(tokens.shape)}."
        )
    device = next(model.parameters()).device
    out = []
    with progress("harvest") as bar:
        task = bar.add_task(
            f"Harvesting {hook_name}", total=len(tokens), info="", visible=show_progress
        )
        for start in range(0, len(tokens), batch_contexts):
            batch = tokens[start : start + batch_contexts].to(device)
            _, cache = model.run_with_cache(
                batch, names_filter=[hook_name], stop_at_layer=layer + 1
            )
            acts = cache[hook_name]
            if drop_bos:
                acts = acts[hooks.non_bos_mask(model, batch)]
            else:
                acts = acts.reshape(-1, acts.shape[-1])
            out.append(acts.to("cpu", dtype))
            bar.update(task, advance=len(batch))
    acts = torch.cat(out)
    if not torch.isfinite(acts).all():
        raise ActivationError(
            f"Non-finite activations at {hook_name}; check the model weights and dtype."
        )
    return acts


class ActivationSource:
    """Harvested activations served as shuffled batches to any number of SAEs.

    ``cache_path``: a ``.safetensors`` file; reused when it matches ``hook_name`` and the token
    count, written atomically after a harvest otherwise. ``max_buffer_tokens`` bounds memory: the
    corpus is harvested in chunks of that many tokens, each shuffled on its own.
    """

    def __init__(
        self,
        model,
        hook_name: str,
        tokens: torch.Tensor,
        seed: int = 0,
        batch_contexts: int = 8,
        max_buffer_tokens: int = 2_000_000,
        cache_path: Path | None = None,
    ) -> None:
        self.model = model
        self.hook_name = hook_name
        self.tokens = tokens
        self.seed = seed
        self.batch_contexts = batch_contexts
        self.max_buffer_tokens = max_buffer_tokens
        self.cache_path = Path(cache_path) if cache_path else None
        self.d_in = model.cfg.d_model
        ctx = tokens.shape[1]
        self.contexts_per_chunk = max(1, max_buffer_tokens // ctx)

    @property
    def n_tokens(self) -> int:
        """Tokens served per epoch (BOS positions excluded)."""
        return int(hooks.non_bos_mask(self.model, self.tokens).sum())

    def _chunk(self, i: int) -> torch.Tensor:
        sl = self.tokens[i * self.contexts_per_chunk : (i + 1) * self.contexts_per_chunk]
        return harvest_activations(self.model, self.hook_name, sl, self.batch_contexts)

    def all_activations(self) -> torch.Tensor:
        """Every activation, unshuffled (uses and fills the disk cache; kept in memory after the
        first call, so several ``batches`` iterators do not harvest again)."""
        if getattr(self, "_acts_in_memory", None) is not None:
            return self._acts_in_memory
        self._acts_in_memory = self._all_activations()
        return self._acts_in_memory

    def _all_activations(self) -> torch.Tensor:
        if self.cache_path is not None and self.cache_path.exists():
            from safetensors.torch import load_file

            try:
                data = load_file(self.cache_path)
                acts = data["acts"]
                if acts.shape == (self.n_tokens, self.d_in) and torch.equal(
                    data["tokens"], self.tokens
                ):
                    return acts
                logger.warning(
                    "Activation cache %s is for other tokens; re-harvesting.", self.cache_path
                )
            except Exception as err:  # a corrupt cache is rebuilt, never used
                logger.warning(
                    "Activation cache %s unreadable (%s); re-harvesting.", self.cache_path, err
                )
        n_chunks = -(-len(self.tokens) // self.contexts_per_chunk)
        acts = torch.cat([self._chunk(i) for i in range(n_chunks)])
        if self.cache_path is not None:
            from safetensors.torch import save_file

            from csae_bench.utils import atomic_path

            with atomic_path(self.cache_path) as tmp:
                save_file(
                    {"acts": acts.contiguous(), "tokens": self.tokens.contiguous()},
                    str(tmp),
                    metadata={"hook_name": self.hook_name},
                )
        return acts

    def batches(
        self, batch_size: int, n_tokens: int | None = None, epoch_seed: int | None = None
    ) -> Iterator[torch.Tensor]:
        """Shuffled ``[batch_size, d_in]`` batches until ``n_tokens`` are served (default one
        epoch; more cycles through the data with a new shuffle). Identical for identical seeds,
        so SAEs trained alongside see the same stream."""
        acts = (
            self.all_activations()
            if self.cache_path is not None or len(self.tokens) <= self.contexts_per_chunk
            else None
        )
        total = n_tokens if n_tokens is not None else self.n_tokens
        gen = torch.Generator().manual_seed(self.seed if epoch_seed is None else epoch_seed)
        served = 0
        while served < total:
            chunks = (
                [acts]
                if acts is not None
                else (
                    self._chunk(i) for i in range(-(-len(self.tokens) // self.contexts_per_chunk))
                )
            )
            for chunk in chunks:
                perm = torch.randperm(len(chunk), generator=gen)
                for start in range(0, len(chunk) - batch_size + 1, batch_size):
                    if served >= total:
                        return
                    yield chunk[perm[start : start + batch_size]]
                    served += batch_size

"""The activation harvest: a model's residual stream at one hook, for a batch of contexts.

Activations are harvested in context batches with ``stop_at_layer`` (layers after the hook are
never run) and BOS positions dropped (SAELens/SAEBench exclude them). Storing them on disk and
serving shuffled batches is :mod:`csae_bench.activations.source`'s job.
"""

from __future__ import annotations

import logging

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
    batch_contexts: int = 32,
    drop_bos: bool = True,
    dtype: torch.dtype = torch.float32,
    show_progress: bool = True,
) -> torch.Tensor:
    """Activations at ``hook_name`` for every token of ``tokens`` ``[n_ctx, ctx]``, as
    ``[n_tokens, d_model]`` in context order (BOS positions removed when ``drop_bos``), stored in
    ``dtype``. The model runs in its own dtype: bf16 weights run ~3.6× faster than float32 on the
    development CPUs (32 contexts of 128 per forward; docs/precision.md)."""
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

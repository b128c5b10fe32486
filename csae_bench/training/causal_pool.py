"""The CSAE's gradient pool for one training run: found, harvested or loaded, checked, attached.

The pipeline harvests the pool as its own job (``pipeline.GradientJob``) and hands it to the
trainer; a direct call of ``train_alongside`` without one harvests it here from the source's
tokens and keeps it next to the checkpoint (``POOL_NAME``), so a resumed run reuses it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from csae_bench.activations.source import ActivationSource
from csae_bench.data import contexts_for_tokens
from csae_bench.training.config import TrainConfig, TrainingError
from csae_bench.training.state import SAERunState

logger = logging.getLogger(__name__)

POOL_NAME = "gradient_pool.safetensors"


def attach_causal(
    runs: dict[str, SAERunState],
    model: Any,
    source: ActivationSource,
    cfg: TrainConfig,
    pool: Any | None,
    scale: float,
    out_dir: Path,
) -> None:
    """Give the CSAE in ``runs`` (if any) its gradient pool, its generator, the activation
    ``scale`` and, for ``e2e_coeff > 0``, the model and tokens of the end-to-end term.

    When ``pool`` is None and a causal part needs one, ``out_dir/POOL_NAME`` is loaded, or a pool
    of ``grad_tokens`` tokens × ``n_grad_samples`` sampled next tokens is harvested from the first
    contexts of ``source.tokens`` and saved there. Raises :class:`TrainingError` when the pool was
    harvested at another hook than ``cfg.hook_name``."""
    run = runs.get("csae")
    if run is None:
        return
    opts = cfg.options["csae"]
    if pool is None and opts.needs_gradient_pool:
        from csae_bench.activations.gradient_pool import GradientPool, harvest_gradient_pool

        pool_path = out_dir / POOL_NAME
        if pool_path.exists():
            pool = GradientPool.load(pool_path)
        else:
            ctx = source.tokens.shape[1]
            n_ctx = contexts_for_tokens(opts.grad_tokens, ctx, bos_counts=True)
            logger.info("Harvesting a gradient pool of %d contexts for the CSAE.", n_ctx)
            pool = harvest_gradient_pool(
                model,
                cfg.hook_name,
                source.tokens[:n_ctx],
                n_samples=opts.n_grad_samples,
                seed=cfg.seed,
                show_progress=cfg.show_progress,
            )
            pool.save(pool_path)  # kept next to the checkpoint so a resumed run reuses it
    pool_hook = getattr(pool, "hook_name", "")
    if pool is not None and pool_hook and pool_hook != cfg.hook_name:
        raise TrainingError(
            f"The gradient pool was harvested at {pool_hook}, not {cfg.hook_name}; "
            "harvest one at the training hook."
        )
    e2e = (model, cfg.hook_name, source.tokens) if opts.e2e_coeff > 0 else None
    run.sae.attach_causal(pool, run.generator, activation_scale=scale, e2e=e2e)

"""Train several SAE architectures alongside on one activation stream (:func:`train_alongside`).

Every SAE sees the same batches in the same order (one iterator over ``source.batches``, each batch
given to every SAE), the same token budget, the same seed and the same optimizer schedule. Losses
are SAELens's own (``TrainingSAE.training_forward_pass``); the training package owns the rest, one
job per module:

* **Normalization** (:mod:`.scaling`). Activations are multiplied by one constant so that their
  mean norm is ``sqrt(d_in)`` (SAELens's ``expected_average_only_in``), which makes coefficients
  transfer between models; the constant is folded into the saved weights, so saved SAEs take raw
  activations.
* **Matched L0** (:mod:`.state`, :mod:`.sparsity`). TopK, CSAE and random-decoder use
  ``k = target_l0``. ReLU (L1) and JumpReLU (L0 via STE) start at the target L0 (first-batch
  calibration of each feature's bias/threshold, :meth:`SAERunState.calibrate_init`) and then
  calibrate their coefficient online with :class:`~csae_bench.training.sparsity.L0Controller`
  toward ``target_l0``; the controller freezes for the last ``freeze_frac`` of training; the L0
  reached is reported in ``training_summary.json`` (``l0`` next to ``target_l0``) — it is steered,
  not guaranteed. JumpReLU passes the STE gradient to the encoder (``jumprelu_ste_to_input``,
  Anthropic's variant): with DeepMind's threshold-only gradient Adam moves thresholds ~lr per step
  and a 250-step CPU run ended at L0 447 for a target of 32.
* **Init.** ``b_dec`` starts at the first batch's mean for every architecture.
* **Dead features** (:mod:`.dead_features`). A feature is dead when it has not fired for
  ``dead_window`` steps. TopK-family SAEs get SAELens's AuxK loss on dead features; ReLU and
  JumpReLU get dead-feature resampling every ``resample_every`` steps. CSAE additionally
  re-initializes causally failing features (its verification loop, every ``verify_every`` steps).
* **Checkpoints** (:mod:`.checkpoint`). Every ``checkpoint_every`` steps all SAEs, optimizers,
  controllers, dead counters and generators go to ``out_dir/checkpoint.safetensors`` (tensors +
  JSON, no pickle) atomically; ``resume=True`` continues the same run bit for bit. NaN/inf in
  activations or a loss stops training with the step and SAE named, before anything is written.
* **Nulls** (:mod:`.nulls`). Architectures that are not trained (``permuted-decoder``, ``init``,
  ``pca``) are built after the trained SAEs from the same stream and saved the same way.
* **Outputs** (:mod:`.finalize`). ``out_dir/<architecture>/`` is a SAELens-format SAE
  (``SAE.load_from_disk`` works; :func:`~csae_bench.architectures.export.load_base_sae` gives
  SAEBench's ``BaseSAE``) plus ``training_summary.json``. An architecture whose folder is complete
  is skipped, so the command is resumable per SAE.
* **Snapshots** (:mod:`.snapshots`). With ``n_snapshots`` > 0, every SAE is also saved at that
  many log-spaced steps (the last = the final SAE) to ``out_dir/<arch>/snapshots/tokens_<N>/``,
  SAELens format; they stay after training (results, not resume state).

CPU defaults (see :class:`~csae_bench.training.config.TrainConfig`): the embedded Gemma-3-270M at
layer 6 (a middle layer: 18 layers, features there are neither token-level nor output-level; it is
also cheap to reach, ``stop_at_layer=7``), 2048 features (3.2× expansion of d_model 640: wide
enough for useful features, narrow enough that five SAEs step in about half a second together on 2
cores), k = 32, batch 1024 and 250k tokens (244 Adam steps at lr 1e-3). Measured with these
defaults (held-out eval split, mean-centred EV / L0 / dead fraction over the last 50 steps): relu
0.47 / 33 / 3%, topk 0.94 / 32 / 17%, jumprelu 0.92 / 21 / 59%, csae 0.88 / 32 / 60%,
random-decoder 0.30 / 32 / 4%; single-threaded SAE time 84-152 s each on a machine shared with
three other jobs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from rich.console import Group
from rich.live import Live

from csae_bench.activations.harvest import progress
from csae_bench.activations.source import ActivationSource
from csae_bench.training.causal_pool import attach_causal
from csae_bench.training.checkpoint import (
    CheckpointMismatchError,
    NonFiniteError,
    load_checkpoint,
    save_checkpoint,
)
from csae_bench.training.config import TrainConfig, TrainingError
from csae_bench.training.display import progress_table
from csae_bench.training.finalize import SUMMARY_NAME, heldout_activations, save_trained_sae
from csae_bench.training.nulls import null_architectures, save_nulls
from csae_bench.training.scaling import activation_scale
from csae_bench.training.snapshots import SnapshotWriter
from csae_bench.training.state import SAERunState

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.safetensors"
LEGACY_CHECKPOINT_NAME = "checkpoint.pt"  # pickled (format 1): never read, see checkpoint.py


def train_alongside(
    model: Any,
    source: ActivationSource,
    cfg: TrainConfig,
    out_dir: Path,
    gradient_pool: Any | None = None,
    resume: bool = True,
    heldout_acts: torch.Tensor | None = None,
    stop_after_steps: int | None = None,
) -> dict[str, Path]:
    """Train ``cfg.architectures`` alongside on ``source`` and save each to ``out_dir/<arch>/``.

    Args:
        model: the HookedTransformer ``source`` reads (used to harvest a gradient pool, the
            end-to-end KL term and the held-out eval split).
        source: the activation stream at ``cfg.hook_name`` (``[batch, d_in]`` batches, raw units).
        cfg: the run's settings.
        out_dir: where the SAE folders, the checkpoint and a harvested pool go.
        gradient_pool: a ``GradientPool`` for the CSAE's causal terms; when None and a CSAE with
            causal parts is requested, one is harvested from the source's tokens
            (``options["csae"].grad_tokens``) and kept in ``out_dir``.
        resume: continue from ``out_dir``'s checkpoint when there is one.
        heldout_acts: ``[N, d_in]`` raw activations for the final metrics (default: the eval
            split when the model has a tokenizer, else a training batch).
        stop_after_steps: checkpoint and return early after this many steps (time-boxed jobs;
            resume later).

    Returns:
        ``{architecture: folder}`` for every finished SAE (a SAELens-format folder plus
        ``training_summary.json``); folders that already exist are skipped.

    Raises:
        TrainingError: the source and ``cfg`` name different hooks, or the pool another hook.
        CheckpointMismatchError: the checkpoint in ``out_dir`` is another run's (or lacks an
            architecture); delete it or pass ``resume=False``.
        NonFiniteError: NaN/inf in a batch or a loss (nothing of that step is saved).
    """
    out_dir = Path(out_dir)
    if source.hook_name != cfg.hook_name:
        raise TrainingError(
            f"The activation source is for {source.hook_name} but cfg.hook_name is "
            f"{cfg.hook_name}; make them agree."
        )
    done = {a: out_dir / a for a in cfg.architectures if (out_dir / a / SUMMARY_NAME).exists()}
    todo = [a for a in cfg.architectures if a not in done]
    nulls = null_architectures(todo)  # derived after training, not trained (training/nulls.py)
    todo = [a for a in todo if a not in nulls]
    for a in done:
        logger.info("%s already trained at %s; skipping.", a, done[a])
    if not todo:
        given = None if heldout_acts is None else (heldout_acts, "given")
        done.update(save_nulls(nulls, model, source, cfg, out_dir, done, heldout=given))
        return done

    d_in = source.d_in
    runs = {a: SAERunState(a, d_in, cfg, cfg.architectures.index(a)) for a in todo}
    scale = activation_scale(source, cfg)
    attach_causal(runs, model, source, cfg, gradient_pool, scale, out_dir)

    ckpt_path = out_dir / CHECKPOINT_NAME
    start = 0
    if (out_dir / LEGACY_CHECKPOINT_NAME).exists():
        logger.warning(
            "Not reading %s: pickled checkpoints of older versions can run code when loaded. "
            "Training starts over; delete the file to silence this.",
            out_dir / LEGACY_CHECKPOINT_NAME,
        )
    if ckpt_path.exists() and resume:
        state = load_checkpoint(ckpt_path, cfg.identity(d_in))
        missing = [a for a in todo if a not in state["archs"]]
        if missing:
            raise CheckpointMismatchError(
                f"Checkpoint {ckpt_path} has no state for {missing}; "
                "delete it or pass resume=False."
            )
        for a in todo:
            runs[a].load_state_dict(state["archs"][a])
        start, scale = int(state["step"]), float(state["activation_scale"])
        logger.info("Resuming %s from step %d (%s).", ", ".join(todo), start, ckpt_path)

    def write_checkpoint(step: int) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "identity": cfg.identity(d_in),
                "step": step,
                "activation_scale": scale,
                "config": cfg.to_flat(),
                "archs": {a: r.state_dict() for a, r in runs.items()},
            },
        )

    snapshots = SnapshotWriter(cfg, runs, out_dir, scale, source, start)
    n_steps = cfg.n_steps
    stream: Iterator[torch.Tensor] = islice(
        source.batches(cfg.batch_size, n_steps * cfg.batch_size), start, None
    )
    bar = progress("train")
    task = bar.add_task(f"Training {len(runs)} SAEs", total=n_steps, completed=start, info="")
    with (
        Live(
            Group(bar, progress_table(runs, start, n_steps)),
            refresh_per_second=2,
            transient=False,
        )
        if cfg.show_progress
        else contextlib.nullcontext() as live
    ):
        for step, batch in enumerate(stream, start=start):
            if not torch.isfinite(batch).all():
                raise NonFiniteError(
                    f"Non-finite activations in the batch of step {step} (hook "
                    f"{cfg.hook_name}); nothing from this step was saved."
                )
            x_BD = batch * scale
            if step == 0:
                for run in runs.values():
                    run.calibrate_init(x_BD)
            for run in runs.values():
                run.step(x_BD, step)
            snapshots.after_step(step + 1)  # before the checkpoint of this step
            bar.update(task, completed=step + 1)
            if live is not None and ((step + 1) % cfg.log_every == 0 or step + 1 == n_steps):
                live.update(Group(bar, progress_table(runs, step + 1, n_steps)))
            if (
                cfg.checkpoint_every
                and (step + 1) % cfg.checkpoint_every == 0
                and step + 1 < n_steps
            ):
                write_checkpoint(step + 1)
            if stop_after_steps is not None and step + 1 >= stop_after_steps and step + 1 < n_steps:
                write_checkpoint(step + 1)
                logger.info("Stopped after step %d; checkpoint at %s.", step + 1, ckpt_path)
                return done
    if heldout_acts is None:
        heldout_acts, heldout_on = heldout_activations(model, source, cfg)
    else:
        heldout_on = "given"
    for arch, run in runs.items():
        done[arch] = save_trained_sae(
            run, out_dir / arch, cfg, scale, heldout_acts, heldout_on, source
        )
    done.update(
        save_nulls(
            nulls, model, source, cfg, out_dir, done, runs, scale, (heldout_acts, heldout_on)
        )
    )
    ckpt_path.unlink(missing_ok=True)
    return done

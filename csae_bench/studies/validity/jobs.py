"""The validity study's work as pipeline jobs.

Per layer, under ``<out>/layer<L>/``: one activation stream and one gradient pool shared by every
seed (:class:`~csae_bench.pipeline.HarvestJob`, :class:`~csae_bench.pipeline.GradientJob`); per
seed, one :class:`~csae_bench.pipeline.TrainJob` that trains the judged SAEs and builds the nulls
alongside on that stream, with ``n_snapshots`` training snapshots; then, in ``seed<k>/records/``:

* ``nces_<sae>_<control>.json`` — :class:`NcesTokensJob`: NCES of every final SAE under every
  control with every intervention kept (:mod:`.capture`);
* ``nces_<sae>@<tokens>_<control>.json`` — the same for each snapshot of the judged SAEs (fewer
  features: ``snapshot_n_features``; the last snapshot is the final SAE and is not re-measured);
* ``probing_<sae>[@<tokens>].json`` — the causal probing eval (IIA included) of every final SAE
  and (``probe_snapshots``) of the judged SAEs' snapshots, SAEBench format
  (:class:`~csae_bench.pipeline.EvalJob`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csae_bench.pipeline import (
    ACTIVATIONS_NAME,
    GRADIENT_POOL_NAME,
    EvalJob,
    GradientJob,
    HarvestJob,
    Job,
    Resources,
    TrainJob,
)
from csae_bench.studies.harness import STUDY_MODEL, RecordJob, embedded_run_config
from csae_bench.studies.validity.config import ValidityConfig
from csae_bench.suite import RunConfig

SAES_DIR = "saes"
RECORDS_DIR = "records"


def hook_name(layer: int) -> str:
    from csae_bench.hooks import block_hook_name

    return block_hook_name(layer)


def run_config(cfg: ValidityConfig, out: Path) -> RunConfig:
    """The study's shared resources (:func:`~csae_bench.studies.harness.embedded_run_config`) on
    ``cfg.corpus`` with ``cfg.harvest_tokens`` harvested, in the default run's precision (``auto``)."""
    return embedded_run_config(
        cfg, out, corpus=cfg.corpus, harvest_tokens=cfg.harvest_tokens, dtype="auto"
    )


def snapshot_tokens(cfg: ValidityConfig) -> list[int]:
    """Training tokens of the snapshots the trainer will write (the last is the final SAE)."""
    from csae_bench.training.snapshots import snapshot_steps

    n_steps = cfg.train_tokens // cfg.batch_size
    return [s * cfg.batch_size for s in snapshot_steps(n_steps, min(cfg.n_snapshots, n_steps))]


@dataclass
class NcesTokensJob(RecordJob):
    """NCES of one SAE (final or snapshot) under one control, every intervention kept."""

    cfg: ValidityConfig
    layer: int
    seed: int
    sae: str
    folder: Path
    control: str
    tokens: int
    """Training tokens of this SAE (0: at initialization)."""
    snapshot: bool
    n_features: int

    def describe(self) -> str:
        at = f"@{self.tokens}" if self.snapshot else ""
        return f"layer {self.layer} seed {self.seed}: NCES {self.sae}{at} [{self.control}]"

    def record(self, res: Resources) -> dict[str, Any]:
        from csae_bench.evals.nces import NCESEvalConfig
        from csae_bench.evals.nces.run import build_engine
        from csae_bench.studies.validity.capture import nces_with_tokens

        c, hook = self.cfg, hook_name(self.layer)
        config = NCESEvalConfig(
            model_name=STUDY_MODEL,
            hook_name=hook,
            intervention=c.intervention,
            control=self.control,
            effect_window=c.effect_window,
            n_features=self.n_features,
            tokens_per_feature=c.tokens_per_feature,
            n_bootstrap=100,  # the per-feature CIs are not used; the study bootstraps itself
            compute_attribution=False,
            random_seed=self.seed,
        )
        model = res.engine_model
        engine = build_engine(model, hook, res.eval_tokens(), config, cache=res.eval_cache)
        t0 = time.perf_counter()
        sae = res.sae_loader(self.folder, res.cfg.device)
        out = nces_with_tokens(
            model, sae, res.eval_tokens(), hook, config, self.sae, engine, res.eval_cache
        )
        return {
            "layer": self.layer,
            "seed": self.seed,
            "sae": self.sae,
            "control": self.control,
            "training_tokens": self.tokens,
            "snapshot": self.snapshot,
            "n_features": self.n_features,
            "tokens_per_feature": c.tokens_per_feature,
            "seconds": time.perf_counter() - t0,
            **out,
        }


def _train_settings(c: ValidityConfig, layer: int, seed: int) -> dict[str, Any]:
    from csae_bench.precision import dtype_name, resolve_dtype

    return dict(
        dtype=dtype_name(resolve_dtype("auto", "cpu")),  # the default run's training precision
        architectures=tuple(c.saes),
        d_sae=c.d_sae,
        target_l0=c.target_l0,
        train_tokens=c.train_tokens,
        batch_size=c.batch_size,
        seed=seed,
        hook_name=hook_name(layer),
        context_size=c.context_size,
        heldout_corpus=c.corpus,
        n_snapshots=c.n_snapshots,
        checkpoint_every=0,
        show_progress=False,
    )


def layer_jobs(c: ValidityConfig, out: Path, layer: int, seeds: tuple[int, ...]) -> list[Job]:
    """One layer's jobs: its harvest and gradient pool, then per seed training and records."""
    from csae_bench.data import contexts_for_tokens
    from csae_bench.training.snapshots import snapshot_folder

    ld, hook = Path(out) / f"layer{layer}", hook_name(layer)
    harvest = HarvestJob(hook, 0, ld / ACTIVATIONS_NAME)
    gradients = GradientJob(
        hook,
        0,
        ld / GRADIENT_POOL_NAME,
        contexts_for_tokens(c.grad_tokens, c.context_size, bos_counts=False),
        {"show_progress": False},
    )
    work: list[Job] = [harvest, gradients]
    snaps = snapshot_tokens(c)[:-1]  # the last snapshot is the final SAE
    for seed in seeds:
        sd = ld / f"seed{seed}"
        saes = sd / SAES_DIR
        work.append(
            TrainJob(harvest, gradients, list(c.saes), _train_settings(c, layer, seed), saes)
        )
        rec = sd / RECORDS_DIR

        def nces(sae, folder, control, tokens, snap, rec=rec, seed=seed) -> NcesTokensJob:
            at = f"@{tokens}" if snap else ""
            return NcesTokensJob(
                rec / f"nces_{sae}{at}_{control}.json", c, layer, seed, sae, folder, control,
                tokens, snap, c.snapshot_n_features if snap else c.n_features,
            )  # fmt: skip

        for sae in c.saes:
            tokens = 0 if sae == c.init_null else c.train_tokens
            work += [nces(sae, saes / sae, ctl, tokens, False) for ctl in c.controls]
        for sae in c.trained:
            work += [
                nces(sae, snapshot_folder(saes / sae, t), ctl, t, True)
                for t in snaps
                for ctl in c.controls
            ]
        if c.probing:
            probes = [(sae, saes / sae, "") for sae in c.saes]
            if c.probe_snapshots:
                probes += [
                    (sae, snapshot_folder(saes / sae, t), f"@{t}")
                    for sae in c.trained
                    for t in snaps
                ]
            work += [
                EvalJob(
                    "probing",
                    folder,
                    f"validity-layer{layer}-seed{seed}",
                    sae + at,
                    hook,
                    seed,
                    rec / f"probing_{sae}{at}.json",
                    {"examples_per_class": c.probing_examples_per_class},
                )
                for sae, folder, at in probes
            ]
    return work


def jobs(c: ValidityConfig, out: Path) -> list[Job]:
    """Every job of the study: the selection set's, then (phase ``confirm``) the confirmation
    sets' — the layer-``layer`` confirmation seeds share the selection set's harvest."""
    work: list[Job] = []
    by_layer: dict[int, list[int]] = {}
    for layer, seeds in c.sets().values():
        by_layer.setdefault(layer, [])
        by_layer[layer] += [s for s in seeds if s not in by_layer[layer]]
    for layer, seeds in by_layer.items():
        work += layer_jobs(c, out, layer, tuple(seeds))
    return work

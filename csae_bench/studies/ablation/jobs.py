"""The ablation study's work as pipeline jobs.

Per seed, under ``<out>/seed<k>/``: one activation stream and one gradient pool
(:class:`~csae_bench.pipeline.HarvestJob`, :class:`~csae_bench.pipeline.GradientJob`); TopK, the
CSAE and the random-decoder control trained alongside in ``main/``, and each CSAE variant in its
own folder (:class:`~csae_bench.pipeline.TrainJob` s on that one stream and pool); then a core
record per SAE and NCES records per (SAE, intervention type) in ``evals/``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csae_bench.pipeline import (
    ACTIVATIONS_NAME,
    GRADIENT_POOL_NAME,
    GradientJob,
    HarvestJob,
    Job,
    Resources,
    TrainJob,
)
from csae_bench.studies.ablation.config import RANDOM_CONTROL, AblationConfig
from csae_bench.studies.harness import STUDY_MODEL, RecordJob, embedded_run_config
from csae_bench.suite import RunConfig

MODEL = STUDY_MODEL
NCES_ENGINE = "ablation.nces_engine"
"""Key of the NCES engine in ``Resources.eval_cache``: built once, shared by every NCES record
(same model, hook and eval tokens)."""


def run_config(cfg: AblationConfig, out: Path) -> RunConfig:
    """The study's shared resources (:func:`~csae_bench.studies.harness.embedded_run_config`)."""
    return embedded_run_config(cfg, out)


def _eval_context(res: Resources, hook_name: str, seed: int):
    from csae_bench.evals.registry import EvalContext

    return EvalContext(
        model=res.model,
        hook_name=hook_name,
        eval_tokens=res.eval_tokens(),
        seed=seed,
        model_name=MODEL,
    )


@dataclass
class CoreRecordJob(RecordJob):
    """SAEBench's core eval of one SAE, its flat metrics and training summary as one record."""

    cfg: AblationConfig
    seed: int
    sae: str
    folder: Path

    def describe(self) -> str:
        return f"seed {self.seed}: core {self.sae}"

    def record(self, res: Resources) -> dict[str, Any]:
        from csae_bench.evals.registry import get_eval
        from csae_bench.reporting.results import flat_metrics, metric_flags
        from csae_bench.utils import eval_output_json

        spec = get_eval("core")
        ctx = _eval_context(res, self.cfg.hook_name, self.seed)
        t0 = time.perf_counter()
        overrides = {
            "batch_size_prompts": self.cfg.core_contexts,
            "n_eval_sparsity_variance_batches": 1,
        }
        assert spec.make_config is not None  # core builds its config from the eval tokens
        sae = res.sae_loader(self.folder, res.cfg.device)
        output = spec.run(ctx, sae, self.sae, spec.make_config(ctx, overrides))
        raw = json.loads(eval_output_json(output))["eval_result_metrics"]
        return {
            "seed": self.seed,
            "sae": self.sae,
            "seconds": time.perf_counter() - t0,
            # non-finite metrics (the random decoder's kl_div_score) are left out, named here
            "metrics": flat_metrics(raw),
            "non_finite_metrics": metric_flags("core", raw),
            "training": json.loads((self.folder / "training_summary.json").read_text()),
        }


@dataclass
class NcesRecordJob(RecordJob):
    """NCES of one SAE under one intervention type (``zero+isotropic``: zero ablation against the
    isotropic control), its metrics and per-feature values as one record."""

    cfg: AblationConfig
    seed: int
    sae: str
    folder: Path
    intervention: str

    def describe(self) -> str:
        return f"seed {self.seed}: NCES {self.sae} {self.intervention}"

    def record(self, res: Resources) -> dict[str, Any]:
        from csae_bench.evals.nces import NCESEvalConfig, evaluate_sae
        from csae_bench.evals.nces.run import build_engine

        c = self.cfg
        kind, control = (
            ("zero", "isotropic")
            if self.intervention == RANDOM_CONTROL
            else (self.intervention, "feature")
        )
        config = NCESEvalConfig(
            model_name=MODEL,
            hook_name=c.hook_name,
            intervention=kind,
            control=control,
            effect_window=c.effect_window,
            n_features=c.n_features,
            tokens_per_feature=c.tokens_per_feature,
            n_bootstrap=c.n_bootstrap,
            compute_attribution=False,
            random_seed=self.seed,
        )
        if NCES_ENGINE not in res.eval_cache:
            res.eval_cache[NCES_ENGINE] = build_engine(
                res.model, c.hook_name, res.eval_tokens(), config
            )
        t0 = time.perf_counter()
        out = json.loads(
            evaluate_sae(
                res.model,
                res.sae_loader(self.folder, res.cfg.device),
                res.eval_tokens(),
                c.hook_name,
                config,
                self.sae,
                engine=res.eval_cache[NCES_ENGINE],
            ).to_json()
        )
        return {
            "seed": self.seed,
            "sae": self.sae,
            "intervention": self.intervention,
            "seconds": time.perf_counter() - t0,
            "metrics": out["eval_result_metrics"]["nces"],
            "features": [
                {
                    "feature_idx": d["feature_idx"],
                    "nces": d["nces"],
                    "verified": d["causally_verified"],
                    "effect": d["effect"],
                    "control_effect": d["control_effect"],
                }
                for d in out["eval_result_details"]
            ],
        }


def _train_settings(c: AblationConfig, seed: int) -> dict[str, Any]:
    return dict(
        d_sae=c.d_sae,
        train_tokens=c.train_tokens,
        batch_size=c.batch_size,
        seed=seed,
        target_l0=c.target_l0,
        hook_name=c.hook_name,
        context_size=c.context_size,
        grad_tokens=c.grad_tokens,
        n_grad_samples=c.n_grad_samples,
        verify_every=c.verify_every,
        checkpoint_every=0,
        heldout_tokens=2048,
        show_progress=False,
    )


def jobs(c: AblationConfig, out: Path) -> list[Job]:
    """Every job of the study, seed by seed: harvest, gradient pool, training groups, then the
    core records of every SAE, NCES under every type for ``type_saes``, NCES (zero) for the
    variants."""
    from csae_bench.data import contexts_for_tokens

    work: list[Job] = []
    for seed in c.seeds:
        sd = Path(out) / f"seed{seed}"
        harvest = HarvestJob(c.hook_name, seed, sd / ACTIVATIONS_NAME)
        gradients = GradientJob(
            c.hook_name,
            seed,
            sd / GRADIENT_POOL_NAME,
            contexts_for_tokens(c.grad_tokens, c.context_size, bos_counts=False),
            {"n_samples": c.n_grad_samples, "show_progress": False},
        )
        work += [harvest, gradients]
        groups: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
            "main": (tuple(dict.fromkeys((*c.type_saes, "csae"))), {})
        }
        groups |= {name: (("csae",), overrides) for name, overrides in c.variants.items()}
        folders: dict[str, Path] = {}
        for g, (archs, overrides) in groups.items():
            settings = {"architectures": archs, **_train_settings(c, seed), **overrides}
            work.append(TrainJob(harvest, gradients, list(archs), settings, sd / g))
            for a in archs:
                folders[a if g == "main" else g] = sd / g / a
        evals = sd / "evals"
        work += [
            CoreRecordJob(evals / f"core_{name}.json", c, seed, name, folder)
            for name, folder in folders.items()
        ]
        work += [
            NcesRecordJob(
                evals / f"nces_{name}_{kind.replace(':', '=')}.json",
                c,
                seed,
                name,
                folders[name],
                kind,
            )
            for name in c.type_saes
            for kind in c.interventions
        ]
        work += [
            NcesRecordJob(evals / f"nces_{name}_zero.json", c, seed, name, folders[name], "zero")
            for name in c.variants
        ]
    return work

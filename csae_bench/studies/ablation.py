"""The ablation study: intervention types and the CSAE's causal parts (issue 7).

    python -m csae_bench.studies.ablation --out results_ablation          # runs the study, writes docs/
    python -m csae_bench.studies.ablation --out results_ablation --report-only

Per seed it harvests one activation stream and one gradient pool from the embedded model, trains
TopK, the CSAE and a frozen-random-decoder control alongside (same tokens, same k, hence matched
L0), plus CSAE variants with one causal part switched off (``causal_coeff = 0``: no Fisher term;
``verify_every = 0``: no verification loop). Every SAE gets SAEBench's core eval; TopK, CSAE and
the random-decoder control get NCES under every intervention type (zero, mean, resample, clamp at
several α, and the isotropic random-direction control of DESIGN §5); the CSAE variants get NCES
with zero ablation. All NCES runs of one seed use the same eval tokens, the same sampled features
and tokens (the sampling does not depend on the type), so types are compared on the same features.

Each unit of work (a trained SAE folder, one eval) is a file under ``--out`` and is skipped when
it exists, so a killed study resumes; ``docs/ablations.md`` and ``docs/img/ablation_*.png`` are
then written from those files only — every number in the report comes from the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from csae_bench.utils import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
RANDOM_CONTROL = "zero+isotropic"
"""The random-direction control of DESIGN §5 as an ablation row: zero ablation measured against
an isotropic random direction of equal norm (instead of the default other-feature control)."""


@dataclass
class AblationConfig:
    """Settings of the ablation study (defaults: ≤ 25 minutes on 2 shared CPU cores)."""

    seeds: tuple[int, ...] = (0, 1)
    """Training seeds (each: its own activation stream, SAE inits and NCES feature sample)."""
    layer: int = 6
    """Layer of ``blocks.<layer>.hook_resid_post`` on the embedded Gemma-3-270M."""
    d_sae: int = 1024
    """Features per SAE."""
    target_l0: int = 32
    """k of TopK / CSAE / random-decoder: the L0 they are matched at."""
    train_tokens: int = 32_768
    """Training tokens per SAE."""
    batch_size: int = 256
    """Tokens per optimizer step."""
    context_size: int = 128
    """Tokens per context (training and eval)."""
    grad_tokens: int = 512
    """Tokens in the CSAE's gradient pool (one pool per seed, shared by the CSAE variants)."""
    n_grad_samples: int = 2
    """Sampled next tokens per pool position."""
    verify_every: int = 16
    """CSAE verification interval in steps (when on)."""
    eval_contexts: int = 8
    """Eval contexts (held-out split), the same for every seed, SAE and eval."""
    core_contexts: int = 4
    """Of those, contexts the core eval runs on (its full-vocabulary forwards dominate its cost)."""
    interventions: tuple[str, ...] = (
        "zero",
        "mean",
        "resample",
        "clamp:2",
        "clamp:-1",
        RANDOM_CONTROL,
    )
    """Intervention types compared (``zero+isotropic`` = zero ablation vs the isotropic control)."""
    type_saes: tuple[str, ...] = ("topk", "csae", "random-decoder")
    """SAEs evaluated under every intervention type."""
    n_features: int = 12
    """Features sampled per NCES run."""
    tokens_per_feature: int = 3
    """Active tokens per sampled feature."""
    effect_window: int = 4
    """NCES window W."""
    n_bootstrap: int = 500
    """Bootstrap resamples of the NCES confidence intervals."""
    variants: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "csae-no-causal-term": {"causal_coeff": 0.0},
            "csae-no-verification": {"verify_every": 0},
        }
    )
    """CSAE variants with one causal part off: name -> TrainConfig overrides."""

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_post"


# ---------------------------------------------------------------- running the study


class _Study:
    def __init__(self, cfg: AblationConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self._model: Any = None
        self._eval_tokens: Any = None
        self._engine: Any = None

    @property
    def model(self):
        if self._model is None:
            from csae_bench.models import load_model

            self._model = load_model("embedded")
        return self._model

    @property
    def eval_tokens(self):
        if self._eval_tokens is None:
            from csae_bench.data import load_tokens

            self._eval_tokens = load_tokens(
                self.model.tokenizer,
                split="eval",
                context_size=self.cfg.context_size,
                n_contexts=self.cfg.eval_contexts,
                seed=0,
            )
        return self._eval_tokens

    def seed_dir(self, seed: int) -> Path:
        return self.out / f"seed{seed}"

    def train(self, seed: int) -> dict[str, Path]:
        """Every SAE of one seed: ``{name: folder}`` (trained now, or found from an earlier run)."""
        from csae_bench.training import SUMMARY_NAME, TrainConfig, train_alongside

        c, sd = self.cfg, self.seed_dir(seed)
        base = dict(
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
        groups: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
            "main": (tuple(dict.fromkeys((*c.type_saes, "csae"))), {})
        }
        groups |= {name: (("csae",), overrides) for name, overrides in c.variants.items()}
        folders: dict[str, Path] = {}
        todo = [
            g
            for g, (archs, _) in groups.items()
            if not all((sd / g / a / SUMMARY_NAME).exists() for a in archs)
        ]
        source: Any = None
        pool: Any = None
        if todo:
            source, pool = self._stream(seed)
        for g, (archs, overrides) in groups.items():
            tc = TrainConfig.from_flat(architectures=archs, **{**base, **overrides})
            if g in todo:
                logger.info("seed %d: training %s (%s)", seed, g, ", ".join(archs))
            done = (
                train_alongside(self.model, source, tc, sd / g, gradient_pool=pool)
                if g in todo
                else {a: sd / g / a for a in archs}
            )
            for a in archs:
                folders[a if g == "main" else g] = Path(done[a])
        return folders

    def _stream(self, seed: int) -> tuple[Any, Any]:
        from csae_bench.activations.gradient_pool import GradientPool, harvest_gradient_pool
        from csae_bench.activations.harvest import ActivationSource
        from csae_bench.data import load_tokens

        c, sd = self.cfg, self.seed_dir(seed)
        n_ctx = math.ceil(c.train_tokens / (c.context_size - 1))
        toks: Any = load_tokens(
            self.model.tokenizer,
            split="train",
            context_size=c.context_size,
            n_contexts=n_ctx,
            seed=seed,
        )
        source = ActivationSource(
            self.model, c.hook_name, toks, seed=seed, cache_path=sd / "activations.safetensors"
        )
        pool_path = sd / "gradient_pool.safetensors"
        if pool_path.exists():
            pool = GradientPool.load(pool_path)
        else:
            pool = harvest_gradient_pool(
                self.model,
                c.hook_name,
                toks[: math.ceil(c.grad_tokens / (c.context_size - 1))],
                n_samples=c.n_grad_samples,
                seed=seed,
                show_progress=False,
            )
            pool.save(pool_path)
        return source, pool

    def core(self, seed: int, name: str, folder: Path) -> dict[str, Any]:
        path = self.seed_dir(seed) / "evals" / f"core_{name}.json"
        if path.exists():
            return json.loads(path.read_text())
        from csae_bench.evals.registry import EvalContext, get_eval
        from csae_bench.pipeline import load_sae
        from csae_bench.reporting.results import flat_metrics, metric_flags
        from csae_bench.utils import eval_output_json

        spec = get_eval("core")
        ctx = EvalContext(
            model=self.model,
            hook_name=self.cfg.hook_name,
            eval_tokens=self.eval_tokens,
            seed=seed,
            model_name="embedded",
        )
        t0 = time.perf_counter()
        overrides = {
            "batch_size_prompts": self.cfg.core_contexts,
            "n_eval_sparsity_variance_batches": 1,
        }
        assert spec.make_config is not None  # core builds its config from the eval tokens
        output = spec.run(ctx, load_sae(folder), name, spec.make_config(ctx, overrides))
        raw = json.loads(eval_output_json(output))["eval_result_metrics"]
        record = {
            "seed": seed,
            "sae": name,
            "seconds": time.perf_counter() - t0,
            # non-finite metrics (the random decoder's kl_div_score) are left out, named here
            "metrics": flat_metrics(raw),
            "non_finite_metrics": metric_flags("core", raw),
            "training": json.loads((folder / "training_summary.json").read_text()),
        }
        atomic_write_json(path, record)
        return record

    def nces(self, seed: int, name: str, folder: Path, intervention: str) -> dict[str, Any]:
        path = self.seed_dir(seed) / "evals" / f"nces_{name}_{intervention.replace(':', '=')}.json"
        if path.exists():
            return json.loads(path.read_text())
        from csae_bench.evals.nces import NCESEvalConfig, evaluate_sae
        from csae_bench.evals.nces.run import build_engine
        from csae_bench.pipeline import load_sae

        c = self.cfg
        kind, control = (
            ("zero", "isotropic") if intervention == RANDOM_CONTROL else (intervention, "feature")
        )
        config = NCESEvalConfig(
            model_name="embedded",
            hook_name=c.hook_name,
            intervention=kind,
            control=control,
            effect_window=c.effect_window,
            n_features=c.n_features,
            tokens_per_feature=c.tokens_per_feature,
            n_bootstrap=c.n_bootstrap,
            compute_attribution=False,
            random_seed=seed,
        )
        if self._engine is None:
            self._engine = build_engine(self.model, c.hook_name, self.eval_tokens, config)
        t0 = time.perf_counter()
        out = json.loads(
            evaluate_sae(
                self.model,
                load_sae(folder),
                self.eval_tokens,
                c.hook_name,
                config,
                name,
                engine=self._engine,
            ).to_json()
        )
        record = {
            "seed": seed,
            "sae": name,
            "intervention": intervention,
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
        atomic_write_json(path, record)
        return record


def run_study(cfg: AblationConfig, out: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Train and evaluate everything of the study under ``out`` (resuming); returns the records."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "ablation_config.json", asdict(cfg))
    study = _Study(cfg, out)
    started = time.perf_counter()
    for seed in cfg.seeds:
        folders = study.train(seed)
        for name, folder in folders.items():
            study.core(seed, name, folder)
            logger.info(
                "seed %d: core %s done (%.0f s elapsed)", seed, name, time.perf_counter() - started
            )
        for name in cfg.type_saes:
            for kind in cfg.interventions:
                study.nces(seed, name, folders[name], kind)
            logger.info(
                "seed %d: NCES of %s under %d types done (%.0f s elapsed)",
                seed,
                name,
                len(cfg.interventions),
                time.perf_counter() - started,
            )
        for name in cfg.variants:
            study.nces(seed, name, folders[name], "zero")
    atomic_write_json(
        out / "ablation_wall_seconds.json",
        {"seconds_this_invocation": time.perf_counter() - started},
    )
    return load_records(out)


def load_records(out: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Every record the study wrote under ``out``: ``{"core": [...], "nces": [...]}``."""
    records: dict[str, list[dict[str, Any]]] = {"core": [], "nces": []}
    for path in sorted(Path(out).glob("seed*/evals/*.json")):
        records["core" if path.name.startswith("core_") else "nces"].append(
            json.loads(path.read_text())
        )
    if not records["core"] and not records["nces"]:
        raise FileNotFoundError(
            f"No ablation results under {out}; run `python -m csae_bench.studies.ablation --out {out}`."
        )
    return records


# ---------------------------------------------------------------- the report


def _ms(values: Sequence[float | None]) -> tuple[float, float, int]:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def _fmt(stat: tuple[float, float, int], digits: int = 3) -> str:
    mean, sd, n = stat
    if n == 0 or not np.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def summarize(records: dict[str, list[dict[str, Any]]], cfg: AblationConfig) -> dict[str, Any]:
    """The numbers of the report, all computed from ``records``."""
    nces = records["nces"]
    by = defaultdict(list)
    for r in nces:
        by[(r["sae"], r["intervention"])].append(r)
    types = [t for t in cfg.interventions if any(k[1] == t for k in by)]
    seeds = sorted({r["seed"] for r in nces} | {r["seed"] for r in records["core"]})
    trained = [s for s in cfg.type_saes if s != "random-decoder"]

    type_rows = []
    for t in types:
        row: dict[str, Any] = {"type": t}
        for s in cfg.type_saes:
            rs = by.get((s, t), [])
            row[s] = {
                "nces_mean": _ms([r["metrics"]["nces_mean"] for r in rs]),
                "frac_verified": _ms([r["metrics"]["frac_causally_verified"] for r in rs]),
                "median_effect": _ms([r["metrics"]["median_effect"] for r in rs]),
            }
        # separation: trained SAE minus the random-decoder null, per seed, then over seeds
        gaps, fp = [], []
        for seed in seeds:
            null = [r for r in by.get(("random-decoder", t), []) if r["seed"] == seed]
            for s in trained:
                mine = [r for r in by.get((s, t), []) if r["seed"] == seed]
                if (
                    null
                    and mine
                    and mine[0]["metrics"]["nces_mean"] is not None
                    and null[0]["metrics"]["nces_mean"] is not None
                ):
                    gaps.append(mine[0]["metrics"]["nces_mean"] - null[0]["metrics"]["nces_mean"])
            if null:
                fp.append(null[0]["metrics"]["frac_causally_verified"])
        row["separation"] = _ms(gaps)
        row["null_verified"] = _ms(fp)
        # stability: per-feature NCES rank agreement with zero ablation on the same features
        rhos = []
        for s in cfg.type_saes:
            for seed in seeds:
                a = {
                    f["feature_idx"]: f["nces"]
                    for r in by.get((s, "zero"), [])
                    if r["seed"] == seed
                    for f in r["features"]
                }
                b = {
                    f["feature_idx"]: f["nces"]
                    for r in by.get((s, t), [])
                    if r["seed"] == seed
                    for f in r["features"]
                }
                common = [k for k in a if k in b and a[k] is not None and b[k] is not None]
                rho = _spearman([a[k] for k in common], [b[k] for k in common])
                if np.isfinite(rho):
                    rhos.append(rho)
        row["rank_vs_zero"] = _ms(rhos)
        row["seed_sd"] = float(
            np.nanmean(
                [row[s]["nces_mean"][1] for s in cfg.type_saes if row[s]["nces_mean"][2] > 1]
                or [float("nan")]
            )
        )
        type_rows.append(row)
    scored = [r for r in type_rows if r["separation"][2] > 0]
    best = max(scored, key=lambda r: r["separation"][0]) if scored else None

    core_by = defaultdict(list)
    for r in records["core"]:
        core_by[r["sae"]].append(r)
    zero = {k[0]: v for k, v in by.items() if k[1] == "zero"}
    parts_names = [n for n in ("topk", "csae", *cfg.variants, "random-decoder") if n in core_by]
    parts = []
    for n in parts_names:
        cm = [r["metrics"] for r in core_by[n]]
        parts.append(
            {
                "sae": n,
                "l0": _ms([m.get("sparsity.l0") for m in cm]),
                "ce_loss_score": _ms(
                    [m.get("model_performance_preservation.ce_loss_score") for m in cm]
                ),
                "ev_centred": _ms(
                    [m.get("reconstruction_quality.explained_variance_mean_centred") for m in cm]
                ),
                "frac_alive": _ms([m.get("misc_metrics.frac_alive") for m in cm]),
                "train_seconds": _ms(
                    [
                        r["training"].get("wall_seconds", r["training"].get("seconds"))
                        for r in core_by[n]
                    ]
                ),
                "nces_mean": _ms([r["metrics"]["nces_mean"] for r in zero.get(n, [])]),
                "frac_verified": _ms(
                    [r["metrics"]["frac_causally_verified"] for r in zero.get(n, [])]
                ),
            }
        )

    def paired(a: str, b: str, getter) -> list[float]:
        out = []
        for seed in seeds:
            va, vb = getter(a, seed), getter(b, seed)
            if va is not None and vb is not None:
                out.append(va - vb)
        return out

    def nces_of(n, seed):
        rs = [r for r in zero.get(n, []) if r["seed"] == seed]
        return rs[0]["metrics"]["nces_mean"] if rs else None

    def core_of(metric):
        def get(n, seed):
            rs = [r for r in core_by.get(n, []) if r["seed"] == seed]
            return rs[0]["metrics"].get(metric) if rs else None

        return get

    verdict = {
        "nces_gain": paired("csae", "topk", nces_of),
        "csae_vs_null": paired("csae", "random-decoder", nces_of),
        "ce_gain": paired("csae", "topk", core_of("model_performance_preservation.ce_loss_score")),
        "ev_gain": paired(
            "csae", "topk", core_of("reconstruction_quality.explained_variance_mean_centred")
        ),
        "l0_gap": paired("csae", "topk", core_of("sparsity.l0")),
    }
    return {
        "types": type_rows,
        "best": best,
        "parts": parts,
        "verdict": verdict,
        "seeds": seeds,
        "n_nces_runs": len(nces),
        "nces_seconds": float(sum(r["seconds"] for r in nces)),
        "core_seconds": float(sum(r["seconds"] for r in records["core"])),
    }


def _plots(summary: dict[str, Any], cfg: AblationConfig, img: Path) -> list[Path]:
    import matplotlib

    from csae_bench.reporting.plots import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    rows = summary["types"]
    if rows:
        fig, ax = plt.subplots(figsize=(7.5, 4))
        x = np.arange(len(rows))
        width = 0.8 / max(1, len(cfg.type_saes))
        for i, s in enumerate(cfg.type_saes):
            m = [r[s]["nces_mean"][0] for r in rows]
            e = [r[s]["nces_mean"][1] if r[s]["nces_mean"][2] > 1 else 0 for r in rows]
            ax.bar(
                x + (i - (len(cfg.type_saes) - 1) / 2) * width, m, width, yerr=e, capsize=3, label=s
            )
        ax.axhline(0, color="k", linewidth=0.8)
        ax.set_xticks(x, [r["type"] for r in rows], rotation=20)
        ax.set_ylabel("mean NCES (± sd over seeds)")
        ax.set_title("NCES by intervention type")
        ax.legend(fontsize=8)
        made.append(save_figure(fig, img / "ablation_intervention_types.png", dpi=80))
    parts = [p for p in summary["parts"] if p["nces_mean"][2] and p["ce_loss_score"][2]]
    if parts:
        fig, ax = plt.subplots(figsize=(6, 4))
        for p in parts:
            ax.errorbar(
                p["ce_loss_score"][0],
                p["nces_mean"][0],
                xerr=p["ce_loss_score"][1],
                yerr=p["nces_mean"][1],
                fmt="o",
                capsize=3,
                label=f"{p['sae']} (L0 {p['l0'][0]:.0f})",
            )
        ax.set_xlabel("CE-loss score (SAEBench core, higher is better)")
        ax.set_ylabel("mean NCES, zero ablation")
        ax.set_title("CSAE causal parts vs TopK at matched L0")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        made.append(save_figure(fig, img / "ablation_causal_parts.png", dpi=80))
    return made


def render_report(
    summary: dict[str, Any], cfg: AblationConfig, images: list[Path], docs: Path, out: Path
) -> str:
    """``docs/ablations.md`` as text."""
    seeds = summary["seeds"]
    L = [
        "# Ablation study: intervention types and the CSAE's causal parts",
        "",
        "*Generated by `python -m csae_bench.studies.ablation --out "
        + f"{out.name}` — do not edit by hand; every "
        "number below is read from that run's files.*",
        "",
        "## Setup",
        "",
        f"Embedded Gemma-3-270M, `{cfg.hook_name}`, seeds {', '.join(map(str, seeds))}. Per seed: one "
        f"activation stream of {cfg.train_tokens:,} training tokens (context {cfg.context_size}), TopK, CSAE "
        f"and a frozen random-decoder control trained alongside (d_sae {cfg.d_sae}, k = {cfg.target_l0}, "
        f"so L0 is matched by construction), and the CSAE variants "
        f"{', '.join(f'`{n}` ({v})' for n, v in cfg.variants.items())} trained on the same stream "
        f"(gradient pool: {cfg.grad_tokens} tokens × {cfg.n_grad_samples} samples; verification every "
        f"{cfg.verify_every} steps). Evals on the same {cfg.eval_contexts} held-out contexts for every SAE: "
        f"SAEBench core (on {cfg.core_contexts} of them), and NCES with {cfg.n_features} features × {cfg.tokens_per_feature} tokens, "
        f"W = {cfg.effect_window}, {cfg.n_bootstrap} bootstrap resamples. Within a seed every intervention "
        "type is measured on the same sampled features and tokens. Mean ± sd are over seeds. "
        f"{summary['n_nces_runs']} NCES runs took {summary['nces_seconds']:.0f} s, core evals "
        f"{summary['core_seconds']:.0f} s"
        + (
            f"; the whole study {summary['wall_seconds'] / 60:.0f} min of wall time."
            if summary.get("wall_seconds")
            else "."
        ),
        "",
        "Intervention types: `zero`, `mean` (over active tokens), `resample` (the value at a random other "
        "token), `clamp:α` (α · max activation), each against the default control (another alive "
        "feature's decoder direction, inactive at that token; see docs/nces.md); "
        f"`{RANDOM_CONTROL}` is DESIGN §5's random-direction control (zero ablation vs an isotropic "
        "random direction of the same norm).",
        "",
        "## Which intervention type separates causally verified features best",
        "",
        "*Separation* = mean NCES of a trained SAE (TopK, CSAE) minus that of the random-decoder SAE "
        "on the same seed (a dictionary of random directions should not be causally specific, so it is "
        "the null); *null verified* = fraction of the random-decoder's features that pass verification "
        "(a false-positive rate). *Rank vs zero* = Spearman of per-feature NCES against zero ablation "
        "on the same features (stability across types).",
        "",
    ]
    head = (
        "| type | "
        + " | ".join(f"NCES {s}" for s in cfg.type_saes)
        + " | verified csae | separation | null verified | rank vs zero |"
    )
    L += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in summary["types"]:
        L.append(
            f"| `{r['type']}` | "
            + " | ".join(_fmt(r[s]["nces_mean"]) for s in cfg.type_saes)
            + f" | {_fmt(r['csae']['frac_verified'], 2) if 'csae' in r else '—'} | {_fmt(r['separation'])} | "
            f"{_fmt(r['null_verified'], 2)} | {_fmt(r['rank_vs_zero'], 2)} |"
        )
    best = summary["best"]
    L.append("")
    if best:
        ranked = sorted(
            (r for r in summary["types"] if r["separation"][2]), key=lambda r: -r["separation"][0]
        )
        runner = ranked[1] if len(ranked) > 1 else None
        overlap = (
            runner is not None
            and (best["separation"][0] - best["separation"][1]) < runner["separation"][0]
        )
        L.append(
            f"**Best separation: `{best['type']}`** (trained minus null {_fmt(best['separation'])}"
            + (f"; next: `{runner['type']}` {_fmt(runner['separation'])}" if runner else "")
            + "). "
            + (
                "The top two are within one seed-sd of each other, so this ranking is not settled by "
                f"{len(seeds)} seeds."
                if overlap
                else "The margin over the next type exceeds one seed-sd."
            )
        )
        clear = [
            r["type"]
            for r in ranked
            if r["separation"][2] > 1 and r["separation"][0] > 2 * r["separation"][1]
        ]
        L.append(
            ""
            if not ranked
            else "Types whose separation exceeds twice its seed-sd: "
            + (
                ", ".join(f"`{t}`" for t in clear)
                if clear
                else "none — at this scale no intervention type "
                "separates trained features from the random-decoder null beyond seed noise"
            )
            + "."
        )
    L += [
        "",
        f"![NCES by intervention type](img/{images[0].name})" if images else "",
        "",
        "## How stable NCES is",
        "",
    ]
    sds = [r["seed_sd"] for r in summary["types"] if np.isfinite(r["seed_sd"])]
    if sds:
        L.append(
            f"Seed-to-seed sd of an SAE's mean NCES, averaged over SAEs: median {np.median(sds):.3f} over "
            f"types (range {min(sds):.3f}–{max(sds):.3f}). Per-feature rank agreement with zero ablation "
            "is in the table's last column (1.00 for `zero` itself, by construction)."
        )
    L += [
        "",
        "## CSAE causal parts vs TopK at matched L0",
        "",
        "| SAE | L0 | CE-loss score | EV (mean-centred) | alive | NCES (zero) | verified |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in summary["parts"]:
        L.append(
            f"| {p['sae']} | {_fmt(p['l0'], 1)} | {_fmt(p['ce_loss_score'])} | {_fmt(p['ev_centred'])} | "
            f"{_fmt(p['frac_alive'], 2)} | {_fmt(p['nces_mean'])} | {_fmt(p['frac_verified'], 2)} |"
        )
    v = summary["verdict"]

    def d(xs: list[float]) -> str:
        m, s, n = _ms(xs)
        return (
            f"{m:+.3f} (sd {s:.3f}, n = {n}; CSAE ahead on {sum(x > 0 for x in xs)}/{n} seeds)"
            if n
            else "—"
        )

    L += [
        "",
        "Paired by seed, CSAE minus TopK: "
        f"NCES {d(v['nces_gain'])}; CE-loss score {d(v['ce_gain'])}; mean-centred EV {d(v['ev_gain'])}; "
        f"L0 {d(v['l0_gap'])}.",
        "",
    ]
    null_gap = v.get("csae_vs_null", [])
    if null_gap:
        L += [
            f"CSAE minus the random-decoder null on NCES (zero ablation), paired by seed: {d(null_gap)}.",
            "",
        ]
    nm, ns, nn = _ms(v["nces_gain"])
    cm, cs, cn = _ms(v["ce_gain"])
    if nn:
        beats = nm > 0 and all(x > 0 for x in v["nces_gain"])
        keeps = cn and cm > -max(cs, 0.01)
        L.append(
            "**Verdict:** the CSAE "
            + ("beats" if beats else "does not consistently beat")
            + " TopK on NCES at matched L0 in this run, and "
            + ("does not lose" if keeps else "loses")
            + " on the CE-loss score "
            "(a loss counts when the mean drop exceeds both its seed-sd and 0.01). "
            f"With {len(seeds)} seeds and {cfg.n_features} features per run this is indicative, not a "
            "significance test."
        )
    if len(images) > 1:
        L += ["", f"![causal parts](img/{images[1].name})"]
    L += [
        "",
        "## Reproduce",
        "",
        "```",
        f"python -m csae_bench.studies.ablation --out {out.name}",
        "```",
        "",
        "Re-running resumes from the files in `--out`; `--report-only` rewrites this page from them.",
        "",
    ]
    text = "\n".join(L)
    atomic_write_text(docs / "ablations.md", text)
    return text


def write_report(out: str | Path, docs: str | Path, cfg: AblationConfig | None = None) -> Path:
    """Summarize the study under ``out`` into ``docs/ablations.md`` and ``docs/img/ablation_*.png``."""
    out, docs = Path(out), Path(docs)
    if cfg is None:
        saved = out / "ablation_config.json"
        saved_kwargs: dict[str, Any] = {}
        if saved.exists():
            saved_kwargs = {
                k: tuple(v) if isinstance(v, list) else v
                for k, v in json.loads(saved.read_text()).items()
            }
        cfg = AblationConfig(**saved_kwargs)
    summary = summarize(load_records(out), cfg)
    wall = out / "ablation_wall_seconds.json"
    if wall.exists():
        summary["wall_seconds"] = json.loads(wall.read_text())["seconds_this_invocation"]
    images = _plots(summary, cfg, docs / "img")
    render_report(summary, cfg, images, docs, out)
    return docs / "ablations.md"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m csae_bench.studies.ablation", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--out", required=True, help="folder for the study's SAEs and eval records (resumable)"
    )
    parser.add_argument(
        "--docs", default=str(REPO / "docs"), help="where ablations.md and img/ go [default: docs/]"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="training seeds [default: 0 1]"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="only rewrite the report from --out"
    )
    args = parser.parse_args(argv)
    from csae_bench.run import _setup_logging

    _setup_logging(False)
    kwargs: dict[str, Any] = {"seeds": tuple(args.seeds)} if args.seeds else {}
    cfg = AblationConfig(**kwargs)
    if not args.report_only:
        run_study(cfg, args.out)
    path = write_report(args.out, args.docs, None if args.report_only else cfg)
    logger.info("Wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

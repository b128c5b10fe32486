"""NCES of one SAE with its per-intervention effects kept (the validity study's raw material).

The public NCES output keeps per-feature means only; the validity study's hierarchical bootstrap
and its raw-effect metrics need every intervention. Rather than add them to the public schema,
:func:`nces_with_tokens` runs the unchanged :func:`csae_bench.evals.nces.run.evaluate_sae` through
a :class:`RecordingEngine` — the shared engine with its one ``effects`` call recorded — and
rebuilds the per-token table from that call and the per-feature details: the engine is handed the
``M`` feature edits followed by their ``M`` controls, in feature order (each sampled feature's
tokens contiguous, ``n_tokens`` of them, :func:`~csae_bench.evals.nces.sampling.sample_tokens`).
Each feature's recorded mean effect is checked against the public detail, so a change in that
order fails loudly instead of mislabelling tokens.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from csae_bench.errors import JobFailedError
from csae_bench.evals.nces import NCESEvalConfig

DETAIL_KEYS = (
    "feature_idx",
    "frequency",
    "stratum",
    "sampling_weight",
    "n_tokens",
    "status",
    "effect",
    "control_effect",
    "nces",
)
"""Per-feature fields kept from the public NCES details."""


class CaptureError(JobFailedError, RuntimeError):
    """The recorded interventions do not line up with the NCES details."""


class RecordingEngine:
    """An :class:`~csae_bench.interventions.engine.EffectEngine` that records the arguments and
    results of its ``effects`` calls (everything else is the wrapped engine's)."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.calls: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def effects(self, ctx_M, pos_M, delta_MD, **kwargs):
        eff = self._engine.effects(ctx_M, pos_M, delta_MD, **kwargs)
        self.calls.append(
            {
                "ctx": ctx_M.cpu().numpy(),
                "pos": pos_M.cpu().numpy(),
                "edit_norm_sq": delta_MD.double().pow(2).sum(-1).cpu().numpy(),
                "kl": eff.kl.double().cpu().numpy(),
            }
        )
        return eff


def token_table(call: dict[str, np.ndarray], details: list[dict[str, Any]]) -> dict[str, list]:
    """The per-intervention table (columns) from one recorded ``effects`` call: ``feature`` (index
    into ``details``), ``ctx``, ``pos``, ``kl``, ``kl_control``, ``edit_norm_sq`` (‖δ‖², the
    control's is equal by construction).

    Raises:
        CaptureError: the call's size or a feature's mean effect disagrees with ``details``.
    """
    counts = [int(d["n_tokens"]) for d in details]
    M = sum(counts)
    if len(call["kl"]) != 2 * M:
        raise CaptureError(
            f"The engine ran {len(call['kl'])} interventions, the details imply 2 × {M}; "
            "evaluate_sae's call order changed — update csae_bench/studies/validity/capture.py."
        )
    owner = np.repeat(np.arange(len(details)), counts)
    kl, kl_ctrl = call["kl"][:M], call["kl"][M:]
    for j, d in enumerate(details):
        if d.get("effect") is not None:
            mine = float(kl[owner == j].mean())
            if not np.isclose(mine, d["effect"], rtol=1e-6, atol=1e-12):
                raise CaptureError(
                    f"Feature {d['feature_idx']}: recorded mean effect {mine} != reported "
                    f"{d['effect']}; the per-token table would be mislabelled."
                )
    return {
        "feature": owner.tolist(),
        "ctx": call["ctx"][:M].tolist(),
        "pos": call["pos"][:M].tolist(),
        "kl": kl.tolist(),
        "kl_control": kl_ctrl.tolist(),
        "edit_norm_sq": call["edit_norm_sq"][:M].tolist(),
    }


def nces_with_tokens(
    model, sae, tokens, hook_name: str, config: NCESEvalConfig, sae_id: str, engine, cache=None
) -> dict[str, Any]:
    """NCES of ``sae`` as ``{"metrics", "features", "tokens"}``: the public aggregate metrics,
    the per-feature details (:data:`DETAIL_KEYS`) and the per-intervention table
    (:func:`token_table`)."""
    from csae_bench.evals.nces.run import evaluate_sae

    rec = RecordingEngine(engine)
    out = json.loads(
        evaluate_sae(
            model, sae, tokens, hook_name, config, sae_id, engine=rec, cache=cache
        ).to_json()
    )
    details = [{k: d[k] for k in DETAIL_KEYS} for d in out["eval_result_details"]]
    if len(rec.calls) != 1:
        raise CaptureError(f"Expected one effects call, got {len(rec.calls)}.")
    return {
        "metrics": out["eval_result_metrics"]["nces"],
        "features": details,
        "tokens": token_table(rec.calls[0], details),
    }

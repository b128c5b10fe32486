"""Causal verification: do the features a probe selects move the behaviour the label drives?

The **behaviour** of an example is a signed margin ``s = m(label) − m(other label)``, positive when
the model sides with the label:

- templated tasks: the logit difference between the correct and the incorrect next token at the
  last position;
- text tasks: the logit of a logistic probe fitted (on clean train examples) to the residual
  ``behaviour_layer_offset`` blocks after the SAE's hook, mean-pooled over the text.

An **edit** changes features through the SAE while keeping its error term
(``csae_bench.interventions.feature_edit_BTD``): at the last token for templated tasks (where the
probe reads), at every token after BOS for text tasks (which are read as a mean). Interventions:

- ``zero``: the features are set to 0;
- ``clamp:<a>``: the features whose class-mean difference points to the *other* label are set to
  ``a · max`` (their maximum over the task's training reads) — steering against the label.

The **effect** on an example is ``Δ = s_clean − s_edited`` (how much the edit pushes the model away
from the label). The selected top-k features are compared with ``n_random_sets`` sets of k random
features that are active on the task (and not selected), over the same examples. The statistic is
``D = mean Δ_selected − mean Δ_random``; its confidence interval comes from a two-level bootstrap
(random sets, then examples, resampled with replacement). The task **passes** an intervention when
the lower end of the interval is above ``min_relative_effect`` times the mean |clean margin| (a
difference must be both significant and large enough to matter). The effect size is ``D`` over the mean |clean margin|
(the fraction of the model's clean margin the selected features remove beyond random ones), with
Cohen's ``d_z`` of the per-example differences alongside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from csae_bench.errors import BadInputError
from csae_bench.evals.probing import model_io as io
from csae_bench.evals.probing.output import InterventionVerificationDetail
from csae_bench.interventions import Intervention, make_intervention
from csae_bench.interventions.types import FeatureStats, feature_edit_BTD


class VerificationError(BadInputError, ValueError):
    """Verification cannot run as asked; the message says what to do."""


# ---------------------------------------------------------------- behaviour


@dataclass
class Behaviour:
    """Reads the signed margin from the residual right after the SAE's hook."""

    kind: str  # "logit_diff" | "later_probe"
    hook_name: str
    read: str
    stop_at_layer: int | None
    answer_ids: Tensor | None = None  # [2]: token of label 0, token of label 1
    probe_w_D: Tensor | None = None
    probe_b: float = 0.0

    @torch.no_grad()
    def raw(self, model, resid_BTD: Tensor, batch: io.Batch) -> Tensor:
        """``m(1) − m(0)`` per example ``[B]`` (before signing by the label)."""
        out = io.resume(model, self.hook_name, resid_BTD, self.stop_at_layer)
        if self.kind == "logit_diff":
            return self.logit_diff(model, out[torch.arange(len(out)), batch.last_B.to(out.device)])
        return self.probe_logit(io.pool(out, batch, self.read))

    def logit_diff(self, model, final_resid_ND: Tensor) -> Tensor:
        """``logit(answer 1) − logit(answer 0)`` ``[N]`` from residuals after the last block at the
        answer position ``[N, D]`` (logit-difference behaviours only)."""
        assert self.answer_ids is not None
        ids = self.answer_ids.to(final_resid_ND.device)
        logits = io.answer_logits(model, final_resid_ND, ids)
        return (logits[:, 1] - logits[:, 0]).float().cpu()

    def probe_logit(self, pooled_BD: Tensor) -> Tensor:
        """Later-probe behaviour from already pooled later-layer residuals ``[B, D]``."""
        assert self.probe_w_D is not None
        pooled = pooled_BD.float()
        return (pooled @ self.probe_w_D.to(pooled.device) + self.probe_b).cpu()

    def signed(self, model, resid_BTD: Tensor, batch: io.Batch, labels_B: Tensor) -> Tensor:
        raw = self.raw(model, resid_BTD, batch)
        return torch.where(labels_B == 1, raw, -raw)


def logit_diff_behaviour(model, hook_name: str, answers: tuple[str, str]) -> Behaviour:
    ids = torch.tensor([io.single_token_id(model, a) for a in answers])
    return Behaviour("logit_diff", hook_name, "last", None, answer_ids=ids)


def fit_later_probe_behaviour(
    model,
    hook_name: str,
    read: str,
    stop_at_layer: int,
    later_BD_train: Tensor,
    labels_train: Tensor,
) -> Behaviour:
    """A logistic probe on standardized later-layer activations, folded into one ``w, b``."""
    from csae_bench.evals.probing.probe import fit_probe

    mu = later_BD_train.mean(0)
    sd = later_BD_train.std(0).clamp(min=1e-6)
    z = (later_BD_train - mu) / sd
    probe, _ = fit_probe(z, labels_train, z, labels_train)
    w = torch.as_tensor(probe.coef_[0], dtype=torch.float32) / sd
    b = float(probe.intercept_[0]) - float((w * mu).sum())
    return Behaviour("later_probe", hook_name, read, stop_at_layer, probe_w_D=w, probe_b=b)


# ---------------------------------------------------------------- edits


def positions_mask(batch: io.Batch, read: str) -> Tensor:
    """``[B, T]`` where the edit applies: the last token (``last``) or every token after BOS."""
    if read == "last":
        mask = torch.zeros_like(batch.tokens_BT, dtype=torch.bool)
        mask[torch.arange(len(mask)), batch.last_B] = True
        return mask
    return batch.content_mask_BT


@torch.no_grad()
def fit_intervention(
    spec: str, sae, resid_chunks: list[tuple[Tensor, io.Batch, Tensor]], read: str
) -> Intervention:
    """``make_intervention(spec)`` fitted on the SAE features at the task's read positions of the
    examples each chunk's boolean ``keep_B`` marks (the training examples)."""
    intervention = make_intervention(spec)
    if not intervention.needs_stats:
        return intervention
    stats = FeatureStats.empty(int(sae.W_dec.shape[0]), pool_size=256)
    for resid, batch, keep_B in resid_chunks:
        feats = sae.encode(resid.to(sae.W_dec.dtype))
        mask = positions_mask(batch, read) & keep_B[:, None]
        if mask.any():
            stats.update(feats[mask.to(feats.device)])
    return intervention.fit_stats(stats)


@torch.no_grad()
def edit_residual(
    sae,
    resid_BTD: Tensor,
    batch: io.Batch,
    labels_B: Tensor,
    read: str,
    feature_idx_K: Tensor,
    sign_K: Tensor,
    intervention: Intervention,
) -> Tensor:
    """The residual with ``feature_idx_K`` edited at the task's positions, error term kept.

    Zero-like interventions edit every feature; a clamp edits, per example, only the features whose
    sign (``+1``: higher for label 1) points to the other label."""
    feats = sae.encode(resid_BTD.to(sae.W_dec.dtype))
    idx = feature_idx_K.to(feats.device)
    if intervention.name.startswith("clamp"):
        cur_BTK = feats[..., idx]
        target_BTK = intervention.target(
            cur_BTK.reshape(-1), idx.expand_as(cur_BTK).reshape(-1)
        ).reshape(cur_BTK.shape)
        wrong_BK = (
            sign_K.to(feats.device)[None, :] == (1 - 2 * labels_B.to(feats.device))[:, None]
        )  # points to 1 − y
        new = torch.where(wrong_BK[:, None, :], target_BTK, cur_BTK)
    else:
        new = intervention
    delta_BTD = feature_edit_BTD(sae, resid_BTD, idx, new, feature_acts=feats)
    mask = positions_mask(batch, read).to(resid_BTD.device, resid_BTD.dtype)
    return resid_BTD + delta_BTD.to(resid_BTD.dtype) * mask[..., None]


# ---------------------------------------------------------------- statistic


def compare_effects(
    intervention: str,
    delta_sel_N: Tensor,
    delta_rand_RN: Tensor,
    clean_margin_N: Tensor,
    n_bootstrap: int,
    confidence: float,
    seed: int,
    min_relative_effect: float = 0.0,
) -> InterventionVerificationDetail:
    """Selected-vs-random statistic with a two-level bootstrap CI (sets, then examples), as the
    result detail the eval output stores (its fields are described there)."""
    sel = delta_sel_N.double().numpy()
    rand = delta_rand_RN.double().numpy()
    n_sets, n = rand.shape
    rng = np.random.default_rng(seed)
    set_idx = rng.integers(0, n_sets, size=(n_bootstrap, n_sets))
    ex_idx = rng.integers(0, n, size=(n_bootstrap, n))
    boot = sel[ex_idx].mean(1) - np.stack(
        [rand[set_idx[b]][:, ex_idx[b]].mean() for b in range(n_bootstrap)]
    )
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    diff = float(sel.mean() - rand.mean())
    per_example = sel - rand.mean(0)
    sd = per_example.std(ddof=1) if n > 1 else 0.0
    scale = float(clean_margin_N.abs().mean())
    return InterventionVerificationDetail(
        intervention=intervention,
        effect_selected=float(sel.mean()),
        effect_random=float(rand.mean()),
        effect_random_per_set=[float(x) for x in rand.mean(1)],
        difference=diff,
        ci_low=float(lo),
        ci_high=float(hi),
        relative_effect=diff / scale if scale > 0 else 0.0,
        cohens_dz=float(per_example.mean() / sd) if sd > 0 else 0.0,
        passed=bool(lo > min_relative_effect * scale),
        n_examples=n,
    )


def random_active_sets(
    active_F: Tensor, exclude: Tensor, k: int, n_sets: int, seed: int
) -> list[Tensor]:
    """``n_sets`` seeded sets of ``k`` features drawn from the active ones, ``exclude`` left out."""
    pool = active_F.clone()
    pool[exclude] = False
    candidates = pool.nonzero().squeeze(-1)
    if len(candidates) < k:
        raise VerificationError(
            f"Only {len(candidates)} features other than the selected ones are active on this task; "
            f"the random control needs {k}. Lower verify_k or min_active_fraction."
        )
    sets = []
    for s in range(n_sets):
        gen = torch.Generator().manual_seed(seed * 1000 + s)
        sets.append(candidates[torch.randperm(len(candidates), generator=gen)[:k]])
    return sets

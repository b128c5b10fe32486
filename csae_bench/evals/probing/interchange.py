"""Interchange interventions on the probing tasks that have counterfactual pairs.

An **interchange intervention** (Geiger et al., "Causal abstractions of neural networks", 2021;
"Inducing causal structure for interpretable neural networks", 2022; the causal-variable track of
MIB, Mueller et al. 2025) runs the model on a *base* prompt with part of its hidden state taken
from a run on a *counterfactual* prompt. Here:

- **pairs**: each test example of a templated task (base) with a counterfactual of the other label
  that tokenizes to the same length and differs at one token (the subject's number, the name, the
  city; ``ProbingTask.counterfactuals`` lists the candidates, the first aligned one is taken). Pairs
  the model answers wrongly in either version are dropped. The answer is the label whose answer
  token has the higher logit (the task's logit-difference behaviour, ``verify.Behaviour``);
- **patch**: at the SAE's hook, at one position (``interchange_position``: the last token, where
  the probes read, or the varied token), ``h_base + W_dec[S]ᵀ (f_cf[S] − f_base[S])`` for the
  selected features ``S`` (only their contribution changes, the SAE's error term is kept;
  ``feature_edit_BTD``). The rest of the model runs on; the intervention **succeeds** when the
  answer flips to the counterfactual's label. **IIA** is the fraction of pairs that flip, with a
  95% Wilson interval.

At equal dimension ``k``, the brackets: ``k`` random active SAE features (seeded sets, mean ± sd),
the ``k`` residual dimensions with the largest |class-mean difference| on the train reads (the
residual probe's own selection), and the projection onto the top-``k`` principal directions of the
train reads (``h_base + P Pᵀ (h_cf − h_base)``). The **ceiling** patches the whole residual vector.

Cost: only the layers after the hook run, and only the positions from the patch on; the base
prefix's keys and values are computed once per pair group (same length and patch position) and
shared by every patched copy (``hooks.frozen_kv_cache``). Everything but the SAE's own patches is
SAE-independent and done once per task (:func:`prepare_pairs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from csae_bench import hooks
from csae_bench.evals.probing import model_io as io
from csae_bench.evals.probing.output import (
    IIAEstimate,
    InterchangeDetail,
    InterchangeKDetail,
    InterchangeMetrics,
)
from csae_bench.evals.probing.probe import select_top_k
from csae_bench.evals.probing.tasks import ProbingTask, TaskSplit
from csae_bench.evals.probing.verify import Behaviour, VerificationError, random_active_sets
from csae_bench.interventions.types import feature_edit_BTD
from csae_bench.stats import mean_sd, wilson_ci

# ---------------------------------------------------------------- pairs


def align(base_T: Tensor, cf_T: Tensor) -> int | None:
    """The one position where two token sequences ``[T]`` differ; None when their lengths differ
    or they differ at no or several positions."""
    if len(base_T) != len(cf_T):
        return None
    diff = (base_T != cf_T).nonzero().flatten()
    return int(diff[0]) if len(diff) == 1 else None


def build_pairs(
    model, task: ProbingTask, rows: list[int] | tuple[int, ...], max_tokens: int
) -> tuple[list[tuple[int, str, int]], int]:
    """``([(row, counterfactual text, varied position)], n_unaligned)``: each row paired with its
    first counterfactual candidate that is token-aligned (:func:`align`, BOS included in the
    positions); rows with none are counted as unaligned."""
    if task.counterfactuals is None:
        raise VerificationError(f"Task {task.name!r} has no counterfactual candidates.")
    pairs, unaligned = [], 0
    for row in rows:
        cands = list(task.counterfactuals[row])
        batch = io.tokenize(model, [task.texts[row], *cands], max_tokens)
        seqs = [batch.tokens_BT[i, : int(n)] for i, n in enumerate(batch.lengths_B)]
        found = next(
            ((c, p) for c, s in zip(cands, seqs[1:]) if (p := align(seqs[0], s)) is not None), None
        )
        if found is None:
            unaligned += 1
        else:
            pairs.append((row, found[0], found[1]))
    return pairs, unaligned


@dataclass
class _Group:
    """Pairs of one length and patch position: the base suffix from the patch on, the base
    prefix's keys and values in the blocks after the hook."""

    idx: Tensor
    suffix_BSD: Tensor
    keys: dict[int, Tensor]
    values: dict[int, Tensor]


@dataclass
class Pairs:
    """A task's usable pairs and the SAE-independent part of the interchange eval."""

    position: str
    start: int
    """First block after the hook."""
    behaviour: Behaviour
    rows: list[int]
    cf_labels_N: Tensor
    base_raw_N: Tensor
    """The clean ``logit(answer 1) − logit(answer 0)`` of each base prompt."""
    h_base_ND: Tensor
    """Residual at the hook at each pair's patch position (base run)."""
    h_cf_ND: Tensor
    groups: list[_Group]
    train_reads_ND: Tensor
    """Train examples' residuals at the patch position (selection, principal directions)."""
    train_labels_N: Tensor
    n_candidates: int
    n_unaligned: int
    n_incorrect: int
    ceiling: IIAEstimate | None = None
    resid: dict[int, tuple[IIAEstimate, list[int]]] = field(default_factory=dict)
    pca: dict[int, IIAEstimate] = field(default_factory=dict)


def estimate(success: Tensor, level: float = 0.95) -> IIAEstimate:
    """IIA of boolean outcomes (any shape) with its Wilson interval."""
    n, k = success.numel(), int(success.sum())
    lo, hi = wilson_ci(k, n, level)
    return IIAEstimate(
        iia=k / n if n else None,
        ci_low=None if math.isnan(lo) else lo,
        ci_high=None if math.isnan(hi) else hi,
        n_success=k,
        n=n,
    )


def _read(by_row: dict, rows: list[int], positions: list[int]) -> Tensor:
    return torch.stack([by_row[r][0][p] for r, p in zip(rows, positions)])


@torch.no_grad()
def prepare_pairs(
    model,
    hook_name: str,
    task: ProbingTask,
    split: TaskSplit,
    candidates: tuple[int, ...],
    chunks: list,
    clean_margin_N: Tensor,
    behaviour: Behaviour,
    cfg,
) -> Pairs:
    """Pairs for the test rows ``candidates`` (the verification examples), filtered to those the
    model answers right in both versions, with the ceiling and the residual-dimension and
    principal-direction brackets for every ``cfg.ks``. ``chunks`` and ``clean_margin_N`` are the
    prepared task's (``run.PreparedTask``); selection reads come from ``split.train``."""
    by_row = io.by_row(chunks)
    test = list(candidates)
    found, unaligned = build_pairs(model, task, test, cfg.max_tokens)
    rows = [r for r, _, _ in found]
    cf = io.tokenize(model, [t for _, t, _ in found], cfg.max_tokens) if found else None
    labels = torch.tensor(task.labels)
    keep: list[int] = []
    h_cf = []
    if cf is not None:
        for sl in io.batched(len(found), cfg.batch_size):
            batch = cf[sl]
            resid = io.residual_at(model, hook_name, batch)
            raw = behaviour.raw(model, resid, batch)
            for j, i in enumerate(range(sl.start, sl.stop)):
                cf_label = 1 - int(labels[rows[i]])
                base_ok = float(clean_margin_N[rows[i]]) > 0
                if base_ok and (raw[j] > 0 if cf_label == 1 else raw[j] < 0):
                    keep.append(i)
                    pos = (
                        int(batch.last_B[j]) if cfg.interchange_position == "last" else found[i][2]
                    )
                    h_cf.append((resid[j, pos], pos))
    pair_rows = [rows[i] for i in keep]
    positions = [p for _, p in h_cf]
    if cfg.interchange_position == "last":
        train_rows = list(split.train)
        train_pos = [len(by_row[r][1]) - 1 for r in train_rows]
    else:  # the varied token of each train example that has an aligned counterfactual
        train_found, _ = build_pairs(model, task, list(split.train), cfg.max_tokens)
        train_rows, train_pos = [r for r, _, _ in train_found], [p for _, _, p in train_found]
    pairs = Pairs(
        position=cfg.interchange_position,
        start=io.resume_layer(model, hook_name),
        behaviour=behaviour,
        rows=pair_rows,
        cf_labels_N=1 - labels[pair_rows],
        base_raw_N=torch.where(
            labels[pair_rows] == 1, clean_margin_N[pair_rows], -clean_margin_N[pair_rows]
        ).float(),
        h_base_ND=_read(by_row, pair_rows, positions) if keep else torch.empty(0),
        h_cf_ND=torch.stack([h for h, _ in h_cf]) if keep else torch.empty(0),
        groups=_groups(model, by_row, pair_rows, positions, io.resume_layer(model, hook_name)),
        train_reads_ND=_read(by_row, train_rows, train_pos).float().cpu(),
        train_labels_N=labels[train_rows],
        n_candidates=len(test),
        n_unaligned=unaligned,
        n_incorrect=len(found) - len(keep),
    )
    if keep:
        _sae_independent_brackets(model, pairs, cfg)
    return pairs


def _groups(model, by_row: dict, rows: list[int], positions: list[int], start: int) -> list[_Group]:
    shapes: dict[tuple[int, int], list[int]] = {}
    for i, (r, p) in enumerate(zip(rows, positions)):
        shapes.setdefault((len(by_row[r][1]), p), []).append(i)
    groups = []
    for (_, p), idx in sorted(shapes.items()):
        resid = torch.stack([by_row[rows[i]][0] for i in idx])
        keys, values = hooks.prefix_kv(model, resid[:, :p], start)
        groups.append(_Group(torch.tensor(idx), resid[:, p:], keys, values))
    return groups


def principal_directions(pairs: Pairs) -> Tensor:
    """``[min(N_train, D), D]``: the principal directions of the train reads, largest first."""
    reads = pairs.train_reads_ND.double()
    return torch.linalg.svd(reads - reads.mean(0), full_matrices=False)[2]


def bracket_deltas(pairs: Pairs, k: int, Vh: Tensor) -> tuple[Tensor, Tensor, list[int]]:
    """``(resid_ND, pca_ND, dims)``: the patches of the ``k`` residual dimensions with the largest
    |class-mean difference| on the train reads (``dims``) and of the projection onto the top-``k``
    principal directions ``Vh[:k]``."""
    diff_ND = pairs.h_cf_ND - pairs.h_base_ND
    dims = select_top_k(pairs.train_reads_ND, pairs.train_labels_N, k).tolist()
    only = torch.zeros_like(diff_ND)
    only[:, dims] = diff_ND[:, dims]
    P = Vh[:k].to(diff_ND.device, diff_ND.dtype)
    return only, (diff_ND @ P.T) @ P, dims


def _sae_independent_brackets(model, pairs: Pairs, cfg) -> None:
    Vh = principal_directions(pairs)
    ks = [k for k in cfg.ks if k <= len(Vh)]
    deltas, dims = [pairs.h_cf_ND - pairs.h_base_ND], {}
    for k in ks:
        resid, pca, dims[k] = bracket_deltas(pairs, k, Vh)
        deltas += [resid, pca]
    flips = patched_flips(model, pairs, torch.stack(deltas), cfg)
    pairs.ceiling = estimate(flips[0], cfg.confidence)
    for j, k in enumerate(ks):
        pairs.resid[k] = (estimate(flips[1 + 2 * j], cfg.confidence), dims[k])
        pairs.pca[k] = estimate(flips[2 + 2 * j], cfg.confidence)


# ---------------------------------------------------------------- patched runs


@torch.no_grad()
def patched_margins(model, pairs: Pairs, delta_CND: Tensor, batch_tokens: int = 2048) -> Tensor:
    """``[C, N]``: the margin toward the counterfactual's label (``logit(cf answer) − logit(base
    answer)``) with ``delta_CND[c, i]`` added to pair ``i``'s base residual at its patch position,
    for each of ``C`` patches. A zero patch is the base run itself: its margin is the clean one,
    not recomputed. At most ``batch_tokens`` positions run per forward pass."""
    C = delta_CND.shape[0]
    raw = pairs.base_raw_N[None].repeat(C, 1)
    for g in pairs.groups:
        d_CGD = delta_CND[:, g.idx.to(delta_CND.device)]
        c_sel, i_sel = (d_CGD.abs().amax(-1) > 0).nonzero(as_tuple=True)
        per = max(1, batch_tokens // g.suffix_BSD.shape[1])
        for r0 in range(0, len(c_sel), per):
            cs, gs = c_sel[r0 : r0 + per], i_sel[r0 : r0 + per]
            inp = g.suffix_BSD[gs.to(g.suffix_BSD.device)].clone()
            inp[:, 0] += d_CGD[cs, gs].to(inp.device, inp.dtype)
            cache = hooks.frozen_kv_cache(
                model,
                {layer: k[gs.to(k.device)] for layer, k in g.keys.items()},
                {layer: v[gs.to(v.device)] for layer, v in g.values.items()},
            )
            final = hooks.run_from(model, inp, pairs.start, None, past_kv_cache=cache)[:, -1]
            raw[cs.cpu(), g.idx[gs.cpu()]] = pairs.behaviour.logit_diff(model, final)
    return torch.where(pairs.cf_labels_N[None, :] == 1, raw, -raw)


def patched_flips(model, pairs: Pairs, delta_CND: Tensor, cfg) -> Tensor:
    """``[C, N]`` bool: the patched answer is the counterfactual's."""
    return patched_margins(model, pairs, delta_CND, cfg.batch_size * cfg.max_tokens) > 0


def sae_delta(sae, pairs: Pairs, idx: Tensor) -> Tensor:
    """``[N, D]``: ``W_dec[idx]ᵀ (f_cf[idx] − f_base[idx])`` at the patch positions."""
    f_base = sae.encode(pairs.h_base_ND.to(sae.W_dec.dtype))
    f_cf = sae.encode(pairs.h_cf_ND.to(sae.W_dec.dtype))
    idx = idx.to(f_cf.device)
    return feature_edit_BTD(sae, pairs.h_base_ND, idx, f_cf[:, idx], feature_acts=f_base)


@torch.no_grad()
def evaluate(
    model, sae, pairs: Pairs, probe_train_feats_NF: Tensor | None, cfg
) -> InterchangeDetail:
    """IIA of ``sae``'s top-k features for every ``k`` of ``cfg.ks`` with the random-feature
    bracket, next to the SAE-independent ceiling and brackets. ``probe_train_feats_NF``
    (``[N_train, d_sae]``) are the last-token features the probes were selected on: at
    ``interchange_position='last'`` they are used, so the patched features are the probes' own."""
    detail = dict(
        position=pairs.position,
        n_candidates=pairs.n_candidates,
        n_unaligned=pairs.n_unaligned,
        n_incorrect=pairs.n_incorrect,
        n_pairs=len(pairs.rows),
        ceiling=pairs.ceiling,
    )
    if not pairs.rows:
        return InterchangeDetail(**detail, note="no pair left after alignment and correctness")
    if pairs.position == "last" and probe_train_feats_NF is not None:
        feats = probe_train_feats_NF
    else:
        feats = sae.encode(pairs.train_reads_ND.to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu()
    active_F = (feats > 0).float().mean(0) >= cfg.min_active_fraction
    ks = [k for k in cfg.ks if k <= feats.shape[1]]
    selected, randoms, notes, deltas = {}, {}, [], []
    for k in ks:
        selected[k] = select_top_k(feats, pairs.train_labels_N, k)
        try:
            randoms[k] = random_active_sets(
                active_F, selected[k], k, cfg.interchange_random_sets, cfg.random_seed
            )
        except VerificationError:
            randoms[k] = []
            notes.append(f"k={k}: too few active features for the random bracket")
        deltas += [sae_delta(sae, pairs, s) for s in [selected[k], *randoms[k]]]
    flips = patched_flips(model, pairs, torch.stack(deltas), cfg)
    per_k, j = [], 0
    for k in ks:
        rand = flips[j + 1 : j + 1 + len(randoms[k])]
        per_set = [float(r.float().mean()) for r in rand]
        mean, sd, _ = mean_sd(per_set)
        resid = pairs.resid.get(k)
        per_k.append(
            InterchangeKDetail(
                k=k,
                sae=estimate(flips[j], cfg.confidence),
                sae_features=selected[k].tolist(),
                random=estimate(rand, cfg.confidence) if len(rand) else None,
                random_mean=mean if per_set else None,
                random_sd=sd if per_set else None,
                random_per_set=per_set,
                resid=resid[0] if resid else None,
                resid_dims=resid[1] if resid else [],
                pca=pairs.pca.get(k),
            )
        )
        j += 1 + len(randoms[k])
    return InterchangeDetail(**detail, per_k=per_k, note="; ".join(notes))


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def means(judged: list) -> InterchangeMetrics:
    """The eval's interchange metrics from the judged tasks (``ProbingResultDetail`` list): means
    over the judged tasks with pairs of each IIA (random: the mean over its sets)."""
    with_pairs = [d.interchange for d in judged if d.interchange and d.interchange.n_pairs]

    def mean(k: int, get) -> float | None:
        vals = [get(e) for x in with_pairs for e in x.per_k if e.k == k]
        return _mean([v for v in vals if v is not None])

    return InterchangeMetrics(
        **{
            f"{who}_iia_top_{k}": mean(k, get)
            for k in (1, 2, 5, 10)
            for who, get in (
                ("sae", lambda e: e.sae.iia),
                ("random", lambda e: e.random_mean),
                ("resid", lambda e: e.resid.iia if e.resid else None),
                ("pca", lambda e: e.pca.iia if e.pca else None),
            )
        },
        ceiling_iia=_mean(
            [x.ceiling.iia for x in with_pairs if x.ceiling and x.ceiling.iia is not None]
        ),
        n_tasks_with_pairs=len(with_pairs),
    )

"""k-sparse probing, as SAEBench's sparse probing does it: select the k features with the largest
absolute difference of class means on the train split, fit a logistic probe on them, score it on
the test split. Selection and fitting are SAEBench's own helpers
(``sae_bench.evals.sparse_probing.probe_training``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from sae_bench.evals.sparse_probing.probe_training import (
    get_top_k_mean_diff_mask,
    train_sklearn_probe,
)
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor


@dataclass(frozen=True)
class ProbeResult:
    k: int | None
    """Probe size; ``None`` for the probe on every dimension."""
    indices: tuple[int, ...]
    """Selected dimensions, largest |mean difference| first (empty for the full probe)."""
    test_accuracy: float


def mean_diff(acts_NF: Tensor, labels_N: Tensor) -> Tensor:
    """``mean(class 1) − mean(class 0)`` per feature ``[F]``."""
    return acts_NF[labels_N == 1].float().mean(0) - acts_NF[labels_N == 0].float().mean(0)


def select_top_k(acts_NF: Tensor, labels_N: Tensor, k: int) -> Tensor:
    """Indices ``[k]`` of the features with the largest |mean difference| between the classes
    (SAEBench's ``get_top_k_mean_diff_mask``), ordered largest first."""
    if k > acts_NF.shape[1]:
        raise ValueError(f"Cannot select k={k} of {acts_NF.shape[1]} features; lower k.")
    mask_F = get_top_k_mean_diff_mask(acts_NF.float(), labels_N.to(torch.int64), k)
    idx = (~mask_F).nonzero().squeeze(-1)
    order = mean_diff(acts_NF[:, idx], labels_N).abs().argsort(descending=True)
    return idx[order]


def fit_probe(train_X: Tensor, train_y: Tensor, test_X: Tensor, test_y: Tensor):
    """A logistic probe (SAEBench's ``train_sklearn_probe``); returns ``(probe, test accuracy)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)  # sklearn ≥1.8 on SAEBench's penalty="l2"
        return train_sklearn_probe(
            train_X.float(), train_y.to(torch.int64), test_X.float(), test_y.to(torch.int64)
        )


def k_sparse_probes(
    train_X: Tensor,
    train_y: Tensor,
    test_X: Tensor,
    test_y: Tensor,
    ks: list[int],
    full: bool = False,
) -> list[ProbeResult]:
    """One probe per ``k`` (skipping ``k`` larger than the width), plus one on every dimension
    when ``full``."""
    results = []
    for k in ks:
        if k > train_X.shape[1]:
            continue
        idx = select_top_k(train_X, train_y, k)
        _, acc = fit_probe(train_X[:, idx], train_y, test_X[:, idx], test_y)
        results.append(ProbeResult(k, tuple(idx.tolist()), float(acc)))
    if full:
        _, acc = fit_probe(train_X, train_y, test_X, test_y)
        results.append(ProbeResult(None, (), float(acc)))
    return results

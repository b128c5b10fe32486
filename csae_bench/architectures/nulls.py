"""The null SAEs: dictionaries a sound metric must not reward, built without training.

Each is a SAELens ``TopKTrainingSAE`` (so it saves as an ordinary SAELens ``topk`` folder and
loads with ``SAE.load_from_disk`` and :func:`~csae_bench.architectures.export.load_base_sae`
unchanged); the trainer (:mod:`csae_bench.training.nulls`) builds them next to the trained SAEs,
in the trainer's normalized units, and saves them through the same finalize step.

* ``permuted-decoder`` (:func:`permuted_decoder_sae`): a trained TopK SAE whose decoder rows are
  permuted by a seeded permutation. Its encoder, and so every activation statistic (L0, frequency
  of each feature, which tokens fire it), is the trained SAE's; only the feature ↔ direction
  correspondence is broken. A metric that scores it like the TopK it came from is not looking at
  what the features *do*.
* ``init`` (:func:`init_sae`): the TopK SAE at initialization (the run's ``topk`` construction and
  seed, ``b_dec`` = the first batch's mean as every architecture starts), never stepped.
* ``pca`` (:func:`pca_sae`): the adversarial null. Its dictionary is the top principal directions
  of the (normalized) training activations, taken with both signs: ``n`` components give
  ``2n`` features, rows ``+c_1..+c_n`` then ``−c_1..−c_n``. The encoder is the centred projection
  (``W_enc = [Cᵀ, −Cᵀ]``, ``b_dec`` = the sample mean, ``b_enc = 0``) and TopK keeps the ``k``
  largest, so the ``k`` active features are exactly the ``k`` components of largest
  ``|coefficient|``, each with its sign, at matched L0. Why signed: SAE features are
  non-negative (TopK keeps positive pre-activations), so an unsigned dictionary of ``n`` components
  would drop every negative coefficient — half the variance, and a weaker null than the one a
  flawed metric would reward. The split is the one way to take the top k by ``|coefficient|``
  inside an ordinary TopK SAE. It reconstructs as well as any rank-k linear code of the data and
  every direction is on the data manifold, yet no direction was learned to be a feature.

PCA in float64 on the centred sample (``torch.linalg.eigh`` of its covariance); each component's
sign is fixed so that its largest-magnitude entry is positive (eigenvectors are defined up to sign).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

from csae_bench.architectures.options import ArchitectureOptions, trainer_only


@dataclass
class PermutedDecoderOptions(ArchitectureOptions):
    """``permuted-decoder``: no options (the permutation is seeded by the run's seed)."""


@dataclass
class InitOptions(ArchitectureOptions):
    """``init``: no options of its own; it is built exactly as the run's ``topk`` is."""


@dataclass
class PCAOptions(ArchitectureOptions):
    """``pca``: the size of the sample its principal directions come from."""

    pca_batches: int = trainer_only(8)
    """Training batches (the first ones of the stream, ``batch_size`` tokens each) the principal
    directions are computed from."""


@torch.no_grad()
def unit_decoder_copy(topk: Any) -> Any:
    """A copy of a TopK SAE (training or inference class) with unit-norm decoder rows and the
    norms folded into the encoder (``W_enc``, ``b_enc`` scale by each row's norm), so its
    features and reconstruction are those of ``topk`` (up to float rounding) and its decoder
    rows can be moved without moving the activations."""
    out = type(topk)(copy.deepcopy(topk.cfg))
    out.load_state_dict(topk.state_dict())
    norms_F = out.W_dec.norm(dim=-1)
    out.W_enc.data *= norms_F
    out.b_enc.data *= norms_F
    out.W_dec.data /= norms_F[:, None]
    return out


@torch.no_grad()
def permuted_decoder_sae(topk: Any, generator: torch.Generator) -> tuple[Any, torch.Tensor]:
    """``(sae, perm_F)``: :func:`unit_decoder_copy` of the TopK SAE ``topk`` (``d_sae`` features)
    whose decoder row ``i`` is the unit row ``perm_F[i]`` of ``topk``; ``perm_F`` is
    ``torch.randperm(d_sae, generator=generator)``. Encoder and biases are the copy's."""
    out = unit_decoder_copy(topk)
    perm_F = torch.randperm(out.cfg.d_sae, generator=generator)
    out.W_dec.data = out.W_dec.data[perm_F.to(out.W_dec.device)].clone()
    return out, perm_F


@torch.no_grad()
def init_sae(
    topk_options: dict[str, Any], d_in: int, d_sae: int, seed: int, x_BD: torch.Tensor
) -> Any:
    """The TopK training SAE built by ``build_training_sae("topk", d_in, d_sae, **topk_options)``
    under ``torch.manual_seed(seed)`` (torch's global RNG untouched), with ``b_dec`` set to the
    mean of ``x_BD [B, d_in]`` — the run's ``topk`` before its first step."""
    from csae_bench.architectures import build_training_sae

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = build_training_sae("topk", d_in, d_sae, **topk_options)
    sae.b_dec.data = x_BD.mean(0).to(sae.b_dec.dtype)
    return sae


def principal_directions(
    x_ND: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(components_nD, variances_n, mean_D)`` of the sample ``x_ND [N, d_in]`` in float64: the
    ``n`` unit eigenvectors of its covariance with the largest eigenvalues (descending), each
    signed so that its largest-magnitude entry is positive.

    Raises ``ValueError`` for fewer than 2 rows or ``n`` outside ``1..d_in``."""
    N, D = x_ND.shape
    if N < 2 or not 1 <= n <= D:
        raise ValueError(f"PCA needs >= 2 rows and 1 <= n <= d_in={D}; got N={N}, n={n}.")
    x = x_ND.double()
    mean_D = x.mean(0)
    xc = x - mean_D
    evals, evecs = torch.linalg.eigh(xc.T @ xc / (N - 1))
    order = torch.argsort(evals, descending=True)[:n]
    comps_nD = evecs[:, order].T.contiguous()
    top = comps_nD.abs().argmax(-1)
    comps_nD *= torch.sign(comps_nD[torch.arange(n), top])[:, None]
    return comps_nD, evals[order], mean_D


def pca_size(d_in: int, d_sae: int, target_l0: int) -> tuple[int, int]:
    """``(n_components, k)`` of the PCA null for a run of width ``d_sae`` at ``target_l0``:
    ``n = min(d_in, d_sae // 2)`` components (at least 1), ``2n`` signed features, and
    ``k = min(target_l0, n)`` (at most ``n`` of the ``2n`` can be positive at once)."""
    n = max(1, min(d_in, d_sae // 2))
    return n, min(target_l0, n)


@torch.no_grad()
def pca_sae(x_ND: torch.Tensor, n_components: int, k: int) -> TopKTrainingSAE:
    """The signed PCA null of the sample ``x_ND [N, d_in]`` (module docstring): a TopK training SAE
    with ``2 · n_components`` features, rows ``[C; −C]`` of the unit principal directions ``C``,
    ``W_enc = [Cᵀ, −Cᵀ]``, ``b_enc = 0``, ``b_dec`` = the sample mean, ``k`` active features.
    float32 weights (computed in float64). Raises as :func:`principal_directions`."""
    comps_nD, _, mean_D = principal_directions(x_ND, n_components)
    W_dec_FD = torch.cat([comps_nD, -comps_nD]).float()
    d_in = x_ND.shape[1]
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=d_in, d_sae=2 * n_components, k=k, apply_b_dec_to_input=True)
    )
    sae.W_dec.data = W_dec_FD.to(sae.W_dec.device)
    sae.W_enc.data = W_dec_FD.T.contiguous().to(sae.W_enc.device)
    sae.b_enc.data.zero_()
    sae.b_dec.data = mean_D.float().to(sae.b_dec.device)
    return sae


__all__ = [
    "InitOptions",
    "PCAOptions",
    "PermutedDecoderOptions",
    "init_sae",
    "pca_sae",
    "pca_size",
    "permuted_decoder_sae",
    "principal_directions",
    "unit_decoder_copy",
]

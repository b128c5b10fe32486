"""The random-decoder control: a frozen random unit-norm decoder with a trained TopK encoder.

It answers "how much of a score comes from training the dictionary at all?": its decoder rows are
random unit vectors (seeded) that never change; only the encoder and the biases learn, with the
same TopK sparsity (k = target L0) and AuxK dead-feature loss as the TopK baseline. Everything
else is SAELens's ``TopKTrainingSAE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from typing_extensions import override

from csae_bench.architectures.options import TopKOptions


@dataclass
class RandomDecoderOptions(TopKOptions):
    """``random-decoder``: TopK options; the decoder's seed is the run's ``seed``."""

    def sae_config(self, *, target_l0: int, seed: int) -> dict[str, Any]:
        return {**super().sae_config(target_l0=target_l0, seed=seed), "decoder_seed": seed}


@dataclass
class RandomDecoderSAEConfig(TopKSAEConfig):
    """Inference config of the random-decoder control (a TopK SAE)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "random-decoder"


class RandomDecoderSAE(TopKSAE):
    """Inference random-decoder control: SAELens's TopK forward pass under its own name."""

    cfg: RandomDecoderSAEConfig  # type: ignore[assignment]


@dataclass
class RandomDecoderTrainingSAEConfig(TopKTrainingSAEConfig):
    """Training config of the random-decoder control."""

    decoder_seed: int = 0
    """Seed of the random decoder directions (the control is reproducible on its own)."""
    rescale_acts_by_decoder_norm: bool = False
    """Unused: the frozen decoder is unit-norm already."""
    decoder_init_norm: float | None = None
    """The frozen decoder keeps unit-norm rows (no small-norm init heuristic)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "random-decoder"


class RandomDecoderTrainingSAE(TopKTrainingSAE):
    """TopK training SAE whose ``W_dec`` is a frozen, seeded, random unit-norm matrix."""

    cfg: RandomDecoderTrainingSAEConfig  # type: ignore[assignment]

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        gen = torch.Generator().manual_seed(self.cfg.decoder_seed)
        W_dec_FD = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=gen, dtype=torch.float32)
        W_dec_FD /= W_dec_FD.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            self.W_dec.data = W_dec_FD.to(self.W_dec.device, self.dtype)
            self.W_enc.data = self.W_dec.data.T.clone().contiguous()
        self.W_dec.requires_grad_(False)

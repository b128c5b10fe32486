"""One copy of a tied embedding matrix in a TransformerLens model.

Models with tied input and output embeddings (Gemma, GPT-2, ...) keep one ``d_vocab × d_model``
matrix in Hugging Face; TransformerLens's weight conversion makes two of them, ``embed.W_E`` and
``unembed.W_U`` (Gemma's folds the ``√d_model`` input scale into ``W_E``). For Gemma-3-270M that
is 168M of its 268M parameters twice: 0.67 GB in float32, 0.34 GB in bfloat16, per loaded model.
:func:`share_tied_embedding` drops ``W_E`` and reads embedding rows from ``W_U`` instead, after
checking that they are bit-for-bit what ``W_E`` held (else it leaves the model untouched).
TransformerLens's ``Embed`` (``transformer_lens/components/embed.py``) has no option for this, so
the module is replaced rather than configured.
"""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)


class TiedEmbed(torch.nn.Module):
    """Drop-in for TransformerLens's ``Embed``: ``embed(tokens) = scale · W_U[:, tokens].T``.

    ``W_U`` stays the unembedding's own parameter (it is not registered twice); :attr:`W_E` builds
    the full ``[d_vocab, d_model]`` matrix on demand for callers of ``model.W_E``."""

    def __init__(self, unembed: torch.nn.Module, scale: float):
        super().__init__()
        self._unembed = (unembed,)  # a tuple, not a submodule: W_U is registered once
        self.scale = scale

    @property
    def W_E(self) -> torch.Tensor:  # noqa: N802 (TransformerLens's name)
        return self._rows(slice(None))

    def _rows(self, index) -> torch.Tensor:
        rows = self._unembed[0].W_U.T[index]
        return rows if self.scale == 1.0 else rows * self.scale

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[batch, pos]`` -> embeddings ``[batch, pos, d_model]``."""
        return self._rows(tokens)


def share_tied_embedding(model) -> bool:
    """Replace ``model.embed`` by a :class:`TiedEmbed` over ``model.unembed.W_U`` when ``W_E`` equals
    ``scale · W_U.T`` exactly (``scale`` 1 or ``√d_model``) and the model has no post-embedding
    LayerNorm; returns whether it did. Activations and logits are bit-for-bit unchanged (the
    equality is checked on every row, in the model's dtype)."""
    embed, unembed = getattr(model, "embed", None), getattr(model, "unembed", None)
    if embed is None or unembed is None or isinstance(embed, TiedEmbed):
        return False
    if getattr(model.cfg, "post_embedding_ln", False) or model.cfg.d_vocab != model.cfg.d_vocab_out:
        return False
    W_E, W_U = embed.W_E, unembed.W_U
    if W_E.shape != W_U.T.shape or W_E.dtype != W_U.dtype or W_E.device != W_U.device:
        return False
    candidate = TiedEmbed(unembed, 1.0)
    with torch.no_grad():
        for scale in (1.0, math.sqrt(model.cfg.d_model)):
            candidate.scale = scale
            if _equal_in_chunks(W_E, candidate):
                model.embed = candidate
                model.setup()  # its module dict still holds the old Embed (and so W_E)
                logger.debug("Tied embedding: W_E read from W_U (scale %.4g)", scale)
                return True
    return False


def _equal_in_chunks(W_E: torch.Tensor, tied: TiedEmbed, rows: int = 16384) -> bool:
    for start in range(0, W_E.shape[0], rows):
        index = torch.arange(start, min(start + rows, W_E.shape[0]), device=W_E.device)
        if not torch.equal(W_E[index], tied._rows(index)):
            return False
    return True

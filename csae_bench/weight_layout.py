"""TransformerLens weights kept in the memory layout its forward passes read.

TransformerLens (3.x) stores its weights in its own orientation and makes the layout
``F.linear`` wants on every forward call: ``W.T.contiguous()`` in ``GatedMLP`` (``W_gate``,
``W_in``, ``W_out``) and ``Unembed`` (``W_U``), ``einops.rearrange(...)`` of ``W_Q``/``W_K``/``W_V``
and ``rearrange(W_O).contiguous()`` in attention (``transformer_lens/components/mlps/gated_mlp.py``,
``components/unembed.py``, ``components/abstract_attention.py``, ``utilities/attention.py``). Each is
a full copy of the matrix per call — for Gemma-3-270M ≈ 24 MB per layer in float32, plus 671 MB for
``W_U`` on every full forward. Large batches amortize it; the intervention engine, which runs many
short batches, spent 22% of its time in these copies (``torch.profiler``, 32 interventions, W = 4).

:func:`store_in_forward_layout` re-lays each such parameter out in memory so that those calls
return views. Shapes, values and indexing are unchanged — only strides differ — and ``F.linear``
receives the same contiguous matrix as before, so TransformerLens's activations and logits are
bit-for-bit what they were. Upstream has no option for this; the parameters are re-laid, not the
modules patched, so a TransformerLens that stops copying is unaffected.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_TRANSPOSED = ("W_gate", "W_in", "W_out", "W_U")
"""``[a, b]`` parameters read as ``W.T.contiguous()``: stored as a contiguous ``[b, a]``."""
_QKV = ("W_Q", "W_K", "W_V", "_W_K", "_W_V")
"""``[head, d_model, d_head]`` read as ``(head d_head) d_model``: stored ``[head, d_head, d_model]``."""


def _relayout(module: torch.nn.Module, name: str, stored: Callable, view: Callable) -> int:
    """Store ``module.<name>`` as the contiguous ``stored(W)`` seen through ``view`` (its inverse),
    unless ``stored(W)`` is contiguous already; returns 1 if it moved."""
    param = module._parameters.get(name)
    if param is None or stored(param.data).is_contiguous():
        return 0
    with torch.no_grad():
        param.data = view(stored(param.data).contiguous())
    return 1


def store_in_forward_layout(model: torch.nn.Module) -> int:
    """Re-lay the MLP, attention and unembedding weights of a TransformerLens model (in place) so
    that its forward passes read them without copying; returns how many parameters moved (0 on a
    second call).

    Only the TransformerLens modules that copy on every call are touched (``GatedMLP``,
    ``Unembed``, attention); a model without them is left as it is."""
    try:
        from transformer_lens.components import AbstractAttention, Unembed
        from transformer_lens.components.mlps.gated_mlp import GatedMLP
    except ImportError:  # a TransformerLens without these modules copies nothing we know of
        return 0
    moved = 0
    for module in model.modules():
        if isinstance(module, GatedMLP | Unembed):
            for name in _TRANSPOSED:
                moved += _relayout(module, name, lambda w: w.T, lambda s: s.T)
        elif isinstance(module, AbstractAttention):
            for name in _QKV:
                moved += _relayout(
                    module, name, lambda w: w.transpose(1, 2), lambda s: s.transpose(1, 2)
                )
            moved += _relayout(
                module, "W_O", lambda w: w.permute(2, 0, 1), lambda s: s.permute(1, 2, 0)
            )
    return moved

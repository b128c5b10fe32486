"""FLOP counts of what the benchmarked code computes (matmuls only), for the fraction-of-peak
columns of ``python benchmarks/report.py``. A multiply-add counts as 2 FLOPs.

What is counted, per model (TransformerLens config) and per position run through a layer:

- projections: Q, K, V (grouped-query: ``n_key_value_heads`` K/V heads), O, and the MLP
  (gate + up + down for a gated MLP, in + out otherwise);
- attention: scores ``q·k`` and the weighted sum of values over every key the position is
  computed against. TransformerLens computes the dense ``[query, key]`` score matrix and masks
  it afterwards, so a position of a context of ``T`` tokens is counted against all ``T`` keys
  (plus a cached prefix, for the engine);
- the unembedding: ``2 · d_model · d_vocab`` per row unembedded.

Not counted: embeddings, norms, rotary, softmax, activation functions, softcap and KL arithmetic
(elementwise work, O(d) per position where the matmuls are O(d²)).
"""

from __future__ import annotations


def layer_linear_flops(cfg) -> int:
    """Projection + MLP FLOPs of one layer for one position."""
    d, dh, H = cfg.d_model, cfg.d_head, cfg.n_heads
    kv = cfg.n_key_value_heads or H
    d_mlp = cfg.d_mlp or 4 * d
    qkv_o = d * (H * dh + 2 * kv * dh) + H * dh * d
    mlp = (3 if cfg.gated_mlp else 2) * d * d_mlp
    return 2 * (qkv_o + mlp)


def attention_flops(cfg, keys: int) -> int:
    """Score + value FLOPs of one layer for one query position against ``keys`` keys."""
    return 2 * 2 * cfg.n_heads * cfg.d_head * keys


def harvest_flops(cfg, n_contexts: int, context: int, layer: int) -> int:
    """A forward of ``n_contexts × context`` tokens through layers ``0 .. layer`` (``stop_at_layer
    = layer + 1``, as :func:`csae_bench.activations.harvest.harvest_activations` runs it)."""
    per_position = (layer + 1) * (layer_linear_flops(cfg) + attention_flops(cfg, context))
    return n_contexts * context * per_position


def unembed_flops(cfg, rows: int) -> int:
    return 2 * cfg.d_model * cfg.d_vocab * rows


def engine_batch_flops(cfg, layer: int, batch: int, seq: int, prefix: int) -> int:
    """One batch of the effect engine (``EffectEngine._run_batch``): ``batch`` sequences of ``seq``
    positions through every layer after ``layer`` against ``prefix`` cached + ``seq`` new keys.
    The unembedding is not part of a batch: the engine pools window rows over batches, counted
    per pass with :func:`unembed_flops` (window rows plus the pool's distinct clean rows)."""
    n_after = cfg.n_layers - layer - 1
    per_position = n_after * (layer_linear_flops(cfg) + attention_flops(cfg, prefix + seq))
    return batch * seq * per_position


def sae_step_flops(batch: int, d_in: int, d_sae: int) -> int:
    """One SAE training step's matmuls: forward = encoder ``x W_enc`` + dense decoder ``f W_dec``
    (SAELens decodes densely, TopK included) = ``4 · B · d_in · d_sae``; backward = the weight
    gradients of both (``2 + 2``) and the gradient into ``f`` (``2``), none into the input batch
    = ``6 · B · d_in · d_sae``. Total ``10 · B · d_in · d_sae``. The CSAE's causal term
    (``[B, d_in] × [d_in, R]``, R ≤ 64) and dead-feature bookkeeping are not counted."""
    return 10 * batch * d_in * d_sae

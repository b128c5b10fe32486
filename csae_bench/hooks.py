"""The model side of a hook, in one place: hook names and their layers, running the model from a
residual-stream hook to the final norm, the unembedding with its logit soft-cap, and which token
positions count (BOS and special tokens).

Everything that reads or patches the residual stream (activation harvest, gradient pool, the
intervention engine, the CSAE's causal terms, the core and probing evals) goes through these
helpers, so a hook means the same layer, the same suffix of blocks and the same logits everywhere.
Hook layers follow SAELens's ``extract_layer_from_tlens_hook_name`` and the soft-cap is
TransformerLens's ``apply_softcap``. Naming and parsing hooks imports neither library (the CLI
checks its input, hook names included, before it loads any).

Errors: the checks raise :class:`HookError` unless the caller passes its own ``error`` class (the
activation, gradient and intervention code each keep the error type their callers catch).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from csae_bench.errors import BadInputError

#: Residual-stream hook kinds the model can be resumed from.
RESID_SITES = ("hook_resid_pre", "hook_resid_post")


class HookError(BadInputError, ValueError):
    """A hook name that does not fit the model; the message says which and why."""


# ---------------------------------------------------------------- names and layers


_LAYER = re.compile(r"\.(\d+)(?:\.|$)")


def parse_layer(hook_name: str) -> int | None:
    """The block index of a TransformerLens hook ``blocks.L.<hook>`` (None for any other name).

    The rule of SAELens's ``extract_layer_from_tlens_hook_name`` (the first ``.<int>`` segment),
    restricted to ``blocks.`` names; written out because importing ``sae_lens`` loads the whole
    library, and the CLI reads hook names before it may load any (tests/test_hooks.py checks that
    the two agree)."""
    if not hook_name.startswith("blocks."):
        return None
    match = _LAYER.search(hook_name)
    return None if match is None else int(match.group(1))


def layer_of_hook(
    hook_name: str, n_layers: int | None = None, error: type[Exception] = HookError
) -> int:
    """The block index ``L`` of ``blocks.L.<hook>``; with ``n_layers``, checked to be in range."""
    layer = parse_layer(hook_name)
    if layer is None:
        raise error(
            f"Cannot read a layer from hook name {hook_name!r} (expected blocks.L.hook_...)."
        )
    if n_layers is not None and not 0 <= layer < n_layers:
        raise error(f"Hook {hook_name} is out of range: the model has layers 0..{n_layers - 1}.")
    return layer


def block_hook_name(layer: int, site: str = "resid_post") -> str:
    """``blocks.{layer}.hook_{site}`` (TransformerLens's ``get_act_name(site, layer)`` for the
    block hooks; spelled out here so that naming a hook imports no model library)."""
    return f"blocks.{layer}.hook_{site}"


def hook_name_for_layer(
    model, layer: int, site: str = "resid_post", error: type[Exception] = HookError
) -> str:
    """:func:`block_hook_name`, checking the layer exists in ``model``."""
    n_layers = model.cfg.n_layers
    if not 0 <= layer < n_layers:
        raise error(
            f"Layer {layer} is out of range: {model.cfg.model_name} has layers 0..{n_layers - 1}."
        )
    return block_hook_name(layer, site)


def hook_site(hook_name: str) -> str:
    """``blocks.6.hook_resid_post`` -> ``hook_resid_post``."""
    return hook_name.rsplit(".", 1)[-1]


def resume_layer(model, hook_name: str, error: type[Exception] = HookError) -> int:
    """The first block to run after the residual-stream hook ``hook_name`` (TransformerLens's
    ``start_at_layer``): ``L + 1`` after ``hook_resid_post``, ``L`` at ``hook_resid_pre``. The hook's
    residual is ``model(tokens, stop_at_layer=resume_layer(...))``."""
    layer = layer_of_hook(hook_name, model.cfg.n_layers, error)
    site = hook_site(hook_name)
    if site not in RESID_SITES or hook_name.count(".") != 2:
        raise error(
            "This needs a residual-stream hook (blocks.L.hook_resid_post or hook_resid_pre), "
            f"got {hook_name}."
        )
    return layer + (site == "hook_resid_post")


# ---------------------------------------------------------------- hook -> final norm


def run_from(
    model, resid_BTD: Tensor, start: int, stop: int | None = None, past_kv_cache=None
) -> Tensor:
    """The residual before block ``stop`` (``None``: after the last block, before the final norm),
    running blocks ``start .. stop − 1`` on the residual ``resid_BTD`` (nothing when ``stop ==
    start``)."""
    stop = model.cfg.n_layers if stop is None else stop
    if stop == start and past_kv_cache is None:
        return resid_BTD
    return model(resid_BTD, start_at_layer=start, stop_at_layer=stop, past_kv_cache=past_kv_cache)


def frozen_kv_cache(model, keys: dict[int, Tensor], values: dict[int, Tensor]):
    """A frozen TransformerLens ``TransformerLensKeyValueCache`` holding a prefix's keys and
    values for the layers in ``keys`` (``{layer: [B, p, n_kv_heads, d_head]}``, pre-rotary, as
    TransformerLens stores them) and empty entries for the others (the layers up to the hook, which
    are not run). Pass it to :func:`run_from` / :func:`final_residual` to run positions
    ``p, p+1, ...`` without recomputing the prefix; rotary and the local/global masks get the right
    position offset from it. None when ``keys`` is empty (no block runs after the hook, so the
    positions do not interact)."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    if not keys:
        return None
    first = next(iter(keys.values()))
    batch, p, device = first.shape[0], first.shape[1], first.device
    entries = [
        TransformerLensKeyValueCacheEntry(keys[layer], values[layer], frozen=True)
        if layer in keys
        else TransformerLensKeyValueCacheEntry.init_cache_entry(model.cfg, device, batch)
        for layer in range(model.cfg.n_layers)
    ]
    cache = TransformerLensKeyValueCache(
        entries=entries,
        previous_attention_mask=torch.ones(batch, p, dtype=torch.int, device=device),
    )
    cache.freeze()
    return cache


def prefix_kv(model, resid_BPD: Tensor, start: int) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    """Keys and values ``{layer: [B, p, n_kv_heads, d_head]}`` of blocks ``start ..`` on the
    prefix residual ``resid_BPD`` (the input of block ``start``), for :func:`frozen_kv_cache`."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    n_layers = model.cfg.n_layers
    if start >= n_layers:
        return {}, {}
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, resid_BPD.device, len(resid_BPD))
    run_from(model, resid_BPD, start, None, past_kv_cache=cache)
    keys = {layer: cache[layer].past_keys for layer in range(start, n_layers)}
    return keys, {layer: cache[layer].past_values for layer in range(start, n_layers)}


def final_norm(model, resid: Tensor) -> Tensor:
    """The model's final norm (``ln_final``; identity for a model without one) on ``[..., T, D]``
    residuals, or on ``[N, D]`` rows (run as ``N`` one-token sequences)."""
    if model.cfg.normalization_type is None:
        return resid
    if resid.ndim == 2:
        return model.ln_final(resid[:, None, :])[:, 0]
    return model.ln_final(resid)


def final_residual(model, resid_BTD: Tensor, start: int, past_kv_cache=None) -> Tensor:
    """Blocks ``start`` to the end, then the final norm: the input to the unembedding."""
    return final_norm(model, run_from(model, resid_BTD, start, None, past_kv_cache))


# ---------------------------------------------------------------- unembedding

#: Logit elements materialized at once where full-vocabulary logits are built row chunk by row
#: chunk (rows × vocab); 2**24 floats = 64 MiB.
MAX_LOGIT_ELEMENTS = 2**24


def rows_per_chunk(d_vocab: int, max_elements: int = MAX_LOGIT_ELEMENTS) -> int:
    """Rows whose full-vocabulary logits fit in ``max_elements``."""
    return max(1, max_elements // d_vocab)


def softcap(logits: Tensor, cap: float | None) -> Tensor:
    """The logit soft-cap ``cap · tanh(z / cap)`` (identity when ``cap`` is off: None, 0, -1)."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    return apply_softcap(logits, cap)


def softcap_enabled(cap: float | None) -> bool:
    """A soft-cap is on only for a strictly positive ``cap`` (TransformerLens's rule)."""
    return cap is not None and cap > 0


def softcap_slope(raw: Tensor, cap: float | None) -> Tensor | None:
    """``d softcap(z) / dz = 1 − tanh(z / cap)²`` at raw logits ``raw`` (None when the cap is off)."""
    if not softcap_enabled(cap):
        return None
    return 1 - torch.tanh(raw / cap) ** 2


def unembed(
    x_ND: Tensor, W_U_DV: Tensor, b_U_V: Tensor, cap: float | None
) -> tuple[Tensor, Tensor | None]:
    """``(logits_NV, slope_NV)``: soft-capped logits of final residuals ``x_ND`` and
    ``d logits / d raw logits`` where a soft-cap is on (None otherwise). Pure in its inputs;
    callers bound ``N`` so that ``N × d_vocab`` stays small."""
    raw = x_ND @ W_U_DV + b_U_V
    return softcap(raw, cap), softcap_slope(raw, cap)


def logprob_grads(
    x_RD: Tensor,
    W_U_DV: Tensor,
    b_U_V: Tensor,
    cap: float | None,
    tokens_RS: Tensor | None = None,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``(dx_RSD, y_RS)``: ``∇_x log p(y)`` at final residuals ``x_RD`` for tokens ``y``, analytically
    ``s'_y W_U[:, y] − W_U (p ⊙ s')`` (``s'`` the soft-cap slope, 1 without a cap). The tokens are
    ``tokens_RS`` or, when None, ``n_samples`` draws per row from ``p(·|x)`` (with ``generator``).
    Builds ``R × d_vocab`` logits: callers bound ``R`` (:func:`rows_per_chunk`)."""
    logits_RV, slope_RV = unembed(x_RD, W_U_DV, b_U_V, cap)
    p_RV = torch.softmax(logits_RV, dim=-1)
    y_RS = (
        torch.multinomial(p_RV, n_samples, replacement=True, generator=generator)
        if tokens_RS is None
        else tokens_RS
    )
    weight_RV = p_RV if slope_RV is None else p_RV * slope_RV
    mean_RD = weight_RV @ W_U_DV.T
    direct_RSD = W_U_DV.T[y_RS]
    if slope_RV is not None:
        direct_RSD = direct_RSD * slope_RV.gather(1, y_RS)[..., None]
    return direct_RSD - mean_RD[:, None], y_RS


def model_logits(model, x_ND: Tensor, token_ids: Tensor | None = None) -> Tensor:
    """The model's soft-capped logits of final residuals ``x_ND`` (after the final norm), for the
    vocabulary columns ``token_ids`` (all of them when None)."""
    if token_ids is None:
        raw = x_ND @ model.W_U + model.b_U
    else:
        raw = x_ND @ model.W_U[:, token_ids] + model.b_U[token_ids]
    return softcap(raw, model.cfg.output_logits_soft_cap)


# ---------------------------------------------------------------- which tokens count


def bos_token_id(model) -> int | None:
    """The BOS id of ``model``'s tokenizer (None for a model without one)."""
    tok = getattr(model, "tokenizer", None)
    return getattr(tok, "bos_token_id", None)


def non_bos_mask(model, tokens_BT: Tensor) -> Tensor:
    """``[B, T]`` bool, False at BOS tokens (SAELens and SAEBench exclude them from activations)."""
    bos = bos_token_id(model)
    if bos is not None:
        return tokens_BT != bos
    return torch.ones_like(tokens_BT, dtype=torch.bool)


def special_token_ids(model, tokens_BT: Tensor) -> set[int]:
    """Tokens SAEBench's core eval excludes: BOS/EOS/PAD of the tokenizer, or — for a model without
    one — the token that starts every context of ``tokens_BT`` (its BOS). (SAELens's
    ``get_special_token_ids`` also counts SEP and decoder-start tokens; the core eval's numbers are
    recorded with this set.)"""
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        return {t for t in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) if t is not None}
    return {int(t) for t in tokens_BT[:, 0].unique()}


def keep_mask(tokens_BT: Tensor, ignore: set[int | None]) -> Tensor:
    """``[B, T]`` bool, False at every token id in ``ignore``."""
    keep_BT = torch.ones_like(tokens_BT, dtype=torch.bool)
    for t in ignore:
        if t is not None:
            keep_BT &= tokens_BT != t
    return keep_BT

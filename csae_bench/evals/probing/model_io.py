"""Running the model on task texts: tokenize and pad, cache the residual at the SAE's hook once,
run only the layers after it for each intervention, and read a few unembedding columns instead of
the full-vocabulary logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from csae_bench import hooks
from csae_bench.activations.harvest import ActivationError
from csae_bench.data import DataError


@dataclass
class Batch:
    """Right-padded token ids with their lengths (BOS first)."""

    tokens_BT: Tensor
    lengths_B: Tensor

    @property
    def mask_BT(self) -> Tensor:
        """True at real tokens (BOS included)."""
        pos = torch.arange(self.tokens_BT.shape[1], device=self.tokens_BT.device)
        return pos[None, :] < self.lengths_B[:, None]

    @property
    def content_mask_BT(self) -> Tensor:
        """True at real tokens after BOS (the positions features are read and edited at)."""
        mask = self.mask_BT.clone()
        mask[:, 0] = False
        return mask

    @property
    def last_B(self) -> Tensor:
        return self.lengths_B - 1

    def __getitem__(self, sl: slice) -> Batch:
        tokens = self.tokens_BT[sl]
        lengths = self.lengths_B[sl]
        return Batch(tokens[:, : int(lengths.max())], lengths)


def tokenize(model, texts: list[str] | tuple[str, ...], max_tokens: int = 64) -> Batch:
    """BOS + each text's tokens (cut to ``max_tokens`` including BOS), right-padded."""
    tok = model.tokenizer
    if tok is None:
        raise ActivationError(
            "The model has no tokenizer; pass a model loaded with csae_bench.models.load_model."
        )
    bos = tok.bos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ids = [
        ([bos] if bos is not None else []) + tok.encode(t, add_special_tokens=False) for t in texts
    ]
    ids = [x[:max_tokens] for x in ids]
    if any(len(x) < 2 for x in ids):
        raise DataError(
            "A task text is empty after tokenization; remove empty texts from the task."
        )
    width = max(len(x) for x in ids)
    tokens = torch.full((len(ids), width), pad, dtype=torch.long)
    for i, x in enumerate(ids):
        tokens[i, : len(x)] = torch.tensor(x)
    return Batch(tokens, torch.tensor([len(x) for x in ids]))


def single_token_id(model, text: str) -> int:
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise DataError(
            f"Answer {text!r} is {len(ids)} tokens for this tokenizer; a logit-difference task needs single-token answers."
        )
    return ids[0]


def resume_layer(model, hook_name: str) -> int:
    """:func:`csae_bench.hooks.resume_layer` (the block to resume from after the residual-stream
    hook ``hook_name``), raising :class:`ActivationError`."""
    return hooks.resume_layer(model, hook_name, error=ActivationError)


@torch.no_grad()
def residual_at(model, hook_name: str, batch: Batch) -> Tensor:
    """The residual ``[B, T, D]`` at ``hook_name`` (layers after it are not run)."""
    resume_layer(model, hook_name)
    layer = hooks.layer_of_hook(hook_name)
    device = next(model.parameters()).device
    _, cache = model.run_with_cache(
        batch.tokens_BT.to(device), names_filter=[hook_name], stop_at_layer=layer + 1
    )
    return cache[hook_name]


@torch.no_grad()
def resume(model, hook_name: str, resid_BTD: Tensor, stop_at_layer: int | None = None) -> Tensor:
    """Run from the residual at ``hook_name`` to the residual before block ``stop_at_layer``
    (``None``: after the last block, before the final norm). Padding is on the right, so causal
    attention keeps it from touching real tokens."""
    start = resume_layer(model, hook_name)
    stop = model.cfg.n_layers if stop_at_layer is None else stop_at_layer
    if stop < start:
        raise ActivationError(
            f"Cannot read layer {stop} from hook {hook_name}: it comes before the hook."
        )
    return hooks.run_from(model, resid_BTD, start, stop)


def answer_logits(model, final_resid_ND: Tensor, token_ids: Tensor) -> Tensor:
    """Logits ``[N, len(token_ids)]`` of a few vocabulary entries, from final residuals
    ``[N, D]`` (final norm, those unembedding columns, the model's logit softcap)."""
    return hooks.model_logits(model, hooks.final_norm(model, final_resid_ND), token_ids)


def pool(x_BTF: Tensor, batch: Batch, read: str) -> Tensor:
    """``[B, F]``: the value at each text's last token (``last``) or the mean over its tokens after
    BOS (``mean``)."""
    if read == "last":
        return x_BTF[torch.arange(len(x_BTF)), batch.last_B.to(x_BTF.device)]
    mask = batch.content_mask_BT.to(x_BTF.device, x_BTF.dtype)
    return (x_BTF * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def by_row(chunks: list[tuple[Tensor, Batch, slice]]) -> dict[int, tuple[Tensor, Tensor]]:
    """``{row: (residual [T, D], tokens [T])}`` with the padding cut, from per-batch residuals
    ``[b, T, D]`` with their tokens and the rows (``slice``) each batch holds."""
    out = {}
    for resid, batch, sl in chunks:
        for j, r in enumerate(range(sl.start, sl.stop)):
            n = int(batch.lengths_B[j])
            out[r] = (resid[j, :n], batch.tokens_BT[j, :n])
    return out


def batched(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]

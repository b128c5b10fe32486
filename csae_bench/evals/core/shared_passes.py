"""SAEBench's core eval runs three full forward passes per SAE for its CE-loss and KL metrics
(``get_recons_loss``): clean, SAE spliced in, and the hook zero-ablated. Two of them do not depend
on the SAE, yet are recomputed for every SAE — on a 262k-vocabulary model on a CPU they are most
of the eval's time; so is the residual at the hook that the sparsity and variance metrics read.
:class:`SharedPasses` is the model as SAEBench sees it: it passes everything through, and
remembers those SAE-independent outputs by token batch (in the run's shared eval cache), so every
SAE after the first reuses them. The spliced pass always runs. Results are identical (a test).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

ZERO_ABLATE_HOOKS = ("standard_zero_ablate_hook",)
"""Names of SAEBench's SAE-independent ablation hooks (``sae_bench.evals.core.main``)."""


def _digest(tokens: torch.Tensor) -> str:
    t = tokens.detach().to("cpu", torch.long).contiguous()
    return hashlib.sha1(t.numpy().tobytes() + str(tuple(t.shape)).encode()).hexdigest()


class SharedPasses:
    """``model`` with its SAE-independent core-eval passes remembered in ``cache``."""

    def __init__(self, model: Any, cache: dict[Any, Any]) -> None:
        self._model = model
        self._cache = cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def _remember(self, key: tuple, compute, keep_one: bool = True) -> Any:
        full_key = ("core_pass", id(self._model), *key)
        if full_key not in self._cache:
            if keep_one:  # full logits (~1 GB a batch here): hold only the newest batch of a kind
                for old in [
                    k
                    for k in self._cache
                    if isinstance(k, tuple) and k[:1] == ("core_pass",) and k[2] == key[0]
                ]:
                    del self._cache[old]
            self._cache[full_key] = compute()
        return self._cache[full_key]

    def __call__(self, tokens: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not args and kwargs == {"return_type": "both", "loss_per_token": True}:
            return self._remember(("clean", _digest(tokens)), lambda: self._model(tokens, **kwargs))
        return self._model(tokens, *args, **kwargs)

    def run_with_cache(self, tokens: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        names = kwargs.get("names_filter")
        if (
            not args
            and isinstance(names, list)
            and len(names) == 1
            and kwargs.get("stop_at_layer") is not None
            and set(kwargs) <= {"names_filter", "stop_at_layer", "prepend_bos"}
        ):
            key = (
                "residual",
                _digest(tokens),
                names[0],
                kwargs["stop_at_layer"],
                kwargs.get("prepend_bos"),
            )
            # residuals at the hook are small (a few MB a batch): keep every batch
            return self._remember(
                key, lambda: self._model.run_with_cache(tokens, **kwargs), keep_one=False
            )
        return self._model.run_with_cache(tokens, *args, **kwargs)

    def run_with_hooks(
        self, tokens: torch.Tensor, *args: Any, fwd_hooks: Any = (), **kwargs: Any
    ) -> Any:
        hooks = list(fwd_hooks)
        if (
            not args
            and len(hooks) == 1
            and getattr(hooks[0][1], "__name__", "") in ZERO_ABLATE_HOOKS
            and kwargs == {"return_type": "both", "loss_per_token": True}
        ):
            hook_name = hooks[0][0]
            return self._remember(
                ("zero_ablated", _digest(tokens), hook_name),
                lambda: self._model.run_with_hooks(tokens, fwd_hooks=hooks, **kwargs),
            )
        return self._model.run_with_hooks(tokens, *args, fwd_hooks=hooks, **kwargs)

"""Harvested activations on disk, served as shuffled batches to any number of SAEs.

One harvest feeds every SAE trained alongside, and every seed of a run: the activations are
written once, as shards of at most ``shard_tokens`` tokens (``<folder>/shard_00000.safetensors``,
…) in the dtype the model ran in (bf16 on hardware with fast bf16, :mod:`csae_bench.precision`),
then a ``manifest.json`` that marks the harvest complete. Training streams them from disk one shard
at a time, so memory holds one shard, not the corpus (issue 13: a 2M-token harvest of Gemma-3-270M
is 2.6 GB in bf16, 20M tokens 26 GB). A killed harvest resumes at its first missing shard.

Shuffling follows SAELens's mixing buffer in spirit: each epoch visits the shards in a seeded
random order and serves each shard's tokens (plus the previous shard's leftover) in a seeded random
order; the contexts were already shuffled when the corpus was tokenized
(:func:`csae_bench.data.load_tokens`), so a shard is a random sample of the corpus.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from csae_bench import hooks
from csae_bench.activations.harvest import ActivationError, harvest_activations
from csae_bench.utils import atomic_path, atomic_write_json

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STORE_FORMAT = 2
"""Version of the folder layout (1 was a single ``activations.safetensors``)."""


def tokens_digest(tokens: torch.Tensor) -> str:
    """sha256 of the token ids (int64, row-major): which contexts a shard or harvest holds."""
    return hashlib.sha256(tokens.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


class ActivationSource:
    """Residual activations at ``hook_name`` for ``tokens`` ``[n_ctx, ctx]`` (BOS dropped),
    served as float32 batches ``[batch_size, d_in]`` in raw units.

    Args:
        model: the HookedTransformer to harvest with (its dtype is the stored dtype).
        hook_name: e.g. ``blocks.6.hook_resid_post``.
        tokens: the training contexts, each starting with BOS.
        seed: the default shuffling seed of :meth:`batches` (the data order of a training seed).
        batch_contexts: contexts per model forward.
        shard_tokens: at most this many tokens per shard (the memory bound of training).
        cache_path: a folder for the shards and manifest; ``None`` keeps nothing on disk and
            harvests each shard again whenever it is needed.
    """

    def __init__(
        self,
        model,
        hook_name: str,
        tokens: torch.Tensor,
        seed: int = 0,
        batch_contexts: int = 32,
        shard_tokens: int = 262_144,
        cache_path: Path | None = None,
    ) -> None:
        self.model = model
        self.hook_name = hook_name
        self.tokens = tokens
        self.seed = seed
        self.batch_contexts = batch_contexts
        self.cache_path = Path(cache_path) if cache_path else None
        self.d_in = model.cfg.d_model
        self.contexts_per_shard = max(1, shard_tokens // tokens.shape[1])
        self.n_shards = -(-len(tokens) // self.contexts_per_shard)
        self._memo: dict[int, torch.Tensor] = {}

    @property
    def n_tokens(self) -> int:
        """Tokens served per epoch (BOS positions excluded)."""
        return int(hooks.non_bos_mask(self.model, self.tokens).sum())

    def _shard_tokens(self, i: int) -> torch.Tensor:
        return self.tokens[i * self.contexts_per_shard : (i + 1) * self.contexts_per_shard]

    def _shard_path(self, i: int) -> Path:
        assert self.cache_path is not None
        return self.cache_path / f"shard_{i:05d}.safetensors"

    def _harvest_shard(self, i: int, show_progress: bool = False) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        return harvest_activations(
            self.model,
            self.hook_name,
            self._shard_tokens(i),
            self.batch_contexts,
            dtype=dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32,
            show_progress=show_progress,
        )

    def _read_shard(self, i: int) -> torch.Tensor | None:
        """Shard ``i`` from disk when it is there and holds these contexts, else None (a corrupt
        or foreign shard is harvested again, never used)."""
        from safetensors import safe_open

        path = self._shard_path(i)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                acts = f.get_tensor("acts")
        except Exception as err:
            logger.warning("Activation shard %s unreadable (%s); harvesting it again.", path, err)
            return None
        toks = self._shard_tokens(i)
        expected = int(hooks.non_bos_mask(self.model, toks).sum())
        if (
            meta.get("hook_name") != self.hook_name
            or meta.get("tokens_sha256") != tokens_digest(toks)
            or acts.shape != (expected, self.d_in)
        ):
            logger.warning("Activation shard %s is for other tokens; harvesting it again.", path)
            return None
        return acts

    def shard(self, i: int) -> torch.Tensor:
        """Shard ``i``'s activations ``[n, d_in]`` in the stored dtype (read from disk, or
        harvested — and written, when there is a cache folder)."""
        if self.cache_path is not None:
            acts = self._read_shard(i)
            if acts is not None:
                return acts
        elif i in self._memo:
            return self._memo[i]
        acts = self._harvest_shard(i)
        if self.cache_path is not None:
            self._write_shard(i, acts)
        elif self.n_shards == 1:  # small in-memory runs: harvest once, not once per epoch
            self._memo[i] = acts
        return acts

    def _write_shard(self, i: int, acts: torch.Tensor) -> None:
        from safetensors.torch import save_file

        with atomic_path(self._shard_path(i)) as tmp:
            save_file(
                {"acts": acts.contiguous()},
                str(tmp),
                metadata={
                    "hook_name": self.hook_name,
                    "tokens_sha256": tokens_digest(self._shard_tokens(i)),
                },
            )

    def is_harvested(self) -> bool:
        """True when the cache folder's manifest says these exact activations are complete."""
        if self.cache_path is None or not (self.cache_path / MANIFEST).exists():
            return False
        try:
            m = json.loads((self.cache_path / MANIFEST).read_text())
        except (OSError, ValueError):
            return False
        return (
            m.get("format") == STORE_FORMAT
            and m.get("hook_name") == self.hook_name
            and m.get("tokens_sha256") == tokens_digest(self.tokens)
            and m.get("n_shards") == self.n_shards
            and all(self._shard_path(i).exists() for i in range(self.n_shards))
        )

    def harvest(self, show_progress: bool = True) -> Path:
        """Harvest every missing shard into the cache folder, then write the manifest; returns
        the manifest's path. Raises :class:`ActivationError` without a cache folder."""
        if self.cache_path is None:
            raise ActivationError("harvest() needs a cache folder (cache_path).")
        from csae_bench.activations.harvest import progress

        with progress("harvest") as bar:
            task = bar.add_task(
                f"Harvesting {self.hook_name}", total=len(self.tokens), info="",
                visible=show_progress,
            )
            for i in range(self.n_shards):
                if self._read_shard(i) is None:
                    self._write_shard(i, self._harvest_shard(i))
                bar.update(task, advance=len(self._shard_tokens(i)))
        dtype = next(self.model.parameters()).dtype
        atomic_write_json(
            self.cache_path / MANIFEST,
            {
                "format": STORE_FORMAT,
                "hook_name": self.hook_name,
                "n_tokens": self.n_tokens,
                "d_in": self.d_in,
                "n_contexts": len(self.tokens),
                "context_size": int(self.tokens.shape[1]),
                "n_shards": self.n_shards,
                "dtype": str(dtype).removeprefix("torch."),
                "tokens_sha256": tokens_digest(self.tokens),
            },
        )
        return self.cache_path / MANIFEST

    def all_activations(self) -> torch.Tensor:
        """Every activation ``[n_tokens, d_in]`` in context order and the stored dtype, in memory
        (small runs and tests; training streams :meth:`batches` instead)."""
        return torch.cat([self.shard(i) for i in range(self.n_shards)])

    def batches(
        self, batch_size: int, n_tokens: int | None = None, epoch_seed: int | None = None
    ) -> Iterator[torch.Tensor]:
        """Shuffled float32 ``[batch_size, d_in]`` batches until ``n_tokens`` are served (default
        one epoch; more cycle through the data again, each epoch in a new order). Identical for
        identical seeds, so SAEs trained alongside see the same stream and a resumed run can skip
        the batches it already trained on."""
        total = n_tokens if n_tokens is not None else self.n_tokens
        gen = torch.Generator().manual_seed(self.seed if epoch_seed is None else epoch_seed)
        served = 0
        carry = torch.empty(0, self.d_in)
        while served < total:
            for i in torch.randperm(self.n_shards, generator=gen).tolist():
                chunk = self.shard(i)
                if len(carry):
                    chunk = torch.cat([carry.to(chunk.dtype), chunk])
                perm = torch.randperm(len(chunk), generator=gen)
                n_full = len(chunk) // batch_size * batch_size
                for start in range(0, n_full, batch_size):
                    if served >= total:
                        return
                    yield chunk[perm[start : start + batch_size]].float()
                    served += batch_size
                carry = chunk[perm[n_full:]]
            if served == 0 and len(carry) < batch_size:
                raise ActivationError(
                    f"batch_size {batch_size} exceeds the {len(carry)} harvested tokens; "
                    "lower batch_size or harvest more tokens."
                )

"""The batch-wise exact effect engine (docs/nces.md, "The engine").

An intervention is a residual edit ``delta`` added at the hook ``L`` at one position ``t`` of one
eval context. Its effect is ``Σ_{s=t}^{t+W−1} KL(p(·|clean)_s ‖ p(·|intervened)_s)``, recorded with
the change in the true next-token loss over the same positions.

What the engine reuses, and why it is exact:

* the clean residual at ``L`` is computed once per context; only the layers after ``L`` are run;
* causal attention: an edit at ``t`` changes nothing at positions ``< t``, and positions after
  ``t+W−1`` are never needed, so each intervened sequence is cut to ``[p, t+W)``;
* the clean keys and values of every layer after ``L`` are cached once per context (TransformerLens
  ``TransformerLensKeyValueCache``, which stores pre-rotary keys and applies rotary and the local /
  global masks with the right position offset). A batch of interventions whose positions lie in
  ``[p, p + max_span]`` runs only positions ``p .. t_max+W−1`` with the cached prefix ``< p``;
* interventions are sorted by position and stacked along the batch dimension; the batch size
  follows a memory budget, and a batch (or an unembedding pass) that runs out of memory is
  halved and retried;
* the unembedding and KL are computed in vocabulary chunks (:mod:`csae_bench.interventions.kl`),
  only at the ``W`` window positions. Window rows are pooled over batches (up to
  ``unembed_rows``) and unembedded together with each distinct clean row of the pool, once: a
  matmul of a few rows is bound by reading ``W_U`` (168M entries for Gemma-3), not by arithmetic.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from csae_bench import hooks
from csae_bench.interventions.controls import random_direction_control
from csae_bench.interventions.engine_config import Effects, EngineConfig
from csae_bench.interventions.kl import ChunkedUnembed, kl_and_losses, loss_grad_x
from csae_bench.interventions.types import InterventionError

logger = logging.getLogger(__name__)

_OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory")


def _is_oom(err: BaseException) -> bool:
    """Whether ``err`` reports exhausted memory (CUDA and the CPU allocator word it differently)."""
    return any(marker in str(err).lower() for marker in _OOM_MARKERS)


class _WindowRows:
    """Window rows of edited sequences waiting for the unembedding: for each row its
    intervention's index, its flat clean-row key and its final normalized residual."""

    def __init__(self) -> None:
        self.parts: list[tuple[Tensor, Tensor, Tensor]] = []
        self.n_rows = 0

    def add(self, target_R: Tensor, key_R: Tensor, x_RD: Tensor) -> None:
        self.parts.append((target_R, key_R, x_RD))
        self.n_rows += len(key_R)

    def take(self) -> tuple[Tensor, Tensor, Tensor]:
        target, key, x = (torch.cat(part) for part in zip(*self.parts, strict=True))
        self.parts, self.n_rows = [], 0
        return target, key, x


class EffectEngine:
    """Exact effects of residual edits at one hook of one model on a fixed set of eval contexts.

    ``tokens`` ``[n_ctx, ctx]``. Construction runs the clean pass (hook residual, keys/values of the
    later layers, final normalized residual) once; :meth:`effects` then evaluates any number of
    interventions ``(context, position, delta)``.
    """

    def __init__(
        self, model, hook_name: str, tokens: Tensor, config: EngineConfig | None = None
    ) -> None:
        self.model = model
        self.hook_name = hook_name
        self.config = config or EngineConfig()
        self.layer = hooks.layer_of_hook(hook_name, model.cfg.n_layers, error=InterventionError)
        if hooks.hook_site(hook_name) != "hook_resid_post":
            raise InterventionError(
                f"The engine patches the residual stream: use a blocks.L.hook_resid_post hook, got {hook_name!r}."
            )
        if tokens.ndim != 2 or tokens.shape[1] < 2:
            raise InterventionError(
                f"tokens must be [n_contexts, context_size ≥ 2], got {tuple(tokens.shape)}."
            )
        ctx = tokens.shape[1]
        if self.config.window is not None and self.config.window > ctx - 2:
            raise InterventionError(
                f"Effect window W={self.config.window} does not fit a context of {ctx} tokens "
                f"(an intervention at t ≥ 1 needs t+W ≤ {ctx - 1}); use W ≤ {ctx - 2} or longer contexts."
            )
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.tokens = tokens.to(self.device)
        self.unembed = ChunkedUnembed.from_model(model, self.config.vocab_chunk)
        self._clean_pass()

    # ------------------------------------------------------------------ clean pass

    @property
    def context_size(self) -> int:
        return self.tokens.shape[1]

    @property
    def d_model(self) -> int:
        return self.model.cfg.d_model

    def max_position(self) -> int:
        """The last position an intervention may sit at (its window then ends at ``ctx − 2``)."""
        W = self.config.window or 1
        return self.context_size - 1 - W

    @torch.no_grad()
    def _clean_pass(self) -> None:
        n_ctx, ctx = self.tokens.shape
        L, n_layers = self.layer, self.model.cfg.n_layers
        h, x, keys, values = [], [], [[] for _ in range(n_layers)], [[] for _ in range(n_layers)]
        for start in range(0, n_ctx, self.config.context_batch):
            batch = self.tokens[start : start + self.config.context_batch]
            h_b = self.model(batch, stop_at_layer=L + 1)
            cache = TransformerLensKeyValueCache.init_cache(self.model.cfg, self.device, len(batch))
            h.append(h_b)
            x.append(hooks.final_residual(self.model, h_b, L + 1, past_kv_cache=cache))
            if self.config.reuse_kv:
                for layer in range(L + 1, n_layers):
                    keys[layer].append(cache[layer].past_keys)
                    values[layer].append(cache[layer].past_values)
        self.h_clean_NTD = torch.cat(h)
        self.x_clean_NTD = torch.cat(x)
        self.keys = {
            layer: torch.cat(keys[layer]) for layer in range(L + 1, n_layers) if keys[layer]
        }
        self.values = {
            layer: torch.cat(values[layer]) for layer in range(L + 1, n_layers) if values[layer]
        }

    # ------------------------------------------------------------------ exact effects

    def check_interventions(self, ctx_idx_M: Tensor, pos_M: Tensor, delta_MD: Tensor) -> None:
        M = len(ctx_idx_M)
        if not (len(pos_M) == M and delta_MD.shape == (M, self.d_model)):
            raise InterventionError(
                f"Need ctx_idx [M], pos [M], delta [M, {self.d_model}]; got "
                f"{tuple(ctx_idx_M.shape)}, {tuple(pos_M.shape)}, {tuple(delta_MD.shape)}."
            )
        if M == 0:
            return
        if ctx_idx_M.min() < 0 or ctx_idx_M.max() >= len(self.tokens):
            raise InterventionError(f"Context index out of range [0, {len(self.tokens)}).")
        if pos_M.min() < 0 or pos_M.max() > self.max_position():
            raise InterventionError(
                f"Positions must lie in [0, {self.max_position()}] so that the window W={self.config.window} "
                f"has true next tokens; got {int(pos_M.min())}..{int(pos_M.max())}."
            )

    def _window_len(self, pos_M: Tensor) -> Tensor:
        if self.config.window is None:
            return self.context_size - 1 - pos_M
        return torch.full_like(pos_M, self.config.window)

    def _row_bytes(self, seq: int, prefix: int, rows_out: int) -> float:
        cfg = self.model.cfg
        d_mlp = cfg.d_mlp or 4 * cfg.d_model
        n_kv = cfg.n_key_value_heads or cfg.n_heads
        n_after = cfg.n_layers - self.layer - 1
        act = seq * (8 * cfg.d_model + 3 * d_mlp + 2 * cfg.n_heads * (prefix + seq))
        kv = 2 * n_after * (prefix + seq) * n_kv * cfg.d_head
        vocab = rows_out * 4 * min(self.config.vocab_chunk, self.unembed.d_vocab)
        return 4.0 * (act + kv + vocab) * (2 if self.dtype == torch.float64 else 1)

    def batch_size_for(self, seq: int, prefix: int, rows_out: int) -> int:
        """Interventions per batch that fit :attr:`EngineConfig.memory_budget_mb`."""
        fit = int(self.config.memory_budget_mb * 2**20 // self._row_bytes(seq, prefix, rows_out))
        return max(1, min(self.config.max_batch, fit))

    @torch.no_grad()
    def effects(
        self,
        ctx_idx_M: Tensor,
        pos_M: Tensor,
        delta_MD: Tensor,
        record_dx: bool = False,
        control: bool = False,
        generator: torch.Generator | None = None,
    ) -> Effects:
        """Exact effects of the edits ``h[ctx, pos] += delta`` (one per row).

        ``control=True`` runs the isotropic control instead: each edit keeps its norm and gets a
        random unit direction drawn from ``generator`` (:func:`random_direction_control`). The NCES
        eval does not use this option: it builds its control edits with
        :func:`csae_bench.interventions.controls.get_control` (by default another feature's
        decoder row) and passes them as ordinary edits."""
        ctx_idx_M = torch.as_tensor(ctx_idx_M, dtype=torch.long, device=self.device)
        pos_M = torch.as_tensor(pos_M, dtype=torch.long, device=self.device)
        if control:
            delta_MD = random_direction_control(delta_MD, generator)
        delta_MD = delta_MD.to(self.device, self.dtype)
        self.check_interventions(ctx_idx_M, pos_M, delta_MD)
        M = len(ctx_idx_M)
        kl = torch.zeros(M, dtype=torch.float64, device=self.device)
        dloss = torch.zeros(M, dtype=torch.float64, device=self.device)
        dx = (
            torch.zeros(M, self.d_model, dtype=self.dtype, device=self.device)
            if record_dx
            else None
        )
        wlen = self._window_len(pos_M)
        stats = {
            "batches": 0,
            "positions_run": 0,
            "positions_full_rerun": 0,
            "oom_retries": 0,
            "unembed_passes": 0,
            "rows_unembedded": 0,
        }
        order = torch.argsort(pos_M * len(self.tokens) + ctx_idx_M, stable=True)
        pool = _WindowRows()
        i = 0
        while i < M:
            p = int(pos_M[order[i]]) if self.config.reuse_kv else 0
            # grow the batch while the span and the memory budget allow
            j_max = i
            while (
                j_max + 1 < M
                and int(pos_M[order[j_max + 1]]) - int(pos_M[order[i]]) <= self.config.max_span
            ):
                j_max += 1
            seq = int((pos_M[order[i : j_max + 1]] + wlen[order[i : j_max + 1]]).max()) - p
            rows_out = int(wlen[order[i]]) if self.config.window is not None else seq
            bs = self.batch_size_for(seq, p, 2 * rows_out)
            sel = order[i : min(j_max + 1, i + bs)]
            while True:
                try:
                    self._run_batch(sel, p, ctx_idx_M, pos_M, wlen, delta_MD, pool, dx, stats)
                    break
                except (torch.OutOfMemoryError, RuntimeError) as err:
                    if not _is_oom(err):
                        raise
                    if len(sel) == 1:
                        raise InterventionError(
                            "One intervention does not fit in memory; use a shorter window or shorter contexts."
                        ) from err
                    sel = sel[: len(sel) // 2]
                    self._after_oom(stats, "Intervention batch", len(sel))
            i += len(sel)
            if pool.n_rows >= self.pool_rows() or i >= M:
                self._unembed_pool(pool, kl, dloss, stats)
        return Effects(kl, dloss, wlen, dx, stats)

    def pool_rows(self) -> int:
        """Most window rows per unembedding pass (the pool is flushed once it holds this many):
        :attr:`EngineConfig.unembed_rows`, capped so that a chunk's logits, their float64 copy and
        temporaries (≈ 36 bytes an entry, clean rows counted) fit the memory budget."""
        chunk = min(self.config.vocab_chunk, self.unembed.d_vocab)
        fit = int(self.config.memory_budget_mb * 2**20 // (2 * 36 * chunk))
        return max(1, min(self.config.unembed_rows, fit))

    def _run_batch(self, sel, p, ctx_idx_M, pos_M, wlen, delta_MD, pool, dx, stats) -> None:
        """Run one batch of edited sequences; its window rows join ``pool`` for the unembedding."""
        ctx_b, pos_b, wlen_b = ctx_idx_M[sel], pos_M[sel], wlen[sel]
        B = len(sel)
        seq = int((pos_b + wlen_b).max()) - p
        rel = pos_b - p
        inp = self.h_clean_NTD[ctx_b, p : p + seq].clone()
        inp[torch.arange(B, device=self.device), rel] += delta_MD[sel]
        cache = self._prefix_cache(ctx_b, p) if p > 0 else None
        x_int = hooks.final_residual(self.model, inp, self.layer + 1, past_kv_cache=cache)
        # window rows: (intervention b, offset w) for w < wlen_b
        W_max = int(wlen_b.max())
        w = torch.arange(W_max, device=self.device)
        valid = w[None, :] < wlen_b[:, None]
        b_idx, w_idx = valid.nonzero(as_tuple=True)
        abs_pos = pos_b[b_idx] + w_idx
        x_window = x_int[b_idx, rel[b_idx] + w_idx]
        if dx is not None:
            dx[sel] = (
                x_int[torch.arange(B, device=self.device), rel] - self.x_clean_NTD[ctx_b, pos_b]
            )
        stats["batches"] += 1
        stats["positions_run"] += B * seq
        stats["positions_full_rerun"] += (
            int((pos_b + wlen_b).sum()) if self.config.window is not None else B * self.context_size
        )
        # last, so that a batch retried after running out of memory is never pooled twice
        pool.add(sel[b_idx], ctx_b[b_idx] * self.context_size + abs_pos, x_window)

    def _unembed_pool(self, pool: _WindowRows, kl: Tensor, dloss: Tensor, stats: dict) -> None:
        """KL and loss change of every pooled window row, added to its intervention's totals, in
        passes of at most :meth:`pool_rows` rows (a batch can overfill the pool); each distinct
        clean row of a pass (a flat ``context · context_size + position`` key) is unembedded
        once. A pass that runs out of memory is split in halves and retried."""
        if not pool.n_rows:
            return
        target_R, key_R, x_int_R = pool.take()
        n, step = len(key_R), self.pool_rows()
        todo = [(start, min(start + step, n)) for start in reversed(range(0, n, step))]
        while todo:
            start, stop = todo.pop()
            rows = slice(start, stop)
            if self._unembed_rows(target_R[rows], key_R[rows], x_int_R[rows], kl, dloss, stats):
                continue
            if stop - start == 1:  # retried here, not in the handler: its traceback holds memory
                raise InterventionError(
                    "One window row does not fit in memory for the unembedding; lower vocab_chunk."
                )
            mid = (start + stop) // 2
            self._after_oom(stats, f"Unembedding {stop - start} rows", mid - start)
            todo += [(mid, stop), (start, mid)]

    def _unembed_rows(self, target_R, key_R, x_int_R, kl, dloss, stats) -> bool:
        """One unembedding pass; False when it ran out of memory (nothing was added)."""
        try:
            uniq, inverse = torch.unique(key_R, return_inverse=True)
            x_clean_U = self.x_clean_NTD.reshape(-1, self.d_model)[uniq]
            next_tok = self.tokens.reshape(-1)[key_R + 1]  # a window never reaches a context's end
            kl_R, loss_clean_R, loss_int_R = self._kl(x_clean_U, inverse, x_int_R, next_tok)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not _is_oom(err):
                raise
            return False
        kl.index_add_(0, target_R, kl_R)
        dloss.index_add_(0, target_R, loss_int_R - loss_clean_R)
        stats["unembed_passes"] += 1
        stats["rows_unembedded"] += len(key_R) + len(uniq)
        return True

    def _after_oom(self, stats: dict, what: str, retry_size: int) -> None:
        """Count and report a retry after running out of memory; let CUDA free cached blocks."""
        stats["oom_retries"] += 1
        logger.warning("%s ran out of memory; retrying with %d.", what, retry_size)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _kl(self, x_clean_U, inverse, x_int_R, next_tok):
        return kl_and_losses(self.unembed, x_clean_U, x_int_R, next_tok, clean_index_R=inverse)

    def _prefix_cache(self, ctx_b: Tensor, p: int) -> TransformerLensKeyValueCache | None:
        return hooks.frozen_kv_cache(
            self.model,
            {layer: k[ctx_b, :p] for layer, k in self.keys.items()},
            {layer: v[ctx_b, :p] for layer, v in self.values.items()},
        )

    # ------------------------------------------------------------------ attribution

    def loss_gradients(self) -> Tensor:
        """``∂ Σ_s loss_s / ∂ h_t`` at the hook for every eval token ``[n_ctx, ctx, d_model]``
        (one backward pass per context batch; cached)."""
        if getattr(self, "_grad_NTD", None) is None:
            self._grad_NTD = self._loss_gradients()
        return self._grad_NTD

    def _loss_gradients(self) -> Tensor:
        n_ctx, ctx = self.tokens.shape
        out = []
        for start in range(0, n_ctx, self.config.context_batch):
            h = (
                self.h_clean_NTD[start : start + self.config.context_batch]
                .detach()
                .clone()
                .requires_grad_(True)
            )
            with torch.enable_grad():
                x = hooks.final_residual(self.model, h, self.layer + 1)[:, :-1]
                B = x.shape[0]
                nxt = self.tokens[start : start + B, 1:].reshape(-1)
                g_x = loss_grad_x(self.unembed, x.detach().reshape(-1, self.d_model), nxt)
                x.backward(g_x.reshape(x.shape))
            out.append(h.grad.detach())
        return torch.cat(out)

    def attribution(self, ctx_idx_M: Tensor, pos_M: Tensor, delta_MD: Tensor) -> Tensor:
        """First-order estimate of each edit's change in the total next-token loss,
        ``∇_h Σ_s loss_s · delta`` (all later positions, not only the window)."""
        g = self.loss_gradients()
        ctx_idx_M = torch.as_tensor(ctx_idx_M, dtype=torch.long, device=self.device)
        pos_M = torch.as_tensor(pos_M, dtype=torch.long, device=self.device)
        return (g[ctx_idx_M, pos_M] * delta_MD.to(g)).sum(-1)


def check_sae_matches(sae, model, hook_name: str, name: str = "given") -> None:
    """Raise :class:`InterventionError` if the SAE was not made for this model's ``hook_name``:
    its own hook differs, or :func:`csae_bench.architectures.loading.check_sae_fits` (the one
    SAE-vs-model check: width, layer, hook kind) refuses it."""
    from csae_bench.architectures.loading import check_sae_fits
    from csae_bench.errors import SaeMismatchError

    sae_hook = getattr(getattr(sae, "cfg", None), "hook_name", None)
    if sae_hook is not None and sae_hook != hook_name:
        raise InterventionError(
            f"The SAE was trained at {sae_hook!r} but the eval hook is {hook_name!r}; pass the matching hook."
        )
    try:
        check_sae_fits(name, int(sae.W_dec.shape[1]), hook_name, model)
    except SaeMismatchError as err:
        raise InterventionError(str(err)) from None

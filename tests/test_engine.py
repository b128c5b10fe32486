"""The exact effect engine against the naive reference, chunked KL, attribution, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import SPECS, random_sae, tiny_model

from csae_bench.interventions import InterventionError, feature_edit_BTD, make_intervention
from csae_bench.interventions.engine import (
    EffectEngine,
    EngineConfig,
    check_sae_matches,
    random_direction_control,
)
from csae_bench.interventions.kl import ChunkedUnembed, kl_and_losses, loss_grad_x
from csae_bench.interventions.reference import naive_effects

# Tiny ops on a shared 2-core machine run far faster on one thread (fixture in conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def tiny64(tiny_model):
    """The tiny Gemma-like model in float64, so the comparison tests the engine, not rounding."""
    return copy.deepcopy(tiny_model).to(torch.float64)


@pytest.fixture(scope="module")
def tiny_gpt2():
    return tiny_model("gpt2").to(torch.float64)


def sae_interventions(engine, sae, spec: str, n: int, seed: int = 0):
    """``n`` random (feature, context, position) interventions of type ``spec`` on active features."""
    gen = torch.Generator().manual_seed(seed)
    h = engine.h_clean_NTD.float()
    f = sae.encode(h)
    iv = make_intervention(spec).fit(f[:, 1:].reshape(-1, f.shape[-1]))
    ctx = torch.randint(0, len(h), (n,), generator=gen)
    pos = torch.randint(1, engine.max_position() + 1, (n,), generator=gen)
    feats = f[ctx, pos].argsort(-1, descending=True)[:, :4]
    feat = feats[torch.arange(n), torch.randint(0, 4, (n,), generator=gen)]  # active (top-4) features
    delta = feature_edit_BTD(sae, h[ctx, pos][:, None], feat[:, None, None], iv, generator=gen)[:, 0]
    return ctx, pos, delta.to(engine.dtype)


def assert_same_effects(eng, ref, rtol=1e-4):
    rel = ((eng.kl - ref.kl).abs() / ref.kl.abs().clamp(min=1e-12)).max()
    assert rel <= rtol, f"KL differs from the naive reference by {rel:.2e} relative"
    scale = ref.dloss.abs().clamp(min=1e-3)
    assert ((eng.dloss - ref.dloss).abs() / scale).max() <= rtol
    assert torch.equal(eng.n_positions.cpu(), ref.n_positions)


@pytest.mark.parametrize("spec", [*SPECS, "control"])
def test_engine_equals_naive_for_every_intervention_type(tiny64, tiny_tokens, spec):
    engine = EffectEngine(tiny64, HOOK, tiny_tokens, EngineConfig(window=4, vocab_chunk=100, max_batch=5))
    sae = random_sae()
    ctx, pos, delta = sae_interventions(engine, sae, "zero" if spec == "control" else spec, n=12)
    if spec == "control":
        delta = random_direction_control(delta, torch.Generator().manual_seed(0))
    eng = engine.effects(ctx, pos, delta)
    ref = naive_effects(tiny64, HOOK, tiny_tokens, ctx, pos, delta, window=4)
    assert (ref.kl > 0).all()
    assert_same_effects(eng, ref)


@pytest.mark.parametrize("window", [1, 4, None])
@pytest.mark.parametrize("reuse_kv", [True, False])
def test_engine_equals_naive_for_windows_and_reuse(tiny64, tiny_tokens, window, reuse_kv):
    engine = EffectEngine(tiny64, HOOK, tiny_tokens, EngineConfig(window=window, reuse_kv=reuse_kv, max_span=3))
    ctx, pos, delta = sae_interventions(engine, random_sae(), "clamp:5", n=10, seed=1)
    assert_same_effects(engine.effects(ctx, pos, delta), naive_effects(tiny64, HOOK, tiny_tokens, ctx, pos, delta, window))


def test_engine_equals_naive_on_gpt2_architecture(tiny_gpt2, tiny_tokens):
    engine = EffectEngine(tiny_gpt2, "blocks.2.hook_resid_post", tiny_tokens, EngineConfig(window=3))
    gen = torch.Generator().manual_seed(0)
    ctx, pos = torch.randint(0, 8, (8,), generator=gen), torch.randint(1, engine.max_position() + 1, (8,), generator=gen)
    delta = 2 * torch.randn(8, 64, generator=gen, dtype=torch.float64)
    ref = naive_effects(tiny_gpt2, "blocks.2.hook_resid_post", tiny_tokens, ctx, pos, delta, 3)
    assert_same_effects(engine.effects(ctx, pos, delta), ref)


def test_kv_reuse_and_truncation_run_fewer_positions(tiny64, tiny_tokens):
    ctx, pos = torch.arange(8).repeat(3), torch.arange(24) % 20 + 5
    delta = torch.randn(24, 64, dtype=torch.float64)
    reuse = EffectEngine(tiny64, HOOK, tiny_tokens, EngineConfig(window=2)).effects(ctx, pos, delta)
    trunc = EffectEngine(tiny64, HOOK, tiny_tokens, EngineConfig(window=2, reuse_kv=False)).effects(ctx, pos, delta)
    torch.testing.assert_close(reuse.kl, trunc.kl)
    assert reuse.stats["positions_run"] < trunc.stats["positions_run"] <= 8 * 32 * 3


def test_memory_budget_sets_the_batch_size(tiny64, tiny_tokens):
    ctx, pos, delta = torch.zeros(6, dtype=torch.long), torch.full((6,), 3), torch.randn(6, 64, dtype=torch.float64)
    small = EffectEngine(tiny64, HOOK, tiny_tokens, EngineConfig(memory_budget_mb=1e-4))
    big = EffectEngine(tiny64, HOOK, tiny_tokens, EngineConfig(memory_budget_mb=1024))
    assert small.batch_size_for(8, 4, 8) == 1 and big.batch_size_for(8, 4, 8) > 1
    assert small.pool_rows() == 1 and big.pool_rows() == 512
    a, b = small.effects(ctx, pos, delta), big.effects(ctx, pos, delta)
    assert a.stats["batches"] == 6 and b.stats["batches"] == 1
    torch.testing.assert_close(a.kl, b.kl)


def test_out_of_memory_shrinks_the_batch(tiny64, tiny_tokens, monkeypatch):
    engine = EffectEngine(tiny64, HOOK, tiny_tokens, EngineConfig(window=2))
    ctx, pos, delta = torch.arange(8), torch.full((8,), 4), torch.randn(8, 64, dtype=torch.float64)
    expected = engine.effects(ctx, pos, delta).kl
    real_forward = engine.model.forward

    def forward_with_limit(inp, *args, **kwargs):
        if torch.is_tensor(inp) and inp.ndim == 3 and inp.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(inp, *args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", forward_with_limit)
    got = engine.effects(ctx, pos, delta)
    assert got.stats["oom_retries"] >= 2
    torch.testing.assert_close(got.kl, expected)


def test_bad_input_is_refused_with_a_reason(tiny_model, tiny_tokens):
    with pytest.raises(InterventionError, match="does not fit"):
        EffectEngine(tiny_model, HOOK, tiny_tokens, EngineConfig(window=40))
    with pytest.raises(InterventionError, match="out of range"):
        EffectEngine(tiny_model, "blocks.9.hook_resid_post", tiny_tokens)
    engine = EffectEngine(tiny_model, HOOK, tiny_tokens, EngineConfig(window=4))
    with pytest.raises(InterventionError, match="Positions"):
        engine.effects(torch.tensor([0]), torch.tensor([30]), torch.zeros(1, 64))
    with pytest.raises(InterventionError, match="Context index"):
        engine.effects(torch.tensor([8]), torch.tensor([3]), torch.zeros(1, 64))
    sae = random_sae(d_in=32)
    with pytest.raises(InterventionError, match="d_in"):
        check_sae_matches(sae, tiny_model, HOOK)
    sae = random_sae()
    with pytest.raises(InterventionError, match="trained at"):
        check_sae_matches(sae, tiny_model, "blocks.2.hook_resid_post")


def test_control_keeps_the_norm_and_is_seeded():
    delta = torch.randn(5, 64)
    a = random_direction_control(delta, torch.Generator().manual_seed(3))
    b = random_direction_control(delta, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.norm(dim=-1), delta.norm(dim=-1))
    assert torch.equal(a, b)
    assert (torch.nn.functional.cosine_similarity(a, delta).abs() < 0.6).all()


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_chunked_kl_and_loss_gradient_match_full_vocab(softcap):
    gen = torch.Generator().manual_seed(0)
    W_U, b_U = torch.randn(16, 300, generator=gen, dtype=torch.float64), torch.randn(300, generator=gen, dtype=torch.float64)
    un = ChunkedUnembed(W_U, b_U, softcap, chunk=64)
    xa, xb = torch.randn(7, 16, generator=gen, dtype=torch.float64), torch.randn(7, 16, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 300, (7,), generator=gen)
    full = lambda x: un.logits(x, 0, 300)  # noqa: E731
    la, lb = F.log_softmax(full(xa), -1), F.log_softmax(full(xb), -1)
    kl, loss_a, loss_b = kl_and_losses(un, xa[[2, 0, 1]], xb, y, clean_index_R=torch.tensor([1, 2, 0, 1, 2, 0, 0]))
    xa_rows = xa[[0, 1, 2, 0, 1, 2, 2]]
    la = F.log_softmax(full(xa_rows), -1)
    torch.testing.assert_close(kl, (la.exp() * (la - lb)).sum(-1))
    torch.testing.assert_close(loss_b, -lb.gather(-1, y[:, None])[:, 0])
    x = xb.clone().requires_grad_(True)
    F.cross_entropy(full(x), y, reduction="sum").backward()
    torch.testing.assert_close(loss_grad_x(un, xb, y), x.grad)


def test_attribution_is_the_first_order_term(tiny64, tiny_tokens):
    """For small edits, attribution equals the exact change of the total loss (window = all)."""
    engine = EffectEngine(tiny64, HOOK, tiny_tokens, EngineConfig(window=None))
    gen = torch.Generator().manual_seed(0)
    ctx, pos = torch.randint(0, 8, (10,), generator=gen), torch.randint(1, 25, (10,), generator=gen)
    delta = 1e-4 * torch.randn(10, 64, generator=gen, dtype=torch.float64)
    exact = engine.effects(ctx, pos, delta).dloss
    attr = engine.attribution(ctx, pos, delta)
    torch.testing.assert_close(attr, exact.to(attr), rtol=1e-2, atol=1e-9)


@pytest.mark.parametrize("spec", ["zero", "clamp:-1", "control"])
def test_engine_equals_naive_on_the_embedded_model(embedded_model, embedded_eval_tokens, spec):
    hook = "blocks.6.hook_resid_post"
    toks = embedded_eval_tokens[:2, :32]
    engine = EffectEngine(embedded_model, hook, toks, EngineConfig(window=4))
    gen = torch.Generator().manual_seed(0)
    d = engine.h_clean_NTD[0, 5].norm().item()
    ctx, pos = torch.tensor([0, 1]), torch.tensor([3, 20])
    delta = 0.3 * d * torch.randn(2, embedded_model.cfg.d_model, generator=gen) / embedded_model.cfg.d_model**0.5
    if spec == "clamp:-1":
        delta = -2 * engine.h_clean_NTD[ctx, pos]  # a large edit along the residual itself
    eng = engine.effects(ctx, pos, delta, control=spec == "control", generator=torch.Generator().manual_seed(1))
    if spec == "control":
        delta = random_direction_control(delta, torch.Generator().manual_seed(1))
    ref = naive_effects(embedded_model, hook, toks, ctx, pos, delta, window=4)
    assert (ref.kl > 1e-4).all()
    assert_same_effects(eng, ref)


def test_other_feature_control_uses_an_inactive_alive_feature():
    from csae_bench.interventions import other_feature_control

    sae = random_sae()
    feats = torch.tensor([3, 5])
    acts = torch.zeros(2, 256)
    acts[:, :200] = 1.0  # features 0..199 active at both tokens
    alive = torch.ones(256, dtype=torch.bool)
    alive[250:] = False
    delta = torch.tensor([[-2.0], [0.5]]) * sae.W_dec[feats]
    ctrl = other_feature_control(sae, delta, feats, acts, torch.Generator().manual_seed(0), alive)
    torch.testing.assert_close(ctrl.norm(dim=-1), delta.norm(dim=-1))
    j = (ctrl @ sae.W_dec.T).abs().argmax(-1)  # unit rows: the chosen direction has |cos| = 1
    assert ((j >= 200) & (j < 250)).all()
    torch.testing.assert_close(ctrl, torch.tensor([[-2.0], [0.5]]) * sae.W_dec[j])


def test_other_feature_control_falls_back_for_a_collapsed_sae():
    """One alive feature (a collapsed SAE): inactive dead features stand in; where every feature is
    active, an isotropic direction of the same norm — never an error that kills the eval."""
    from csae_bench.interventions import other_feature_control

    sae = random_sae()
    feats = torch.tensor([3, 3])
    acts = torch.zeros(2, 256)
    acts[0, 3] = 1.0
    acts[1, :] = 1.0  # every feature active at the second token
    alive = torch.zeros(256, dtype=torch.bool)
    alive[3] = True
    delta = torch.tensor([[-1.0], [-1.0]]) * sae.W_dec[feats]
    ctrl = other_feature_control(sae, delta, feats, acts, torch.Generator().manual_seed(0), alive)
    torch.testing.assert_close(ctrl.norm(dim=-1), delta.norm(dim=-1))
    cos = (ctrl @ sae.W_dec.T).abs() / (ctrl.norm(dim=-1, keepdim=True) * sae.W_dec.norm(dim=-1))
    assert cos[0].max() > 0.999 and cos[0].argmax() != 3  # another dictionary direction
    assert cos[1].max() < 0.999  # isotropic: not a dictionary row


def test_window_rows_pool_across_batches(tiny64, tiny_tokens):
    """Pooling the window rows of several batches into one unembedding pass, or cutting a batch's
    rows into several, changes nothing but the number of passes."""
    ctx, pos, delta = sae_interventions(
        EffectEngine(tiny64, HOOK, tiny_tokens), random_sae(), "zero", n=12, seed=2
    )
    runs = {
        rows: EffectEngine(tiny64, HOOK, tiny_tokens, EngineConfig(window=4, max_batch=3, unembed_rows=rows))
        .effects(ctx, pos, delta)
        for rows in (1, 5, 12, 512)
    }
    assert runs[1].stats["batches"] == 4  # 12 edits, 3 a batch, W = 4: 12 window rows a batch
    assert runs[1].stats["unembed_passes"] == 48  # a row a pass
    assert runs[5].stats["unembed_passes"] == 12  # each batch's 12 rows as 5 + 5 + 2
    assert runs[12].stats["unembed_passes"] == 4
    assert runs[512].stats["unembed_passes"] == 1
    for rows in (5, 12, 512):
        torch.testing.assert_close(runs[rows].kl, runs[1].kl, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(runs[rows].dloss, runs[1].dloss, rtol=1e-12, atol=1e-14)
    # each distinct clean row once per pass: fewer clean rows in one pool than in four
    assert runs[512].stats["rows_unembedded"] <= runs[12].stats["rows_unembedded"]


def test_small_kl_is_exact_on_float32_logits():
    """A KL of ~1e-4 nats between float32 logits that also differ by a uniform shift (which
    leaves the distribution alone) is exact to 1e-6 relative (``W_U = I`` makes the logits exactly
    the inputs): float32 entries would leave ~1e-7 × the shift in it, float32 sums ~1e-6 nats."""
    V = 2048
    gen = torch.Generator().manual_seed(0)
    a = 3 * torch.randn(6, V, generator=gen)
    b = a + 0.01 * torch.randn(6, V, generator=gen) + 0.5
    un = ChunkedUnembed(torch.eye(V), torch.zeros(V), None, chunk=512)
    kl, _, _ = kl_and_losses(un, a, b, None)
    la, lb = F.log_softmax(a.double(), -1), F.log_softmax(b.double(), -1)
    ref = (la.exp() * (la - lb)).sum(-1)
    assert (ref > 1e-5).all() and (ref < 1e-3).all()
    torch.testing.assert_close(kl, ref, rtol=1e-6, atol=0)


def test_unembedding_pass_out_of_memory_splits_and_retries(tiny64, tiny_tokens, monkeypatch):
    ctx, pos, delta = sae_interventions(
        EffectEngine(tiny64, HOOK, tiny_tokens), random_sae(), "zero", n=8, seed=3
    )
    ref = EffectEngine(tiny64, HOOK, tiny_tokens, EngineConfig(window=4)).effects(ctx, pos, delta)
    engine = EffectEngine(tiny64, HOOK, tiny_tokens, EngineConfig(window=4))
    real = engine._kl

    def small_memory(x_clean_U, inverse, x_int_R, next_tok):
        if len(x_int_R) > 8:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(x_clean_U, inverse, x_int_R, next_tok)

    monkeypatch.setattr(engine, "_kl", small_memory)
    got = engine.effects(ctx, pos, delta)
    assert got.stats["oom_retries"] == 3 and got.stats["unembed_passes"] == 4  # 32 rows -> 4 × 8
    torch.testing.assert_close(got.kl, ref.kl, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got.dloss, ref.dloss, rtol=1e-12, atol=1e-14)

"""The CSAE's causal terms: sampled-token gradients, Fisher faithfulness, exact end-to-end KL,
Fisher NCES and sensitive directions — each checked against a naive reference computation."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model as _tiny

from csae_bench.activations.gradient_pool import (
    GradientError,
    GradientPool,
    final_residual,
    harvest_gradient_pool,
    sampled_logprob_grads,
    suffix_start,
)
from csae_bench.architectures.csae_losses import (
    end_to_end_kl,
    fisher_faithfulness,
    fisher_nces,
    mean_fisher_factor,
    metric_faithfulness,
    sensitive_directions,
    spliced_kl,
)

HOOK = "blocks.1.hook_resid_post"


def _naive_logprob_grads(model, hook_name, tokens_BT, y_BTS):
    """∇_h Σ_t log p(y_{t,s}) by plain autograd on full logits, one backward per sample."""
    start = suffix_start(model, hook_name)
    with torch.no_grad():
        h = model(tokens_BT, stop_at_layer=start)
    h = h.detach().requires_grad_(True)
    logp = torch.log_softmax(model(h, start_at_layer=start), dim=-1)
    out = []
    for s in range(y_BTS.shape[-1]):
        total = logp.gather(-1, y_BTS[..., s : s + 1]).sum()
        out.append(torch.autograd.grad(total, h, retain_graph=True)[0])
    return torch.stack(out, dim=2)  # [B, T, S, D]


def _naive_spliced_logits(model, hook_name, tokens_BT, replace):
    def hook(act, hook):  # noqa: ARG001
        return replace(act)

    return model.run_with_hooks(tokens_BT, fwd_hooks=[(hook_name, hook)])


def _kl(clean_logits, logits):
    p = torch.log_softmax(clean_logits, -1)
    q = torch.log_softmax(logits, -1)
    return (p.exp() * (p - q)).sum(-1)


@pytest.fixture(scope="module")
def tiny_pool(tiny_model, tiny_tokens):
    return harvest_gradient_pool(tiny_model, HOOK, tiny_tokens, n_samples=8, show_progress=False)


class NearIdentitySAE(torch.nn.Module):
    """A stand-in SAE: ĥ = h + (W h + b) with small trainable W, b."""

    def __init__(self, d: int, scale: float = 0.05) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.W = torch.nn.Parameter(scale * torch.randn(d, d, generator=gen) / d**0.5)
        self.b = torch.nn.Parameter(scale * torch.randn(d, generator=gen))

    def forward(self, h_ND):
        return h_ND + h_ND @ self.W + self.b


# --- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "softcap"), [("gemma3", None), ("gemma3", 3.0), ("gpt2", None)])
def test_pool_gradients_match_naive_autograd(arch, softcap, tiny_tokens):
    model, tokens, S = _tiny(arch, softcap), tiny_tokens[:3], 3
    pool = harvest_gradient_pool(model, HOOK, tokens, n_samples=S, batch_contexts=8, seed=5,
                                 show_progress=False)
    # Recover the sampled tokens: same seed, same (single) batch, same draw order.
    start = suffix_start(model, HOOK)
    with torch.no_grad():
        x = final_residual(model, model(tokens, stop_at_layer=start), start)
        B, T, D = x.shape
        _, y_NS = sampled_logprob_grads(model, x.reshape(B * T, D), S, torch.Generator().manual_seed(5))
    naive_BTSD = _naive_logprob_grads(model, HOOK, tokens, y_NS.reshape(B, T, S))
    with torch.no_grad():
        h_BTD = model(tokens, stop_at_layer=start)
    torch.testing.assert_close(pool.acts_ND, h_BTD.reshape(B * T, D))
    torch.testing.assert_close(pool.grads_NSD, naive_BTSD.reshape(B * T, S, D), rtol=1e-4, atol=1e-5)
    assert pool.grads_NSD.abs().max() > 0


def test_pool_is_deterministic_and_round_trips(tiny_model, tiny_tokens, tiny_pool, tmp_path):
    again = harvest_gradient_pool(tiny_model, HOOK, tiny_tokens, n_samples=8, show_progress=False)
    assert torch.equal(again.grads_NSD, tiny_pool.grads_NSD)
    tiny_pool.save(tmp_path / "pool.safetensors")
    loaded = GradientPool.load(tmp_path / "pool.safetensors")
    assert loaded.hook_name == HOOK and torch.equal(loaded.grads_NSD, tiny_pool.grads_NSD)
    acts_a, grads_a = loaded.sample(16, torch.Generator().manual_seed(3))
    acts_b, grads_b = tiny_pool.sample(16, torch.Generator().manual_seed(3))
    assert acts_a.shape == (16, 64) and grads_a.shape == (16, 8, 64)
    assert torch.equal(acts_a, acts_b) and torch.equal(grads_a, grads_b)
    # rows stay aligned: each sampled activation is the pool row its gradients came from
    row = (tiny_pool.acts_ND == acts_a[0]).all(-1).nonzero()[0, 0]
    assert torch.equal(tiny_pool.grads_NSD[row], grads_a[0])


# --- Fisher term vs exact KL -----------------------------------------------------------------


def _one_position_effects(model, tokens_1T, t, delta_D):
    """(exact summed KL, exact Fisher ½ Σ_t' Var_p(J δ)) when h at position t moves by delta_D;
    the Fisher quadratic form comes from a forward-mode JVP of the logits, no sampling."""
    start = suffix_start(model, HOOK)
    with torch.no_grad():
        h = model(tokens_1T, stop_at_layer=start)
        clean = model(h, start_at_layer=start)
    move = torch.zeros_like(h)
    move[0, t] = delta_D
    with torch.no_grad():
        exact_kl = float(_kl(clean, model(h + move, start_at_layer=start)).sum())
    _, dlogits = torch.func.jvp(lambda e: model(h + e * move, start_at_layer=start),
                                (torch.zeros(()),), (torch.ones(()),))
    p = torch.softmax(clean, -1)
    dlogits = dlogits.detach()
    fisher = float(0.5 * ((p * dlogits**2).sum(-1) - (p * dlogits).sum(-1) ** 2).sum())
    return exact_kl, fisher


def test_fisher_term_matches_exact_kl_for_small_perturbations(tiny_model, tiny_tokens):
    """Perturb h at one position: the exact KL (summed over later positions) approaches the
    Fisher quadratic form as ε → 0, and the pool's sampled gradients estimate that form."""
    tokens, t, copies, S = tiny_tokens[:1, :8], 5, 100, 8
    # copies of one context give copies × S independent samples of g at position t
    pool = harvest_gradient_pool(tiny_model, HOOK, tokens.expand(copies, -1).contiguous(), n_samples=S,
                                 batch_contexts=copies, seed=1, show_progress=False)
    h_D = pool.acts_ND[t]
    g_GD = pool.grads_NSD.reshape(copies, 8, S, 64)[:, t].reshape(copies * S, 64)
    gen = torch.Generator().manual_seed(0)
    random_D = torch.randn(64, generator=gen)
    random_D /= random_D.norm()
    sensitive_D = torch.linalg.svd(g_GD, full_matrices=False).Vh[0]  # top Fisher eigendirection
    out = {}
    for name, d in [("random", random_D), ("sensitive", sensitive_D)]:
        for eps in (3e-1, 1e-2):
            delta_D = eps * h_D.norm() * d
            exact_kl, fisher = _one_position_effects(tiny_model, tokens, t, delta_D)
            sampled = float(fisher_faithfulness(h_D[None], (h_D + delta_D)[None], g_GD[None]))
            out[name, eps] = exact_kl, fisher, sampled
    for name in ("random", "sensitive"):
        exact_kl, fisher, sampled = out[name, 1e-2]
        assert exact_kl / fisher == pytest.approx(1.0, abs=0.03), (name, exact_kl, fisher)
        assert sampled / fisher == pytest.approx(1.0, abs=0.15), (name, sampled, fisher)  # 800 samples
    # large moves along a sensitive direction leave the second-order regime
    big_kl, big_fisher, _ = out["sensitive", 3e-1]
    assert abs(big_kl / big_fisher - 1) > abs(out["sensitive", 1e-2][0] / out["sensitive", 1e-2][1] - 1)
    # the model is more sensitive along the sensitive direction, by every measure
    for i in range(3):
        assert out["sensitive", 1e-2][i] > 3 * out["random", 1e-2][i]


def test_fisher_faithfulness_is_differentiable_and_zero_at_perfect_reconstruction(tiny_pool):
    acts, grads = tiny_pool.sample(32, torch.Generator().manual_seed(0))
    assert float(fisher_faithfulness(acts, acts.clone(), grads)) == 0.0
    recon = (acts * 0.8).requires_grad_(True)
    loss = fisher_faithfulness(acts, recon, grads)
    loss.backward()
    assert loss > 0 and recon.grad.abs().sum() > 0


def test_mean_fisher_factor_reproduces_the_pool_fisher_and_truncates_by_energy():
    gen = torch.Generator().manual_seed(0)
    # gradients concentrated in 3 directions plus a little isotropic noise
    basis = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))[0][:, :3]
    grads = (torch.randn(200, 4, 3, generator=gen, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ basis.T
    grads = (grads + 1e-3 * torch.randn(200, 4, 16, generator=gen, dtype=torch.float64)).float()
    g = grads.reshape(-1, 16).double()
    fisher = g.T @ g / len(g)
    full = mean_fisher_factor(grads, energy=1.0).double()
    torch.testing.assert_close(full @ full.T, fisher, rtol=1e-4, atol=1e-6)
    low = mean_fisher_factor(grads, energy=0.99)
    assert low.shape == (16, 3)  # the three planted directions carry > 99% of the trace
    err = torch.randn(8, 16, generator=gen)
    exact = 0.5 * torch.einsum("bd,de,be->b", err.double(), fisher, err.double()).mean()
    torch.testing.assert_close(metric_faithfulness(err, full.float()).double(), exact, rtol=1e-4, atol=0)
    assert abs(float(metric_faithfulness(err, low)) - float(exact)) < 0.02 * float(exact)
    normed = mean_fisher_factor(grads, energy=1.0, normalize=True).double()
    torch.testing.assert_close(normed @ normed.T, fisher * 16 / fisher.trace(), rtol=1e-4, atol=1e-6)
    with pytest.raises(GradientError, match="do not match"):
        metric_faithfulness(err[:, :8], full.float())
    with pytest.raises(GradientError, match="Fisher matrix is zero"):
        mean_fisher_factor(torch.zeros(4, 2, 16))


def test_fisher_clip_keeps_one_extreme_token_from_setting_the_metric():
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(200, 2, 16, generator=gen)
    spike = torch.zeros(16)
    spike[3] = 1.0
    grads[7] = 300.0 * spike  # one token ~90,000x the usual Fisher trace, along one axis

    def normed(g, q):
        L = mean_fisher_factor(g, energy=1.0, normalize=True, clip_quantile=q).double()
        return L @ L.T

    clean = normed(torch.cat([grads[:7], grads[8:]]), None)
    assert normed(grads, None)[3, 3] > 0.9 * 16  # unclipped: one token owns almost all of the trace
    clipped = normed(grads, 0.95)
    assert (clipped - clean).norm() / clean.norm() < 0.1  # clipped: as if the token were typical


# --- end-to-end KL ---------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "softcap"), [("gemma3", None), ("gemma3", 3.0), ("gpt2", None)])
def test_end_to_end_kl_matches_naive_full_logits(arch, softcap, tiny_tokens, monkeypatch):
    import csae_bench.interventions.kl as kl_module

    monkeypatch.setattr(kl_module, "rows_per_chunk", lambda d_vocab: 7)  # force several row chunks
    model, tokens = _tiny(arch, softcap), tiny_tokens[:3]
    sae = NearIdentitySAE(64, scale=0.3)
    kl = end_to_end_kl(model, HOOK, tokens, sae)
    with torch.no_grad():
        naive = _kl(model(tokens), _naive_spliced_logits(model, HOOK, tokens, sae)).mean()
    torch.testing.assert_close(kl.detach(), naive, rtol=1e-4, atol=1e-7)
    assert kl > 1e-4
    assert spliced_kl(model, HOOK, tokens, sae) == pytest.approx(float(naive), rel=1e-4)
    kl.backward()
    assert sae.W.grad.abs().sum() > 0 and sae.b.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters()), "model weights must get no gradient"
    assert all(p.requires_grad for p in model.parameters()), "requires_grad flags are restored"
    # the gradient is the true one: compare with autograd through the naive computation
    sae_naive = NearIdentitySAE(64, scale=0.3)
    naive_kl = _kl(model(tokens).detach(), _naive_spliced_logits(model, HOOK, tokens, sae_naive)).mean()
    naive_kl.backward()
    torch.testing.assert_close(sae.W.grad, sae_naive.W.grad, rtol=1e-3, atol=1e-7)


def test_end_to_end_kl_is_zero_for_identity(tiny_model, tiny_tokens):
    assert spliced_kl(tiny_model, HOOK, tiny_tokens[:2], lambda h: h) == pytest.approx(0.0, abs=1e-7)


# --- Fisher NCES -----------------------------------------------------------------------------


def test_fisher_nces_separates_sensitive_from_random_directions(tiny_pool):
    grads = tiny_pool.grads_NSD
    N, S, D = grads.shape
    # top Fisher eigendirections; in this random tiny model λ₁/mean λ ≈ 3, so NCES ≈ (3-1)/(3+1)
    sensitive = torch.linalg.svd(grads.reshape(N * S, D), full_matrices=False).Vh[:4]
    gen = torch.Generator().manual_seed(0)
    random_dirs = torch.randn(300, D, generator=gen)
    random_dirs /= random_dirs.norm(dim=-1, keepdim=True)
    W_dec = torch.cat([sensitive, random_dirs, torch.randn(1, D)])
    F = len(W_dec)
    acts = torch.relu(torch.randn(N, F, generator=gen)) * 3.0
    acts[:, -1] = 0.0  # never active
    nces, n_active = fisher_nces(acts, W_dec, grads, torch.Generator().manual_seed(1))
    random_nces = nces[4:-1]
    assert float(nces[0]) > 0.4 and (nces[:4] > 0.25).all(), nces[:4]
    assert abs(float(random_nces.mean())) < 0.05, float(random_nces.mean())
    assert float(nces[:4].min()) > float(random_nces.quantile(0.95))
    assert torch.isnan(nces[-1]) and n_active[-1] == 0
    assert torch.equal(n_active[:-1], (acts[:, :-1] > 0).sum(0))
    # the exact expected control agrees with the sampled one on average, without its noise
    nces_exp, _ = fisher_nces(acts, W_dec, grads, torch.Generator(), control="expected")
    assert float(nces_exp[:4].min()) > float(nces_exp[4:-1].max())
    assert abs(float(nces_exp[4:-1].mean())) < 0.05
    assert float(nces_exp[4:-1].std()) < float(random_nces.std())
    assert torch.isnan(nces_exp[-1])
    # invariant to how activation and decoder norm are split
    nces_scaled, _ = fisher_nces(acts / 4.0, W_dec * 4.0, grads, torch.Generator().manual_seed(1))
    torch.testing.assert_close(nces_scaled, nces, equal_nan=True, rtol=1e-4, atol=1e-5)


# --- sensitive directions --------------------------------------------------------------------


def test_sensitive_directions_capture_more_fisher_error_than_random(tiny_pool):
    acts, grads = tiny_pool.acts_ND, tiny_pool.grads_NSD
    gen = torch.Generator().manual_seed(0)
    recon = acts + 0.3 * torch.randn(acts.shape, generator=gen) * acts.norm(dim=-1, keepdim=True) / 8
    dirs = sensitive_directions(acts, recon, grads, n=70)  # more than D=64: filled from top tokens
    assert dirs.shape == (70, 64)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(70))
    err = acts - recon

    def fisher_left(d):  # Fisher error after removing the best multiple of d from each error
        coef = (err @ d).clamp(min=0)  # a feature activation is non-negative
        return float(fisher_faithfulness(acts, recon + coef[:, None] * d, grads))

    random_dirs = torch.randn(20, 64, generator=gen)
    random_dirs /= random_dirs.norm(dim=-1, keepdim=True)
    assert fisher_left(dirs[0]) < min(fisher_left(r) for r in random_dirs)


# --- bad input -------------------------------------------------------------------------------


def test_non_finite_inputs_raise_clear_errors(tiny_pool):
    acts, grads = tiny_pool.sample(8, torch.Generator().manual_seed(0))
    bad = grads.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(GradientError, match="grads"):
        fisher_faithfulness(acts, acts * 0.5, bad)
    with pytest.raises(GradientError, match="acts"):
        GradientPool(acts * float("inf"), grads)
    with pytest.raises(GradientError, match="align"):
        GradientPool(acts, grads[:4])
    with pytest.raises(GradientError, match="grads"):
        fisher_nces(torch.ones(8, 3), torch.randn(3, 64), bad, torch.Generator())
    with pytest.raises(GradientError, match="same GradientPool"):
        fisher_faithfulness(acts, acts, grads[:4])


def test_bad_hooks_raise(tiny_model, tiny_tokens):
    with pytest.raises(GradientError, match="out of range"):
        harvest_gradient_pool(tiny_model, "blocks.9.hook_resid_post", tiny_tokens, show_progress=False)
    with pytest.raises(GradientError, match="out of range"):
        end_to_end_kl(tiny_model, "blocks.4.hook_resid_post", tiny_tokens, lambda h: h)
    with pytest.raises(GradientError, match="residual-stream hook"):
        harvest_gradient_pool(tiny_model, "blocks.1.hook_mlp_out", tiny_tokens, show_progress=False)
    with pytest.raises(GradientError, match="sae_forward"):
        end_to_end_kl(tiny_model, HOOK, tiny_tokens, lambda h: h[:, :3])


def test_last_layer_and_resid_pre_hooks(tiny_model, tiny_tokens):
    last = harvest_gradient_pool(tiny_model, "blocks.3.hook_resid_post", tiny_tokens[:2], n_samples=2,
                                 show_progress=False)
    pre = harvest_gradient_pool(tiny_model, "blocks.2.hook_resid_pre", tiny_tokens[:2], n_samples=2,
                                show_progress=False)
    post = harvest_gradient_pool(tiny_model, HOOK, tiny_tokens[:2], n_samples=2, show_progress=False)
    assert last.grads_NSD.abs().sum() > 0
    torch.testing.assert_close(pre.acts_ND, post.acts_ND)  # resid_pre of block 2 == resid_post of 1
    torch.testing.assert_close(pre.grads_NSD, post.grads_NSD)


# --- the embedded model ----------------------------------------------------------------------


def test_embedded_model_gradients_and_kl(embedded_model):
    """Gemma-3-270M (262k vocab, BOS dropped): pool gradients and the end-to-end KL agree with
    naive full-logit autograd on a few short contexts."""
    model, hook = embedded_model, "blocks.6.hook_resid_post"
    tokens = torch.tensor([[2, 651, 6037, 236787, 529, 506, 9479, 563], [2, 1018, 1110, 4401, 236764, 506, 3826, 691]])
    S = 2
    pool = harvest_gradient_pool(model, hook, tokens, n_samples=S, batch_contexts=2, seed=3, show_progress=False)
    assert pool.n_tokens == 14  # BOS dropped
    start = suffix_start(model, hook)
    with torch.no_grad():
        x = final_residual(model, model(tokens, stop_at_layer=start), start)
        _, y_NS = sampled_logprob_grads(model, x.reshape(16, -1), S, torch.Generator().manual_seed(3))
    naive = _naive_logprob_grads(model, hook, tokens, y_NS.reshape(2, 8, S))[:, 1:]
    torch.testing.assert_close(pool.grads_NSD, naive.reshape(14, S, -1), rtol=1e-3, atol=1e-4)

    sae = NearIdentitySAE(model.cfg.d_model, scale=0.05)
    kl = end_to_end_kl(model, hook, tokens, sae)
    with torch.no_grad():
        def splice(act):
            out = act.clone()
            out[:, 1:] = sae(act[:, 1:])
            return out
        naive_kl = _kl(model(tokens), _naive_spliced_logits(model, hook, tokens, splice))[:, 1:].mean()
    torch.testing.assert_close(kl.detach(), naive_kl, rtol=1e-3, atol=1e-6)
    kl.backward()
    assert sae.W.grad.abs().sum() > 0

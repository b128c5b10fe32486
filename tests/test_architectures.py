"""Architectures: registry, forward shapes, decoder norms, SAELens and SAEBench round trips, CSAE
causal parts, the random-decoder control, and bad input."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainStepInput

import csae_bench.architectures as archs
from csae_bench.architectures import (
    ARCHITECTURES,
    TOPK_FAMILY,
    TRAINED_ARCHITECTURES,
    UnknownArchitectureError,
    build_training_sae,
    check_architecture,
)
from csae_bench.architectures.export import ExportError, load_base_sae, to_base_sae

D_IN, D_SAE, K = 64, 256, 8
HOOK = "blocks.2.hook_resid_post"


# Tiny ops on a shared 2-core machine run far faster on one thread (fixture in conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


def make_sae(arch: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    if arch in TOPK_FAMILY:
        options.setdefault("k", K)
    sae = build_training_sae(arch, D_IN, D_SAE, **options)
    sae.cfg.metadata.model_name = "tiny-model"
    sae.cfg.metadata.hook_name = HOOK
    return sae


def perturb(sae) -> None:
    """Move a fresh SAE away from its symmetric init, as training would (trainable params only)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        if hasattr(sae, "threshold"):
            sae.threshold.data.clamp_(min=0.0)


def step_input(x, arch, dead=None):
    coeffs = {"relu": {"l1": 1.0}, "jumprelu": {"l0": 1.0}}.get(arch, {})
    return TrainStepInput(sae_in=x, coefficients=coeffs, dead_neuron_mask=dead, n_training_steps=0,
                          is_logging_step=False)


def test_architecture_names_and_registry():
    assert ARCHITECTURES == ("relu", "topk", "jumprelu", "csae", "random-decoder",
                             "permuted-decoder", "init", "pca")
    for name in ("csae", "random-decoder"):
        assert name in SAE_CLASS_REGISTRY and name in SAE_TRAINING_CLASS_REGISTRY
    archs.register_with_saelens()  # registering again (a re-import) must not raise SAELens's duplicate-name error
    assert SAE_TRAINING_CLASS_REGISTRY["csae"][0].__name__ == "CSAETrainingSAE"


def test_registry_is_one_table_light_to_import_and_refuses_duplicates():
    """Names, SAELens names, the TopK family and the options classes all come from REGISTRY, and
    reading it imports neither torch nor SAELens (the CLI lists architectures from it)."""
    import subprocess
    import sys

    assert archs.ARCHITECTURES == tuple(archs.REGISTRY)
    assert archs.TOPK_FAMILY == {n for n, s in archs.REGISTRY.items() if s.sparsity == "k"}
    assert archs.options_class("csae").__name__ == "CSAEOptions"
    with pytest.raises(ValueError, match="already registered"):
        archs.register_architecture(archs.REGISTRY["topk"])
    code = ("import sys, csae_bench.architectures as a, csae_bench.suite as s; "
            "print(s.DEFAULT_ARCHITECTURES == a.DEFAULT_ARCHITECTURES, 'torch' in sys.modules, 'sae_lens' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False", "False"]


def test_unknown_architecture_lists_valid_ones():
    with pytest.raises(UnknownArchitectureError, match="relu, topk, jumprelu, csae, random-decoder, permuted-decoder, init, pca"):
        check_architecture("gated-causal")
    with pytest.raises(UnknownArchitectureError, match="did you mean 'relu'"):
        build_training_sae("standard", D_IN, D_SAE)


@pytest.mark.parametrize("arch", TRAINED_ARCHITECTURES)  # the nulls: tests/test_nulls.py
def test_forward_shapes_and_losses(arch):
    sae = make_sae(arch)
    x = torch.randn(10, D_IN)
    feats = sae.encode(x)
    assert feats.shape == (10, D_SAE)
    assert sae(x).shape == (10, D_IN)
    assert sae.encode(torch.randn(2, 5, D_IN)).shape == (2, 5, D_SAE)
    if arch in TOPK_FAMILY:
        assert ((feats > 0).sum(-1) <= K).all()
    out = sae.training_forward_pass(step_input(x, arch))
    assert torch.isfinite(out.loss) and "mse_loss" in out.losses
    out.loss.backward()
    assert sae.W_enc.grad is not None and torch.isfinite(sae.W_enc.grad).all()


@pytest.mark.parametrize("arch", TRAINED_ARCHITECTURES)  # the nulls: tests/test_nulls.py
def test_saelens_and_saebench_round_trip(arch, tmp_path):
    sae = make_sae(arch)
    perturb(sae)
    x = torch.randn(32, D_IN)
    with torch.no_grad():
        y_train = sae(x)
    sae.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert loaded.cfg.architecture() == archs.saelens_name(arch)
    assert loaded.cfg.metadata.hook_name == HOOK
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y_train, atol=1e-5, rtol=1e-5)
    base = load_base_sae(tmp_path)
    assert base.check_decoder_norms()
    assert base.cfg.architecture == arch
    assert (base.cfg.model_name, base.cfg.hook_name, base.cfg.hook_layer) == ("tiny-model", HOOK, 2)
    assert base.W_dec.shape == (D_SAE, D_IN) and base.W_enc.shape == (D_IN, D_SAE)
    with torch.no_grad():
        torch.testing.assert_close(base(x), y_train, atol=1e-5, rtol=1e-5)
        # encode/decode agree with forward, and L0 is preserved by the export
        torch.testing.assert_close(base.decode(base.encode(x)), base(x))
        assert torch.equal((base.encode(x) > 0).sum(-1), (loaded.encode(x) > 0).sum(-1))


def test_export_refuses_unexported_normalization():
    sae = make_sae("relu", normalize_activations="layer_norm")
    with pytest.raises(ExportError, match="normalize_activations"):
        to_base_sae(sae)


def test_export_needs_model_and_hook():
    sae = build_training_sae("topk", D_IN, D_SAE, k=K)
    with pytest.raises(ExportError, match="model_name/hook_name"):
        to_base_sae(sae)
    base = to_base_sae(sae, model_name="m", hook_name="blocks.0.hook_resid_post")
    assert base.cfg.hook_layer == 0


@pytest.mark.parametrize(
    ("arch", "d_sae", "options", "match"),
    [
        ("topk", 0, {"k": 1}, "d_sae must be a positive int"),
        ("relu", -3, {}, "d_sae must be a positive int"),
        ("topk", 16, {"k": 0}, "k=0 must be an int in 1..d_sae=16"),
        ("csae", 16, {"k": 17}, "k=17 must be an int"),
        ("random-decoder", 16, {"k": 2.5}, "k=2.5 must be an int"),
        ("relu", 16, {"k": 4}, "not fields of the relu training config"),
    ],
)
def test_bad_sizes_raise_clearly(arch, d_sae, options, match):
    with pytest.raises(ValueError, match=match):
        build_training_sae(arch, D_IN, d_sae, **options)


def test_random_decoder_is_frozen_unit_norm():
    sae = make_sae("random-decoder")
    W_dec0 = sae.W_dec.detach().clone()
    torch.testing.assert_close(W_dec0.norm(dim=-1), torch.ones(D_SAE))
    assert not sae.W_dec.requires_grad
    opt = torch.optim.Adam([p for p in sae.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(64, D_IN)
    for _ in range(3):
        loss = sae.training_forward_pass(step_input(x, "random-decoder")).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(sae.W_dec, W_dec0)
    # seeded: the same decoder_seed gives the same decoder, another seed a different one
    assert torch.equal(make_sae("random-decoder", seed=5).W_dec, W_dec0)
    assert not torch.equal(make_sae("random-decoder", decoder_seed=1).W_dec, W_dec0)


def stand_in_pool(n: int = 128, s: int = 2, seed: int = 0):
    from csae_bench.activations.gradient_pool import GradientPool

    gen = torch.Generator().manual_seed(seed)
    return GradientPool(acts_ND=torch.randn(n, D_IN, generator=gen),
                        grads_NSD=0.3 * torch.randn(n, s, D_IN, generator=gen))


@pytest.mark.parametrize("fisher", ["mean", "per-token"])
def test_csae_adds_causal_term_only_when_switched_on(fisher):
    x = torch.randn(16, D_IN)
    sae = make_sae("csae", causal_coeff=2.0, causal_batch_size=32, fisher=fisher)
    perturb(sae)
    sae.attach_causal(stand_in_pool(), torch.Generator().manual_seed(0), activation_scale=1.5)
    out = sae.training_forward_pass(step_input(x, "csae"))
    assert out.losses["causal_loss"] > 0
    torch.testing.assert_close(out.loss, sum(out.losses.values()))
    sae.zero_grad()
    out.losses["causal_loss"].backward()
    assert sae.W_dec.grad.abs().sum() > 0  # the causal term trains the SAE
    off = make_sae("csae", causal_coeff=0.0)
    off.attach_causal(stand_in_pool(), torch.Generator().manual_seed(0))
    assert "causal_loss" not in off.training_forward_pass(step_input(x, "csae")).losses


def test_csae_mean_fisher_term_is_the_batch_error_under_the_pool_metric():
    """fisher="mean": causal_loss = coeff · ½ mean_b δ_bᵀ F̂ δ_b on the training batch itself, δ in
    the SAE's units (like its MSE) and F̂ the pool's mean g gᵀ scaled to mean eigenvalue 1 — so the
    activation scale does not enter."""
    pool, scale = stand_in_pool(), 1.5
    sae = make_sae("csae", causal_coeff=2.0, fisher="mean", fisher_energy=1.0, fisher_clip_quantile=1.0)
    perturb(sae)
    sae.attach_causal(pool, torch.Generator().manual_seed(0), activation_scale=scale)
    x = torch.randn(16, D_IN)
    out = sae.training_forward_pass(step_input(x, "csae"))
    g_MD = pool.grads_NSD.reshape(-1, D_IN).double()
    fisher_DD = g_MD.T @ g_MD / len(g_MD)
    fisher_DD = fisher_DD * D_IN / fisher_DD.trace()
    err_BD = (x - out.sae_out.detach()).double()
    expected = 2.0 * 0.5 * torch.einsum("bd,de,be->b", err_BD, fisher_DD, err_BD).mean()
    torch.testing.assert_close(out.losses["causal_loss"].double(), expected, rtol=1e-4, atol=0)


def test_csae_rejects_unknown_fisher_mode():
    with pytest.raises(ValueError, match="fisher='diagonal' must be one of mean, per-token"):
        make_sae("csae", fisher="diagonal")


def test_csae_without_pool_trains_as_topk_and_warns(caplog):
    sae = make_sae("csae")
    out = sae.training_forward_pass(step_input(torch.randn(8, D_IN), "csae"))
    assert "causal_loss" not in out.losses
    assert "no gradient pool" in caplog.text


def test_csae_verification_reinitializes_failing_features():
    sae = make_sae("csae", verify_every=1, tau=0.99, patience=2, verify_tokens=128, min_active=1,
                   max_reinit_frac=0.05)
    perturb(sae)
    sae.attach_causal(stand_in_pool(), torch.Generator().manual_seed(0))
    W_dec0 = sae.W_dec.detach().clone()
    first = sae.verify_and_reinit()
    assert first["judged"] > 0 and first["reinitialized"] == 0  # patience 2: one failure is not enough
    second = sae.verify_and_reinit()
    assert 0 < second["reinitialized"] <= int(0.05 * D_SAE)  # capped per check
    changed = (sae.W_dec != W_dec0).any(-1)
    assert set(torch.nonzero(changed).flatten().tolist()) == set(sae.last_reinit_F.tolist())
    assert (sae.failed_checks_F[sae.last_reinit_F] == 0).all()
    assert torch.isfinite(sae.W_dec).all() and torch.isfinite(sae.W_enc).all()


@pytest.mark.parametrize(
    ("options", "match"),
    [({"tau": 1.5}, "tau=1.5"), ({"patience": 0}, "patience=0"), ({"causal_coeff": -1.0}, "causal_coeff=-1.0"),
     ({"verify_every": -2}, "verify_every=-2"), ({"max_reinit_frac": 2.0}, "max_reinit_frac=2.0")],
)
def test_csae_config_validation(options, match):
    with pytest.raises(ValueError, match=match):
        make_sae("csae", **options)


def test_csae_e2e_needs_model():
    sae = make_sae("csae", e2e_coeff=0.1)
    with pytest.raises(ValueError, match="e2e_coeff > 0 needs"):
        sae.attach_causal(stand_in_pool(), torch.Generator())

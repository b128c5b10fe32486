"""The null architectures (permuted-decoder, init, pca): derived by the trainer next to a trained
TopK, saved as ordinary SAELens TopK folders that load through SAELens and SAEBench, each what it
claims to be; the registry flags; and a run that asks for them plans and validates."""

from __future__ import annotations

import json
from itertools import islice

import pytest
import torch
from helpers import random_tokens
from sae_lens import SAE
from safetensors.torch import load_file

import csae_bench.architectures as archs
from csae_bench.activations.harvest import harvest_activations
from csae_bench.activations.source import ActivationSource
from csae_bench.architectures import MissingBaseArchitectureError, build_training_sae
from csae_bench.architectures.export import load_base_sae
from csae_bench.architectures.nulls import pca_sae, principal_directions
from csae_bench.training import SUMMARY_NAME, TrainConfig, train_alongside

HOOK = "blocks.1.hook_resid_post"
D_SAE, K, BATCH, STEPS = 128, 8, 64, 6
NULLS = ("permuted-decoder", "init", "pca")
ARCHS = ("topk", *NULLS)

pytestmark = pytest.mark.usefixtures("one_thread")


def config(**overrides) -> TrainConfig:
    base = dict(architectures=ARCHS, d_sae=D_SAE, train_tokens=BATCH * STEPS, batch_size=BATCH,
                target_l0=K, hook_name=HOOK, model_name="tiny-gemma3", lr=3e-3, heldout_tokens=128,
                norm_batches=2, show_progress=False, pca_batches=3)
    base.update(overrides)
    return TrainConfig.from_flat(**base)


@pytest.fixture(scope="module")
def source(tiny_model):
    return ActivationSource(tiny_model, HOOK, random_tokens(16, 32, seed=1), seed=0)


@pytest.fixture(scope="module")
def heldout(tiny_model):
    return harvest_activations(tiny_model, HOOK, random_tokens(4, 32, seed=2), show_progress=False)


@pytest.fixture(scope="module")
def trained(tiny_model, source, heldout, tmp_path_factory):
    out = tmp_path_factory.mktemp("nulls")
    return train_alongside(tiny_model, source, config(), out, heldout_acts=heldout)


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "sae_weights.safetensors"))


def summary(folder) -> dict:
    return json.loads((folder / SUMMARY_NAME).read_text())


@pytest.mark.parametrize("arch", NULLS)
def test_null_saves_loads_and_encodes_at_matched_l0(trained, heldout, arch):
    folder = trained[arch]
    s = summary(folder)
    assert s["architecture"] == arch and s["null"]["kind"] == arch and s["steps"] == 0
    assert s["metrics_on"] == "given" and 0 < s["l0"] <= K
    assert -10 < s["explained_variance_mean_centred"] < 1
    sae = SAE.load_from_disk(folder)  # an ordinary SAELens TopK folder: nothing to register
    assert sae.cfg.architecture() == "topk"
    assert sae.cfg.metadata.csae_bench_architecture == arch
    base = load_base_sae(folder)
    assert base.cfg.architecture == arch and base.check_decoder_norms()
    with torch.no_grad():
        feats = base.encode(heldout)
        assert ((feats > 0).sum(-1) <= K).all()
        torch.testing.assert_close(base(heldout), sae(heldout), atol=1e-4, rtol=1e-4)


def test_permuted_decoder_is_topk_with_its_decoder_rows_permuted(trained):
    topk, perm_w = weights(trained["topk"]), weights(trained["permuted-decoder"])
    seed = summary(trained["permuted-decoder"])["null"]["permutation_seed"]
    assert seed == 0 * 1000 + ARCHS.index("permuted-decoder")
    perm = torch.randperm(D_SAE, generator=torch.Generator().manual_seed(seed))
    assert not torch.equal(perm, torch.arange(D_SAE))
    # float32 weights folded in another order: equal to ~1e-7 relative
    torch.testing.assert_close(perm_w["W_dec"], topk["W_dec"][perm], rtol=1e-5, atol=1e-6)
    for name in ("W_enc", "b_enc", "b_dec"):
        torch.testing.assert_close(perm_w[name], topk[name], rtol=1e-5, atol=1e-6)
    assert (perm_w["W_dec"] - topk["W_dec"]).abs().max() > 0.1  # the rows did move


def test_init_is_the_topk_construction_never_stepped(trained, source):
    """The saved init equals the run's topk construction (same seed) with b_dec = the first batch's
    mean, folded and saved the same way; and it is not the trained topk."""
    s = summary(trained["init"])
    scale = s["activation_scale"]
    cfg = config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed * 1000 + ARCHS.index("topk"))
        fresh = build_training_sae("topk", source.d_in, D_SAE, **cfg.sae_options("topk"))
    first = next(islice(source.batches(BATCH, STEPS * BATCH), 1))
    fresh.b_dec.data = (first * scale).mean(0)
    fresh.fold_activation_norm_scaling_factor(scale)
    expected = fresh.state_dict()
    fresh.process_state_dict_for_saving_inference(expected)
    saved = weights(trained["init"])
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(saved[name], expected[name], rtol=1e-5, atol=1e-6)
    assert (saved["W_enc"] - weights(trained["topk"])["W_enc"]).abs().max() > 1e-3


def test_pca_decoder_is_signed_orthonormal_principal_directions(trained):
    s = summary(trained["pca"])
    n = s["null"]["n_components"]
    assert n == min(64, D_SAE // 2) and s["d_sae"] == 2 * n and s["null"]["k"] == K
    assert s["null"]["sample_tokens"] == 3 * BATCH
    w = weights(trained["pca"])
    W = w["W_dec"].double()
    torch.testing.assert_close(W[:n] @ W[:n].T, torch.eye(n, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(W[n:], -W[:n])
    torch.testing.assert_close(w["W_enc"], w["W_dec"].T, rtol=1e-5, atol=1e-6)  # the projection


def test_pca_encodes_the_top_k_coefficients_by_magnitude_with_their_sign():
    """A sample whose principal directions are the axes (±4e0, ±3e1, ±2e2, ±1e3 around a mean):
    x = mean + 5e0 − 3e1 + 1e2 with k = 2 fires +e0 (5) and −e1 (3), and decodes to
    mean + 5e0 − 3e1."""
    mean = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    rows = [mean + sign * a * torch.eye(4, dtype=torch.float64)[i]
            for i, a in enumerate([4.0, 3.0, 2.0, 1.0]) for sign in (1, -1)]
    X = torch.stack(rows)
    comps, variances, m = principal_directions(X, 4)
    torch.testing.assert_close(comps, torch.eye(4, dtype=torch.float64))
    assert variances.tolist() == sorted(variances.tolist(), reverse=True)
    torch.testing.assert_close(m, mean)
    sae = pca_sae(X, 4, k=2)
    x = (mean + torch.tensor([5.0, -3.0, 1.0, 0.0], dtype=torch.float64)).float()[None]
    with torch.no_grad():
        f = sae.encode(x)[0]
        expected = torch.zeros(8)
        expected[0], expected[4 + 1] = 5.0, 3.0
        torch.testing.assert_close(f, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(sae.decode(f[None])[0].double(),
                                   mean + torch.tensor([5.0, -3.0, 0.0, 0.0], dtype=torch.float64),
                                   atol=1e-5, rtol=0)


def test_nulls_added_later_are_derived_from_the_saved_topk(trained, tiny_model, source, heldout, tmp_path):
    """A folder with a finished topk only: a second call derives the nulls from its saved folder."""
    import shutil

    shutil.copytree(trained["topk"], tmp_path / "topk")
    out = train_alongside(tiny_model, source, config(), tmp_path, heldout_acts=heldout)
    assert set(out) == set(ARCHS)
    again, before = weights(out["permuted-decoder"]), weights(trained["permuted-decoder"])
    for name in again:
        torch.testing.assert_close(again[name], before[name], rtol=1e-5, atol=1e-6)


def test_registry_flags():
    assert archs.CONTROL_ARCHITECTURES == {"random-decoder", *NULLS}
    assert all(archs.is_control(a) for a in NULLS) and not archs.is_control("topk")
    assert not archs.is_control("not-an-architecture")
    assert set(archs.TRAINED_ARCHITECTURES) == set(archs.ARCHITECTURES) - set(NULLS)
    assert archs.DEFAULT_ARCHITECTURES == (
        "relu", "topk", "jumprelu", "csae", "random-decoder", "permuted-decoder", "pca")
    assert archs.REGISTRY["permuted-decoder"].derived_from == "topk"
    assert archs.FROM_SAELENS["topk"] == "topk"  # the nulls saved as topk never take its name
    assert archs.architecture_of("topk", {"csae_bench_architecture": "pca"}) == "pca"
    assert archs.architecture_of("topk", {"csae_bench_architecture": "relu"}) == "topk"
    with pytest.raises(ValueError, match="null the trainer derives"):
        build_training_sae("pca", 8, 16, k=2)


def test_permuted_decoder_without_topk_is_refused_at_config_time(tmp_path):
    from helpers import tiny_run_config

    from csae_bench.suite import SuiteError
    from csae_bench.suite_checks import validate_names

    with pytest.raises(MissingBaseArchitectureError, match="add topk to the architectures"):
        config(architectures=("init", "permuted-decoder"))
    with pytest.raises(SuiteError, match="add topk"):
        validate_names(tiny_run_config(tmp_path, architectures=["pca", "permuted-decoder"]))


def test_a_run_of_topk_and_the_nulls_plans(tmp_path):
    """``--architectures topk,permuted-decoder,init,pca``: validated, one train job for all four,
    one eval job per SAE."""
    from helpers import tiny_run_config

    from csae_bench.pipeline import plan
    from csae_bench.pipeline.jobs import EvalJob, TrainJob
    from csae_bench.pipeline.plan import check_train_settings
    from csae_bench.suite_checks import validate_names

    cfg = tiny_run_config(tmp_path, architectures="topk,permuted-decoder,init,pca")
    hook = "blocks.2.hook_resid_post"
    validate_names(cfg)
    check_train_settings(cfg, hook)
    jobs = plan(cfg, hook)
    (train,) = [j for j in jobs if isinstance(j, TrainJob)]
    assert list(train.architectures) == list(ARCHS)
    assert sorted(j.sae_folder.name for j in jobs if isinstance(j, EvalJob)) == sorted(ARCHS)

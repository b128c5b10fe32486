"""Training snapshots (issue 14's "training checkpoints"): every SAE saved in SAELens format at a
few log-spaced token counts, written once each, the same after a resume as in a straight run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import random_tokens
from sae_lens import SAE

from csae_bench.activations.gradient_pool import GradientPool
from csae_bench.activations.source import ActivationSource
from csae_bench.architectures import (
    TRAINED_ARCHITECTURES as ARCHITECTURES,  # nulls are derived, not stepped
)
from csae_bench.architectures.export import load_base_sae
from csae_bench.training import CHECKPOINT_NAME, TrainConfig, train_alongside
from csae_bench.training.checkpoint import read_checkpoint
from csae_bench.training.finalize import export_sae, recover_kept
from csae_bench.training.snapshots import (
    SNAPSHOT_SUMMARY_NAME,
    list_snapshots,
    snapshot_folder,
    snapshot_steps,
)
from csae_bench.training.state import SAERunState

HOOK = "blocks.1.hook_resid_post"
BATCH, STEPS, N_SNAP = 32, 12, 4
STEPS_TAKEN = [1, 2, 5, 12]  # geomspace(1, 12, 4) = 1, 2.29, 5.24, 12, rounded
TOKENS = [BATCH * s for s in STEPS_TAKEN]

pytestmark = pytest.mark.usefixtures("one_thread")  # bit-for-bit comparisons within this process


@pytest.fixture(scope="module")
def source(tiny_model):
    return ActivationSource(tiny_model, HOOK, random_tokens(16, 32, seed=1), seed=0)


@pytest.fixture(scope="module")
def heldout(source):
    return source.all_activations()[:64]


@pytest.fixture(scope="module")
def pool(source):
    acts = source.all_activations()[:64]
    gen = torch.Generator().manual_seed(3)
    return GradientPool(acts_ND=acts, grads_NSD=0.05 * torch.randn(len(acts), 2, acts.shape[1], generator=gen))


def config(**overrides) -> TrainConfig:
    base = dict(architectures=ARCHITECTURES, d_sae=64, train_tokens=BATCH * STEPS, batch_size=BATCH, target_l0=4, hook_name=HOOK,
                model_name="tiny-gemma3", checkpoint_every=4, lr=3e-3, dead_window=4, resample_every=4,
                verify_every=4, causal_batch_size=16, heldout_tokens=64, log_every=2, show_progress=False,
                norm_batches=2, n_snapshots=N_SNAP)
    base.update(overrides)
    return TrainConfig.from_flat(**base)


def weights(folder) -> dict[str, torch.Tensor]:
    return SAE.load_from_disk(folder).state_dict()


def assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for name in a:
        assert torch.equal(a[name], b[name]), f"{what}: {name} differs"


@pytest.fixture(scope="module")
def straight(tiny_model, source, pool, heldout, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return train_alongside(tiny_model, source, config(), out, gradient_pool=pool, heldout_acts=heldout)


@pytest.mark.parametrize(
    ("n_steps", "n", "want"),
    [(12, 4, STEPS_TAKEN), (244, 5, [2, 8, 24, 77, 244]), (5, 1, [5]), (7, 0, []), (3, 3, [1, 2, 3]),
     (10, 10, list(range(1, 11))), (10, 6, [1, 2, 3, 4, 6, 10])],
)
def test_snapshot_steps_are_log_spaced_distinct_and_end_at_the_last_step(n_steps, n, want):
    assert snapshot_steps(n_steps, n) == want


def test_snapshot_steps_always_give_exactly_n_distinct_steps():
    for n_steps in range(1, 80):
        for n in range(n_steps + 1):
            steps = snapshot_steps(n_steps, n)
            assert len(steps) == n and all(1 <= a < b for a, b in zip(steps, steps[1:], strict=False))
            assert not steps or (steps[0] >= 1 and steps[-1] == n_steps)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_sae_has_its_snapshots_in_saelens_format(straight, heldout, arch):
    found = list_snapshots(straight[arch])
    assert list(found) == TOKENS
    assert [f.name for f in found.values()] == [f"tokens_{t:012d}" for t in TOKENS]  # sortable names
    for (tokens, folder), step in zip(found.items(), STEPS_TAKEN, strict=True):
        s = json.loads((folder / SNAPSHOT_SUMMARY_NAME).read_text())
        assert (s["architecture"], s["step"], s["training_tokens"]) == (arch, step, tokens)
        assert s["l0"] > 0 and s["loss"] > 0 and s["snapshot_steps"] == STEPS_TAKEN
        sae = SAE.load_from_disk(folder)
        assert sae.cfg.metadata.training_tokens == tokens and sae.cfg.metadata.hook_name == HOOK
        base = load_base_sae(folder)
        assert base.cfg.architecture == arch
        with torch.no_grad():
            torch.testing.assert_close(base(heldout), sae(heldout), atol=1e-4, rtol=1e-4)
    # the last snapshot is the final SAE, which kept its snapshots when it was written
    assert_same(weights(found[TOKENS[-1]]), weights(straight[arch]), f"{arch} final snapshot")


def test_resumed_run_writes_the_same_snapshots_once(tiny_model, source, pool, heldout, straight, tmp_path):
    """Stop after step 2 (a snapshot step), keep that checkpoint, run on to step 6, then resume
    from the step-2 checkpoint: steps 3-6 run twice, yet the step-5 snapshot is left alone, and
    every snapshot equals the straight run's bit for bit."""
    cfg = config()
    assert train_alongside(tiny_model, source, cfg, tmp_path, gradient_pool=pool, stop_after_steps=2) == {}
    ckpt2 = tmp_path / "step2.safetensors"
    shutil.copy(tmp_path / CHECKPOINT_NAME, ckpt2)
    state = read_checkpoint(ckpt2)
    d_in = source.d_in
    for i, arch in enumerate(cfg.architectures):  # the step-2 snapshot is the SAE at step 2
        assert list(list_snapshots(tmp_path / arch)) == TOKENS[:2]
        run = SAERunState(arch, d_in, cfg, i)
        run.load_state_dict(state["archs"][arch])
        export_sae(run, cfg, state["activation_scale"], source, TOKENS[1]).save_inference_model(tmp_path / "ref")
        assert_same(weights(tmp_path / "ref"), weights(list_snapshots(tmp_path / arch)[TOKENS[1]]), arch)
    assert train_alongside(tiny_model, source, cfg, tmp_path, gradient_pool=pool, stop_after_steps=6) == {}
    step5 = {a: (list_snapshots(tmp_path / a)[TOKENS[2]] / "sae_weights.safetensors").stat().st_mtime_ns
             for a in cfg.architectures}
    shutil.copy(ckpt2, tmp_path / CHECKPOINT_NAME)
    resumed = train_alongside(tiny_model, source, cfg, tmp_path, gradient_pool=pool, heldout_acts=heldout)
    for arch in cfg.architectures:
        got, want = list_snapshots(resumed[arch]), list_snapshots(straight[arch])
        assert list(got) == TOKENS
        assert (got[TOKENS[2]] / "sae_weights.safetensors").stat().st_mtime_ns == step5[arch]
        for tokens in TOKENS:
            assert_same(weights(got[tokens]), weights(want[tokens]), f"{arch} at {tokens} tokens")
        assert_same(weights(resumed[arch]), weights(straight[arch]), f"{arch} final")
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("*/snapshots/.*"))


def test_no_snapshots_by_default(tiny_model, source, heldout, tmp_path):
    assert TrainConfig().n_snapshots == 0
    done = train_alongside(tiny_model, source, config(architectures=("topk",), train_tokens=BATCH * 3,
                                                      n_snapshots=0), tmp_path, heldout_acts=heldout)
    assert list_snapshots(done["topk"]) == {} and not (done["topk"] / "snapshots").exists()


def test_list_snapshots_ignores_incomplete_and_temporary_folders(tmp_path):
    for name in ["tokens_000000000064", "tokens_000000000032", ".tokens_000000000128.tmp", "tokens_x"]:
        (tmp_path / "snapshots" / name).mkdir(parents=True)
        (tmp_path / "snapshots" / name / SNAPSHOT_SUMMARY_NAME).write_text("{}")
    (tmp_path / "snapshots" / "tokens_000000000256").mkdir()  # no snapshot.json: unfinished
    assert list_snapshots(tmp_path) == {32: snapshot_folder(tmp_path, 32), 64: snapshot_folder(tmp_path, 64)}
    assert list_snapshots(tmp_path / "missing") == {}


def test_snapshots_left_in_a_crashed_final_write_are_recovered(tmp_path):
    """A crash between moving ``snapshots/`` into the new final folder and renaming it leaves them
    in ``.<arch>.tmp``; they come back (without replacing newer ones) before that is removed."""
    folder, tmp = tmp_path / "topk", tmp_path / ".topk.tmp"
    (tmp / "snapshots" / "tokens_000000000032").mkdir(parents=True)
    (tmp / "snapshots" / "tokens_000000000064").mkdir()
    (tmp / "snapshots" / "tokens_000000000064" / "old").write_text("")
    (folder / "snapshots" / "tokens_000000000064").mkdir(parents=True)
    recover_kept(folder, ("snapshots",))
    assert sorted(p.name for p in (folder / "snapshots").iterdir()) == ["tokens_000000000032",
                                                                       "tokens_000000000064"]
    assert not (folder / "snapshots" / "tokens_000000000064" / "old").exists()


@pytest.mark.parametrize(
    ("value", "match"),
    [(-1, r"n_snapshots=-1 must be in 0\.\.12"), (13, r"n_snapshots=13 must be in 0\.\.12"),
     ("5", "n_snapshots='5' must be a whole number"), (2.0, "n_snapshots=2.0 must be a whole number")],
)
def test_bad_n_snapshots_is_refused_in_one_line(value, match):
    with pytest.raises(ValueError, match=match) as err:
        config(n_snapshots=value)
    assert "\n" not in str(err.value)


def test_a_suite_train_table_sets_n_snapshots(tmp_path):
    from csae_bench.pipeline.plan import check_train_settings, train_settings
    from csae_bench.suite import SuiteError, build_config

    suite = tmp_path / "s.toml"
    suite.write_text('[run]\nmodel = "gpt2"\nlayer = 8\n[train]\nn_snapshots = 5\n')
    run = build_config(suite)
    hook = "blocks.8.hook_resid_post"
    assert TrainConfig.from_flat(**train_settings(run, hook, run.seeds[0])).n_snapshots == 5
    suite.write_text('[run]\nmodel = "gpt2"\nlayer = 8\ntrain_tokens = 4096\nbatch_size = 1024\n'
                     '[train]\nn_snapshots = 5\n')
    with pytest.raises(SuiteError, match="n_snapshots=5 must be in 0..4"):
        check_train_settings(build_config(suite), hook)

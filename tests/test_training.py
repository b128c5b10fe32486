"""Training alongside on a tiny model: loss goes down for every architecture, matched L0, outputs
load through SAELens and SAEBench, resume continues the same run bit for bit, finished SAEs are
skipped, and bad input (NaN/inf, foreign checkpoints, bad configs) fails loudly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import random_tokens
from sae_lens import SAE

from csae_bench.activations.gradient_pool import GradientPool
from csae_bench.activations.source import ActivationSource
from csae_bench.architectures import TOPK_FAMILY, UnknownArchitectureError
from csae_bench.architectures import TRAINED_ARCHITECTURES as ARCHITECTURES  # what config() trains
from csae_bench.architectures.export import load_base_sae
from csae_bench.metrics import explained_variance_mean_centred
from csae_bench.training import (
    CHECKPOINT_NAME,
    SUMMARY_NAME,
    TrainConfig,
    train_alongside,
)
from csae_bench.training.checkpoint import CheckpointMismatchError, NonFiniteError, read_checkpoint
from csae_bench.training.sparsity import L0Controller

HOOK = "blocks.1.hook_resid_post"
D_SAE, K, BATCH, STEPS = 128, 8, 64, 24


# Tiny ops on a shared 2-core machine run far faster on one thread (fixture in conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokens():
    return random_tokens(24, 32, seed=1)


@pytest.fixture(scope="module")
def source(tiny_model, tokens):
    return ActivationSource(tiny_model, HOOK, tokens, seed=0)


@pytest.fixture(scope="module")
def heldout(tiny_model):
    from csae_bench.activations.harvest import harvest_activations

    toks = random_tokens(8, 32, seed=2)
    return harvest_activations(tiny_model, HOOK, toks, show_progress=False)


@pytest.fixture(scope="module")
def pool(source):
    """A stand-in gradient pool (random gradients on real activations): the trainer only samples it."""
    acts = source.all_activations()[:128]
    gen = torch.Generator().manual_seed(3)
    return GradientPool(acts_ND=acts, grads_NSD=0.05 * torch.randn(len(acts), 2, acts.shape[1], generator=gen))


def config(**overrides) -> TrainConfig:
    base = dict(architectures=ARCHITECTURES, d_sae=D_SAE, train_tokens=BATCH * STEPS, batch_size=BATCH, target_l0=K, hook_name=HOOK,
                model_name="tiny-gemma3", checkpoint_every=8, lr=3e-3, dead_window=6, resample_every=6,
                verify_every=6, causal_batch_size=32, heldout_tokens=128, log_every=2, show_progress=False,
                norm_batches=2, calibrate_l0=True, controller_gain=0.1)
    base.update(overrides)
    return TrainConfig.from_flat(**base)


@pytest.fixture(scope="module")
def trained(tiny_model, source, pool, heldout, tmp_path_factory):
    out = tmp_path_factory.mktemp("alongside")
    folders = train_alongside(tiny_model, source, config(), out, gradient_pool=pool, heldout_acts=heldout)
    return out, folders


def summary(folder: Path) -> dict:
    return json.loads((folder / SUMMARY_NAME).read_text())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_training_reduces_loss_and_saves(trained, heldout, arch):
    out, folders = trained
    assert set(folders) == set(ARCHITECTURES)
    s = summary(folders[arch])
    steps, total, mse = zip(*s["loss_curve"], strict=True)
    assert len(steps) >= 4 and steps[0] == 0 and steps[-1] == STEPS - 1
    # ReLU/JumpReLU's total loss includes a penalty whose coefficient the L0 controller moves, so
    # the reconstruction loss is what every architecture must improve
    # (the random-decoder control can only move its encoder, so it improves least).
    # Margins (measured, 1 and 2 threads alike): last-3 / first MSE 0.50 (jumprelu) .. 0.74 (relu)
    # against 0.9, random-decoder 0.89 against 0.97 -- far more than rounding can move 24 steps.
    factor = 0.97 if arch == "random-decoder" else 0.9
    assert sum(mse[-3:]) / 3 < factor * mse[0], f"{arch}: reconstruction loss did not go down: {mse}"
    if arch in TOPK_FAMILY:
        assert total[-1] < total[0]
    assert s["final_loss_terms"]["mse_loss"] > 0
    assert s["train_tokens"] == BATCH * STEPS and s["seed"] == 0 and s["wall_seconds"] > 0
    assert s["metrics_on"] == "given" and s["heldout_tokens"] == len(heldout)
    assert 0 <= s["dead_fraction_train"] <= 1
    if arch in TOPK_FAMILY:
        assert 0 < s["l0"] <= K  # matched by construction (fewer only when < k pre-acts are positive)
    else:
        assert s["sparsity_coefficient"] is not None and s["l0"] > 0
    assert not (out / CHECKPOINT_NAME).exists()  # removed once every SAE is saved


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_saved_sae_reproduces_summary_through_saelens_and_saebench(trained, heldout, arch):
    _, folders = trained
    s = summary(folders[arch])
    base = load_base_sae(folders[arch])
    assert base.check_decoder_norms() and base.cfg.architecture == arch
    assert (base.cfg.model_name, base.cfg.hook_name, base.cfg.hook_layer) == ("tiny-gemma3", HOOK, 1)
    sae = SAE.load_from_disk(folders[arch])
    with torch.no_grad():
        torch.testing.assert_close(base(heldout), sae(heldout), atol=1e-4, rtol=1e-4)
        ev = explained_variance_mean_centred(heldout, base(heldout))
    assert ev == pytest.approx(s["explained_variance_mean_centred"], abs=1e-5)


def test_csae_used_the_causal_parts(trained):
    s = summary(trained[1]["csae"])
    assert s["final_loss_terms"]["causal_loss"] > 0
    assert s["last_verification"]["judged"] > 0


def test_finished_sae_is_skipped(trained, tiny_model, source, pool):
    out, folders = trained
    before = {a: (f / "sae_weights.safetensors").stat().st_mtime_ns for a, f in folders.items()}
    again = train_alongside(tiny_model, source, config(), out, gradient_pool=pool)
    assert again == folders
    assert before == {a: (f / "sae_weights.safetensors").stat().st_mtime_ns for a, f in folders.items()}


def test_resume_continues_the_same_run(tiny_model, source, pool, heldout, tmp_path):
    """Bit for bit: the straight and the resumed run happen in this process, on one thread (the
    module's ``one_thread`` fixture), so the comparison holds on any CPU kind."""
    cfg = config(train_tokens=BATCH * 12, checkpoint_every=4)
    straight = train_alongside(tiny_model, source, cfg, tmp_path / "straight", gradient_pool=pool,
                               heldout_acts=heldout)
    interrupted = tmp_path / "interrupted"
    assert train_alongside(tiny_model, source, cfg, interrupted, gradient_pool=pool, heldout_acts=heldout,
                           stop_after_steps=5) == {}
    assert (interrupted / CHECKPOINT_NAME).exists()
    resumed = train_alongside(tiny_model, source, cfg, interrupted, gradient_pool=pool, heldout_acts=heldout)
    for arch in ARCHITECTURES:
        a = SAE.load_from_disk(straight[arch]).state_dict()
        b = SAE.load_from_disk(resumed[arch]).state_dict()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{arch}.{name} differs after resume"
        sa, sb = summary(straight[arch]), summary(resumed[arch])
        assert sa["loss_curve"] == sb["loss_curve"]


def test_checkpoint_from_another_model_or_hook_is_refused(tiny_model, tokens, source, pool, tmp_path):
    cfg = config(architectures=("topk",), train_tokens=BATCH * 8)
    assert train_alongside(tiny_model, source, cfg, tmp_path, stop_after_steps=2) == {}
    with pytest.raises(CheckpointMismatchError, match="model_name: checkpoint 'tiny-gemma3' vs now 'gpt2'"):
        train_alongside(tiny_model, source, config(architectures=("topk",), train_tokens=BATCH * 8,
                                                   model_name="gpt2"), tmp_path)
    other = ActivationSource(tiny_model, "blocks.2.hook_resid_post", tokens)
    with pytest.raises(CheckpointMismatchError, match="hook_name"):
        train_alongside(tiny_model, other, config(architectures=("topk",), train_tokens=BATCH * 8,
                                                  hook_name="blocks.2.hook_resid_post"), tmp_path)
    # resume=False starts over instead
    done = train_alongside(tiny_model, source, cfg, tmp_path, resume=False)
    assert set(done) == {"topk"}


class PoisonedSource(ActivationSource):
    """An activation source whose batch ``at`` is multiplied by ``value`` (NaN, inf or huge)."""

    def __init__(self, *args, at: int, value: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.at, self.value = at, value

    def batches(self, batch_size, n_tokens=None, epoch_seed=None):
        for i, batch in enumerate(super().batches(batch_size, n_tokens, epoch_seed)):
            yield batch * self.value if (i == self.at and epoch_seed is None) else batch


@pytest.mark.parametrize(("value", "match"), [(float("nan"), "Non-finite activations in the batch of step 3"),
                                              (1e30, "non-finite loss at step 3")])
def test_non_finite_input_or_loss_is_reported_and_never_checkpointed(tiny_model, tokens, value, match, tmp_path):
    src = PoisonedSource(tiny_model, HOOK, tokens, at=3, value=value)
    cfg = config(architectures=("relu", "topk"), checkpoint_every=1, train_tokens=BATCH * 8)
    with pytest.raises(NonFiniteError, match=match):
        train_alongside(tiny_model, src, cfg, tmp_path)
    state = read_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["step"] == 3
    for arch_state in state["archs"].values():
        assert all(torch.isfinite(t).all() for t in arch_state["sae"].values() if t.is_floating_point())
    assert not (tmp_path / "relu").exists() and not (tmp_path / "topk").exists()


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [({"architectures": ("relu", "sparse-magic")}, UnknownArchitectureError, "Valid architectures: relu, topk"),
     ({"target_l0": 500}, ValueError, "target_l0=500 must be in 1..d_sae=128"),
     ({"d_sae": 0}, ValueError, "d_sae=0"),
     ({"train_tokens": 10}, ValueError, "train_tokens=10 must be >= batch_size=64"),
     ({"architectures": ("topk", "topk")}, ValueError, "duplicates"),
     ({"hook_name": "resid"}, Exception, "Cannot read a layer")],
)
def test_bad_config_raises_clearly(overrides, error, match):
    with pytest.raises(error, match=match):
        config(**overrides)


def test_source_and_config_hook_must_agree(tiny_model, source, tmp_path):
    with pytest.raises(RuntimeError, match="make them agree"):
        train_alongside(tiny_model, source, config(hook_name="blocks.0.hook_resid_post"), tmp_path)


def test_l0_controller_converges_on_a_monotone_response():
    """L0 falls as the coefficient rises (as for an L1 penalty): the controller finds the target."""
    ctrl = L0Controller(coefficient=0.01, target_l0=20, gain=0.1)
    for _ in range(400):
        l0 = 200 / (1 + 50 * ctrl.coefficient)
        ctrl.update(l0)
    assert l0 == pytest.approx(20, rel=0.05)
    ctrl.frozen = True
    c = ctrl.coefficient
    ctrl.update(1000.0)
    assert ctrl.coefficient == c


@pytest.mark.parametrize("n", [1, 2, 3, 16, 24, 146, 977])
@pytest.mark.parametrize(("warmup", "decay"), [(0.05, 0.2), (0.0, 0.0), (0.3, 0.4), (0.5, 0.5), (0.0, 0.9), (0.2, 0.0)])
def test_lr_schedule_is_warmup_constant_decay(n, warmup, decay):
    """torch's schedulers give the closed form at every step: lr·(t+1)/W, lr, lr·(n−t)/D."""
    from csae_bench.training.schedule import lr_scheduler

    cfg = TrainConfig(train_tokens=n, batch_size=1, lr=3e-3, warmup_frac=warmup, decay_frac=decay,
                      target_l0=1, d_sae=1)
    warm, decay_start = max(1, int(n * warmup)), n - int(n * decay)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = lr_scheduler(opt, cfg)
    for t in range(n):
        want = (cfg.lr * (t + 1) / warm if t < warm
                else cfg.lr * (n - t) / (n - decay_start) if t >= decay_start else cfg.lr)
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12, abs=0), t
        opt.step()
        sched.step()


def test_explained_variance_mean_centred():
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(100, 8, generator=gen) + 5.0
    assert explained_variance_mean_centred(acts, acts) == pytest.approx(1.0)
    assert explained_variance_mean_centred(acts, acts.mean(0).expand_as(acts)) == pytest.approx(0.0, abs=1e-6)
    # zero-centred EV would call the mean a good reconstruction; the mean-centred one does not
    assert explained_variance_mean_centred(acts, torch.zeros_like(acts)) < -10


@pytest.mark.parametrize("name", ["gemma-3-270m", "gpt2-small", "gemma-2-2b", "smoke"])
def test_training_suites_build_a_train_config(name):
    """Training recipes are suites (evals/*.toml): each one's [run] and [train] make a valid
    TrainConfig for its hook, with the per-architecture keys routed to their options."""
    from csae_bench.pipeline import train_settings
    from csae_bench.suite import build_config

    run = build_config(Path(__file__).parents[1] / "evals" / f"{name}.toml")
    hook = f"blocks.{run.layer}.hook_resid_post"
    cfg = TrainConfig.from_flat(**train_settings(run, hook, run.seeds[0]))
    assert cfg.architectures == tuple(run.architectures)
    assert cfg.hook_name == hook and cfg.n_steps > 0
    for key, value in run.train.items():
        assert cfg.to_flat()[key] == value


def test_train_typo_in_a_suite_is_refused(tmp_path):
    from csae_bench.suite import SuiteError, build_config

    bad = tmp_path / "bad.toml"
    bad.write_text('[run]\nmodel = "gpt2"\nlayer = 8\n[train]\nd_sea = 4096\n')
    with pytest.raises(SuiteError, match="unknown key 'train.d_sea'"):
        build_config(bad)
    with pytest.raises(TypeError, match="no setting 'd_sea'"):
        TrainConfig.from_flat(d_sea=4096)


def test_flat_and_nested_options_agree():
    """A flat key sets every architecture that has the option; a per-architecture table wins."""
    cfg = TrainConfig.from_flat(aux_loss_coefficient=0.5, causal_coeff=7.0, csae={"aux_loss_coefficient": 0.25})
    assert cfg.options["topk"].aux_loss_coefficient == 0.5
    assert cfg.options["csae"].aux_loss_coefficient == 0.25 and cfg.options["csae"].causal_coeff == 7.0
    assert cfg.sae_options("topk") == {"k": cfg.target_l0, "aux_loss_coefficient": 0.5}
    assert "grad_tokens" not in cfg.sae_options("csae")  # read by the trainer, not the SAE
    assert TrainConfig.from_flat(**TrainConfig().to_flat()) == TrainConfig()
    with pytest.raises(ValueError, match=r"options\['relu'\] has unknown keys \['k'\]"):
        TrainConfig(options={"relu": {"k": 3}})


def test_csae_harvests_and_reuses_its_gradient_pool(tiny_model, source, heldout, tmp_path):
    from csae_bench.training import POOL_NAME

    cfg = config(architectures=("csae",), train_tokens=BATCH * 6, grad_tokens=64, n_grad_samples=2)
    assert train_alongside(tiny_model, source, cfg, tmp_path, heldout_acts=heldout, stop_after_steps=3) == {}
    pool_file = tmp_path / POOL_NAME
    assert pool_file.exists()
    mtime = pool_file.stat().st_mtime_ns
    done = train_alongside(tiny_model, source, cfg, tmp_path, heldout_acts=heldout)
    assert pool_file.stat().st_mtime_ns == mtime  # the resumed run reused it
    assert summary(done["csae"])["final_loss_terms"]["causal_loss"] > 0


def test_live_display_runs(tiny_model, source, heldout, tmp_path, capsys):
    cfg = config(architectures=("relu", "topk"), train_tokens=BATCH * 4, show_progress=True, log_every=1)
    train_alongside(tiny_model, source, cfg, tmp_path, heldout_acts=heldout)
    shown = capsys.readouterr().out
    assert "relu" in shown and "dead %" in shown and "L0" in shown


class _RunsCode:
    """Unpickling this creates ``marker``: a stand-in for a planted checkpoint that runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_planted_pickle_checkpoint_is_refused_and_never_run(tiny_model, source, tmp_path):
    from csae_bench.training import LEGACY_CHECKPOINT_NAME

    marker, out = tmp_path / "code_ran", tmp_path / "out"
    out.mkdir()
    cfg = config(architectures=("topk",), train_tokens=BATCH * 8)
    torch.save({"format": 1, "payload": _RunsCode(marker)}, out / CHECKPOINT_NAME)
    with pytest.raises(CheckpointMismatchError, match="not a csae_bench safetensors checkpoint and was not read"):
        train_alongside(tiny_model, source, cfg, out)
    assert not marker.exists()
    # A pickled checkpoint of the old format is never opened: training starts over.
    (out / CHECKPOINT_NAME).rename(out / LEGACY_CHECKPOINT_NAME)
    assert set(train_alongside(tiny_model, source, cfg, out)) == {"topk"}
    assert not marker.exists()
    # Control: the planted file does run code when unpickled, so the checks above mean something.
    torch.load(out / LEGACY_CHECKPOINT_NAME, weights_only=False)
    assert marker.exists()


def test_checkpoint_round_trips_every_value_kind_exactly(tmp_path):
    from csae_bench.training.checkpoint import save_checkpoint

    gen = torch.Generator().manual_seed(0)
    state = {
        "identity": {"hook_name": HOOK, "architectures": ("relu", "topk")},
        "step": 7,
        "activation_scale": 0.1 + 0.2,  # a float whose repr is not short: must come back exactly
        "archs": {"relu": {
            "optimizer": {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(3, 2, generator=gen)}},
                          "param_groups": [{"params": [0], "betas": (0.9, 0.999), "foreach": None,
                                            "maximize": False}]},
            "generator": gen.get_state(),
            "bf16": torch.randn(4, generator=gen).bfloat16(),
            "counts": torch.arange(5),
            "loss_curve": [(0, 1.5), (1, 1.25)],
        }},
    }
    save_checkpoint(tmp_path / "c.safetensors", state)
    back = read_checkpoint(tmp_path / "c.safetensors")
    assert back.pop("format") == 2

    def same(a, b):
        assert type(a) is type(b)
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b)
        elif isinstance(a, dict):
            assert list(a) == list(b) and all(same(a[k], b[k]) is None for k in a)
        elif isinstance(a, (list, tuple)):
            assert len(a) == len(b) and all(same(x, y) is None for x, y in zip(a, b, strict=True))
        else:
            assert a == b

    same(state, back)


def test_heldout_activations_come_from_the_runs_corpus(tmp_path, monkeypatch):
    """The final EV / L0 are measured on the eval split of the corpus the SAEs train on (it was
    always the embedded corpus's, whatever the run trained on)."""
    from types import SimpleNamespace

    import csae_bench.activations.harvest as harvest
    import csae_bench.data as data
    from csae_bench.pipeline.plan import train_settings
    from csae_bench.suite import build_config
    from csae_bench.training.finalize import heldout_activations

    suite = tmp_path / "s.toml"
    suite.write_text('[run]\nmodel = "gpt2"\nlayer = 8\ncorpus = "english"\n')
    settings = train_settings(build_config(suite), "blocks.8.hook_resid_post", 0)
    cfg = TrainConfig.from_flat(**{**settings, "heldout_tokens": 64})
    assert cfg.heldout_corpus == "english"
    asked = {}

    def load_tokens(tokenizer, corpus, split, context_size, n_contexts):
        asked.update(corpus=corpus, split=split, context_size=context_size)
        return torch.zeros(n_contexts, context_size, dtype=torch.long)

    monkeypatch.setattr(data, "load_tokens", load_tokens)
    monkeypatch.setattr(harvest, "harvest_activations", lambda m, h, t, **k: torch.ones(100, 4))
    source = SimpleNamespace(tokens=torch.zeros(2, 16, dtype=torch.long))
    acts, on = heldout_activations(SimpleNamespace(tokenizer=object()), source, cfg)
    assert asked == {"corpus": "english", "split": "eval", "context_size": 16}
    assert on == "eval split" and acts.shape == (64, 4)

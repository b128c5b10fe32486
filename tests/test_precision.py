"""csae_bench.precision: the auto choice, its fallback, and the names a user may give."""

import logging

import pytest
import torch

from csae_bench import precision
from csae_bench.errors import BadInputError


def test_auto_falls_back_to_float32_without_native_bf16(monkeypatch, caplog):
    """A CPU without AMX/AVX512-BF16 gets float32, with one log line saying how to force bf16."""
    monkeypatch.setattr(precision, "_cpu_has_fast_bf16", lambda: False)
    precision._log_choice.cache_clear()
    with caplog.at_level(logging.INFO, logger="csae_bench.precision"):
        assert precision.resolve_dtype("auto", "cpu") is torch.float32
        assert precision.resolve_dtype(None, "cpu") is torch.float32
    lines = [r.getMessage() for r in caplog.records if "Precision auto" in r.getMessage()]
    assert len(lines) == 1 and "float32" in lines[0] and "--dtype bfloat16" in lines[0]


def test_auto_picks_bf16_with_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_has_fast_bf16", lambda: True)
    precision._log_choice.cache_clear()
    assert precision.resolve_dtype("auto", "cpu") is torch.bfloat16


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_named_dtypes_are_taken_as_given(monkeypatch, name):
    monkeypatch.setattr(precision, "_cpu_has_fast_bf16", lambda: False)
    dtype = precision.resolve_dtype(name, "cpu")
    assert dtype is getattr(torch, name) and precision.dtype_name(dtype) == name


def test_unknown_dtype_is_bad_input():
    with pytest.raises(BadInputError, match="use one of auto, float32"):
        precision.resolve_dtype("fp8", "cpu")


def test_autocast_runs_matmuls_in_bf16_and_is_off_for_float32():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with precision.autocast(torch.bfloat16):
        assert (a @ b).dtype is torch.bfloat16
    with precision.autocast(torch.float32):
        assert (a @ b).dtype is torch.float32


@pytest.mark.parametrize("fast", [True, False])
def test_run_loads_the_engine_model_in_float32_beside_a_bf16_model(monkeypatch, tmp_path, fast):
    """``dtype=auto`` gives the harvest/core model bf16 only where bf16 is native; interventions
    always get a float32 model (a second copy only when the dtypes differ)."""
    from csae_bench.pipeline import Resources
    from csae_bench.suite import RunConfig

    monkeypatch.setattr(precision, "_cpu_has_fast_bf16", lambda: fast)
    precision._log_choice.cache_clear()
    loads = []

    def loader(name, device, dtype):
        loads.append(dtype)
        return object()

    res = Resources(RunConfig(out=str(tmp_path)), model_loader=loader)
    assert res.dtype == ("bfloat16" if fast else "float32")
    model, engine = res.model, res.engine_model
    assert (model is engine) is (not fast)
    assert loads == (["bfloat16", "float32"] if fast else ["float32"])


def test_resources_hold_one_model_and_drop_its_cached_work(monkeypatch, tmp_path):
    """With bf16 and float32 models, asking for one drops the other (and the eval cache's entries
    keyed by its id); tokens come from whichever model is loaded, never from a new load."""
    from csae_bench.pipeline import Resources
    from csae_bench.suite import RunConfig

    monkeypatch.setattr(precision, "_cpu_has_fast_bf16", lambda: True)
    precision._log_choice.cache_clear()
    loads, tokenizers = [], []

    class Model:
        def __init__(self, dtype):
            self.dtype = dtype

    def loader(name, device, dtype):
        loads.append(dtype)
        return Model(dtype)

    def tokens(model, cfg, split, n, seed):
        tokenizers.append(model.dtype)
        return torch.zeros(n, 4, dtype=torch.long)

    res = Resources(RunConfig(out=str(tmp_path)), model_loader=loader, token_loader=tokens)
    bf16 = res.model
    res.eval_cache.update({("core_pass", id(bf16), "x"): 1, "shared": 2})
    engine = res.engine_model
    assert engine.dtype == "float32" and res._model is None
    assert res.eval_cache == {"shared": 2}  # the bf16 model's work went with it
    res.eval_tokens()
    assert tokenizers == ["float32"] and loads == ["bfloat16", "float32"]
    assert res.engine_model is engine and res.model.dtype == "bfloat16"
    assert loads == ["bfloat16", "float32", "bfloat16"]
    both = Resources(RunConfig(out=str(tmp_path)), model_loader=loader, hold_one_model=False)
    assert both.model is not both.engine_model and both.model is both.model


def test_bf16_training_step_keeps_float32_master_weights_and_adam_state():
    from csae_bench.training import TrainConfig
    from csae_bench.training.state import SAERunState

    cfg = TrainConfig(
        architectures=("topk",),
        d_sae=64,
        target_l0=4,
        batch_size=32,
        train_tokens=320,
        dtype="bfloat16",
    )
    run = SAERunState("topk", 16, cfg, 0)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    run.calibrate_init(x)
    before = run.sae.W_enc.detach().clone()
    out = run.step(x, 0)
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in run.sae.parameters())
    state = run.optimizer.state[run.sae.W_enc]
    assert state["exp_avg"].dtype == torch.float32 and not torch.equal(run.sae.W_enc, before)

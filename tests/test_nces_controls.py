"""NCES's control set: ``feature`` (another feature's decoder row) is the default; the ``data``
control is one seeded direction set shared by every SAE (computed once per run), each control edit
has the norm of the feature's edit, an unknown control names the valid ones; and the registry's
control flag is what marks a row as a control."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import random_sae

import csae_bench.architectures as archs
from csae_bench.errors import BadInputError
from csae_bench.evals.nces import NCESEvalConfig
from csae_bench.interventions import controls
from csae_bench.interventions.controls import data_control, data_directions, get_control

HOOK = "blocks.1.hook_resid_post"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_feature_is_the_default_and_unknown_controls_list_the_valid_ones():
    assert NCESEvalConfig().control == "feature"
    with pytest.raises(ValueError, match="valid: data, feature, isotropic"):
        NCESEvalConfig(control="gaussian")
    with pytest.raises(BadInputError, match="Unknown control 'gaussian'; valid: data, feature, isotropic"):
        get_control("gaussian")


def test_data_directions_are_seeded_unit_pair_differences_of_non_bos_tokens():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 8, generator=gen, dtype=torch.float64)
    counted = torch.ones(3, 5, dtype=torch.bool)
    counted[:, 0] = False
    h[:, 0] = 1e6  # BOS-sized outliers: never part of a direction
    a, b = data_directions(h, counted, seed=7, n_directions=6), data_directions(h, counted, seed=7, n_directions=6)
    assert torch.equal(a.pool_PD, b.pool_PD) and torch.equal(a.index_NT, b.index_NT)
    assert not torch.equal(a.pool_PD, data_directions(h, counted, seed=8, n_directions=6).pool_PD)
    assert a.pool_PD.shape == (6, 8) and a.index_NT.shape == (3, 5)
    torch.testing.assert_close(a.pool_PD.norm(dim=-1), torch.ones(6, dtype=torch.float64))
    # every direction is ± a normalised difference of two distinct non-BOS residuals
    tokens = h[:, 1:].reshape(-1, 8)
    diffs = tokens[:, None] - tokens[None]
    units = diffs / diffs.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    for u in a.pool_PD:
        assert (units - u).norm(dim=-1).min() < 1e-9
    with pytest.raises(ValueError, match="at least 2 non-BOS"):
        data_directions(h, torch.zeros(3, 5, dtype=torch.bool), seed=0)


def test_data_control_has_the_norm_of_each_edit():
    gen = torch.Generator().manual_seed(1)
    delta = torch.randn(6, 8, generator=gen, dtype=torch.float64) * torch.arange(1, 7, dtype=torch.float64)[:, None]
    unit = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen, dtype=torch.float64), dim=-1)
    out = data_control(None, delta, torch.zeros(6, dtype=torch.long), torch.zeros(6, 4), data_MD=unit)
    torch.testing.assert_close(out.norm(dim=-1), delta.norm(dim=-1))
    torch.testing.assert_close(out / out.norm(dim=-1, keepdim=True), unit)
    with pytest.raises(ValueError, match="data_directions"):
        data_control(None, delta, torch.zeros(6, dtype=torch.long), torch.zeros(6, 4))


def test_every_sae_gets_the_same_data_directions(tiny_model, tiny_tokens, monkeypatch):
    """Two different SAEs through the registry: one direction set in the shared cache, and every
    control edit of both is a row of that one set times the norm of the SAE's own edit."""
    from csae_bench.evals.registry import EVALS, EvalContext

    calls = []
    real = controls.CONTROLS["data"]

    def recording(sae, delta_MD, *args, **kwargs):
        out = real(sae, delta_MD, *args, **kwargs)
        calls.append((delta_MD, kwargs["data_MD"], out))
        return out

    monkeypatch.setitem(controls.CONTROLS, "data", recording)
    spec = EVALS["nces"]
    ctx = EvalContext(model=tiny_model, hook_name=HOOK, eval_tokens=tiny_tokens, seed=3, model_name="tiny")
    cfg = spec.make_config(ctx, {"n_features": 8, "tokens_per_feature": 2, "n_bootstrap": 50,
                                 "compute_attribution": False, "control": "data"})
    assert cfg.control == "data"
    spec.run(ctx, random_sae(seed=0), "a", cfg)
    spec.run(ctx, random_sae(seed=1), "b", cfg)
    keys = [k for k in ctx.cache if isinstance(k, tuple) and k[0] == "nces_data_control"]
    assert len(keys) == 1 and len(calls) == 2
    pool = ctx.cache[keys[0]].pool_PD
    for delta, data, out in calls:
        assert len(delta) > 0
        assert all((pool == row).all(-1).any() for row in data)  # rows of the one shared set
        torch.testing.assert_close(out.norm(dim=-1), delta.norm(dim=-1), rtol=1e-5, atol=1e-6)


def test_registry_control_flag_drives_the_leaderboard_and_table(tiny_model, tiny_tokens, tmp_path, monkeypatch):
    """Rows are controls because the registry says so: pca is marked ``ctrl``, topk is not, and
    flipping topk's registry flag marks it too; plots label controls."""
    from csae_bench.evals.nces import evaluate_sae
    from csae_bench.reporting.leaderboard import build_leaderboard
    from csae_bench.reporting.plots import legend_label
    from csae_bench.reporting.table import row_flags
    from csae_bench.utils import atomic_write_text, eval_output_json

    folder = tmp_path / "eval_results" / "nces"
    cfg = NCESEvalConfig(n_features=4, tokens_per_feature=2, n_bootstrap=20, hook_name=HOOK,
                         compute_attribution=False)
    for seed, sid in enumerate(["topk-d256-s0", "pca-d256-s0"]):
        out = evaluate_sae(tiny_model, random_sae(seed=seed), tiny_tokens, HOOK, cfg, sid)
        atomic_write_text(folder / f"rel_{sid}_eval_results.json", eval_output_json(out))

    def flags():
        board, _ = build_leaderboard(tmp_path)
        return {r["architecture"]: (r["control"], row_flags(r)) for r in board["rows"]}

    got = flags()
    assert got["pca"][0] is True and "ctrl" in got["pca"][1]
    assert got["topk"][0] is False and "ctrl" not in got["topk"][1]
    monkeypatch.setitem(archs.REGISTRY, "topk", dataclasses.replace(archs.REGISTRY["topk"], control=True))
    assert flags()["topk"][0] is True and "ctrl" in flags()["topk"][1]
    assert legend_label("pca", {"pca"}) == "pca (control)" and legend_label("topk", {"pca"}) == "topk"

"""SAELens pretrained releases (``--saes release:sae_id``, suite ``extra_saes``), offline.

The hub is replaced by :class:`StandInHub`: files written in the release's on-hub layout under a
temp folder, served to SAELens's own loaders through the two ways they reach the hub —
``hf_hub_download`` (as imported in ``sae_lens.loading.pretrained_sae_loaders``) and the HTTP
range requests ``get_safetensors_tensor_shapes`` sends with ``requests.get``. Everything after the
download (config inference, conversion, ``SAE.from_pretrained``, our ``BaseSAE`` adapter) is real.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from safetensors.torch import save_file

from csae_bench import releases as sp
from csae_bench.releases import checks as release_checks
from csae_bench.run import EXIT_USAGE, main
from csae_bench.suite import SuiteError

REPO = Path(__file__).resolve().parents[1]
GS2 = "gemma-scope-2-270m-pt-res-all"
GS2_REPO = "google/gemma-scope-2-270m-pt"
D_IN, D_SAE = 64, 32  # the tiny test model's d_model; a small dictionary


class _Response:
    def __init__(self, content: bytes, status: int):
        self.content, self.status_code, self.headers = content, status, {}

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            import requests

            raise requests.HTTPError(f"{self.status_code}")


class StandInHub:
    """A local stand-in for huggingface.co: ``root/<repo_id>/<path>`` files, served by
    ``hf_hub_download`` and by ranged ``GET https://huggingface.co/<repo>/resolve/main/<path>``."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []

    def file(self, repo_id: str, path: str) -> Path:
        return self.root / repo_id / path

    def hf_hub_download(self, repo_id, filename, *, subfolder=None, **_):
        from huggingface_hub.utils import EntryNotFoundError

        path = f"{subfolder}/{filename}" if subfolder else filename
        self.requests.append(f"download {repo_id}/{path}")
        local = self.file(repo_id, path)
        if not local.is_file():
            raise EntryNotFoundError(f"404 Client Error: Entry Not Found for {repo_id}/{path}")
        return str(local)

    def get(self, url, headers=None, timeout=None):
        parts = urlparse(url).path.strip("/").split("/")
        repo_id, path = "/".join(parts[:2]), "/".join(parts[4:])  # <org>/<name>/resolve/main/<path>
        self.requests.append(f"range {repo_id}/{path}")
        local = self.file(repo_id, path)
        if not local.is_file():
            return _Response(b"", 404)
        start, end = (int(v) for v in (headers or {})["Range"].removeprefix("bytes=").split("-"))
        return _Response(local.read_bytes()[start : end + 1], 206)

    # -- writers, in the layouts the releases use on the hub

    def put_gemma_scope(self, folder: str, seed: int = 0, config: bool = True) -> dict:
        """A Gemma Scope 2 JumpReLU SAE: ``<folder>/params.safetensors`` (bf16 ``w_enc`` [d_in,
        d_sae], ``w_dec`` [d_sae, d_in], ``b_enc``, ``b_dec``, ``threshold``) and, optionally,
        ``<folder>/config.json`` with the keys SAELens's ``gemma_3`` loader reads."""
        gen = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(D_SAE, D_IN, generator=gen) * torch.linspace(0.5, 2.0, D_SAE)[:, None]
        params = {
            "w_enc": torch.randn(D_IN, D_SAE, generator=gen) / D_IN**0.5,
            "w_dec": w_dec / D_IN**0.5,
            "b_enc": torch.randn(D_SAE, generator=gen) * 0.1,
            "b_dec": torch.randn(D_IN, generator=gen) * 0.1,
            "threshold": torch.full((D_SAE,), 0.4),
        }
        params = {k: v.to(torch.bfloat16).contiguous() for k, v in params.items()}
        out = self.file(GS2_REPO, folder)
        out.mkdir(parents=True, exist_ok=True)
        save_file(params, out / "params.safetensors")
        if config:
            layer = int(folder.split("layer_")[1].split("_")[0])
            (out / "config.json").write_text(
                json.dumps(
                    {
                        "architecture": "jump_relu",
                        "model_name": "gemma-v3-270m-pt",
                        "hf_hook_point_in": f"model.layers.{layer}.output",
                    }
                )
            )
        return params

    def put_saelens(self, release: str, sae_id: str, hook: str, norm: str = "none"):
        """A SAELens-format SAE (``cfg.json`` + ``sae_weights.safetensors``) at the release's path."""
        from sae_lens import StandardSAE, StandardSAEConfig

        entry = sp.pretrained_directory()[release]
        torch.manual_seed(1)
        cfg = StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, normalize_activations=norm)
        cfg.metadata.hook_name = hook
        cfg.metadata.model_name = entry["model"]
        sae = StandardSAE(cfg)
        with torch.no_grad():
            for p in sae.parameters():
                p.copy_(torch.randn_like(p) * 0.2)
        sae.save_model(self.file(entry["repo_id"], entry["saes"][sae_id]))
        return sae


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The stand-in hub, reachable: SAELens's download calls go to it (nothing else is patched)."""
    from sae_lens.loading import pretrained_sae_loaders as loaders

    stand_in = StandInHub(tmp_path / "hub")
    monkeypatch.setattr(loaders, "hf_hub_download", stand_in.hf_hub_download)
    monkeypatch.setattr(loaders.requests, "get", stand_in.get)
    monkeypatch.setattr(release_checks, "_hub_reachable", lambda timeout_s=3.0: True)  # the network probe
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    sp.release_config.cache_clear()
    yield stand_in
    sp.release_config.cache_clear()


def _jumprelu_reference(params: dict, x: torch.Tensor) -> torch.Tensor:
    """Gemma Scope's JumpReLU SAE from its raw file tensors, in float64."""
    p = {k: v.double() for k, v in params.items()}
    pre = x.double() @ p["w_enc"] + p["b_enc"]
    acts = pre * (pre > p["threshold"])
    return acts @ p["w_dec"] + p["b_dec"]


# ---------------------------------------------------------------- parsing and the directory


def test_split_sae_entries_separates_folders_from_release_ids(tmp_path):
    folder = tmp_path / "odd:name"  # an existing path with a colon stays a folder
    folder.mkdir()
    folders, releases = sp.split_sae_entries(
        [f"{GS2}:layer_6_width_16k_l0_small, {GS2}:layer_6_width_16k_l0_big", str(folder)]
    )
    assert folders == [str(folder)]
    assert releases == [f"{GS2}:layer_6_width_16k_l0_small", f"{GS2}:layer_6_width_16k_l0_big"]
    with pytest.raises(SuiteError, match="release:sae_id"):
        sp.split_sae_entries(f"{GS2}:")


def test_resolve_release_reads_saelens_directory():
    rel = sp.resolve_release(f"{GS2}:layer_6_width_262k_l0_big")
    assert (rel.repo_id, rel.path, rel.model, rel.conversion_func) == (
        GS2_REPO,
        "resid_post_all/layer_6_width_262k_l0_big",
        "google/gemma-3-270m",
        "gemma_3",
    )
    # the same answer as SAELens's own directory lookup
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name

    assert get_repo_id_and_folder_name(GS2, rel.sae_id) == (rel.repo_id, rel.path)


@pytest.mark.parametrize(
    "flag, spec, named",
    [
        ("--saes", "gemma-scope-2-270m-pt-res-al:layer_6_width_16k_l0_small", "Did you mean " + GS2),
        ("--saes", f"{GS2}:layer_6_width_16k_l0_medium", "has no SAE id 'layer_6_width_16k_l0_medium'"),
        ("--extra-saes", f"{GS2}:layer_6_width_16k", "has no SAE id 'layer_6_width_16k'"),
        ("--saes", f"{GS2}:", "write a SAELens SAE as release:sae_id"),
    ],
)
def test_bad_release_ids_exit_2_with_one_line(tmp_path, caplog, flag, spec, named):
    assert main([flag, spec, "--out", str(tmp_path)]) == EXIT_USAGE
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and named in errors[0] and "\n" not in errors[0]


@pytest.mark.parametrize(
    "args",
    [
        ["--saes", f"{GS2}:layer_6_width_16k_l0_small,{GS2}:layer_6_width_16k_l0_big"],
        ["--suite", "evals/gemma-scope-2-270m.toml"],
    ],
    ids=["--saes", "--suite"],
)
def test_offline_release_fails_fast_before_any_model(tmp_path, args):
    """The command as a user runs it, offline: exit 2, one line naming the release and what to
    do, before SAELens or TransformerLens is imported (so before any model or SAE is loaded)."""
    code = (
        "import sys, time; t = time.perf_counter(); from csae_bench.run import main; "
        f"rc = main({args!r} + ['--out', {str(tmp_path)!r}]); "
        "print('RESULT', rc, round(time.perf_counter() - t, 2), 'sae_lens' in sys.modules, "
        "'transformer_lens' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    result = next(line for line in out.splitlines() if line.startswith("RESULT")).split()
    assert result[1] == str(EXIT_USAGE) and result[3:] == ["False", "False"], out
    message = next(line for line in out.splitlines() if "ERROR" in line)
    assert f"{GS2}:layer_6_width_16k_l0_small" in message and "--saes DIR" in message


# ---------------------------------------------------------------- the real loading path


@pytest.mark.parametrize("with_config", [True, False], ids=["config.json", "inferred-config"])
def test_gemma_scope_2_loads_through_saelens_as_base_sae(hub, with_config):
    sae_id = "layer_2_width_16k_l0_small"
    params = hub.put_gemma_scope(f"resid_post_all/{sae_id}", config=with_config)
    sae = sp.load_release_sae(f"{GS2}:{sae_id}")

    from sae_bench.custom_saes.jumprelu_sae import JumpReluSAE

    assert isinstance(sae, JumpReluSAE)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.hook_name, sae.cfg.hook_layer) == (
        D_IN,
        D_SAE,
        "blocks.2.hook_resid_post",
        2,
    )
    assert sae.cfg.model_name == "google/gemma-3-270m" and sae.W_enc.dtype == torch.float32
    # SAELens's loader fetched the weights and read their shapes from the hub (range request)
    assert f"download {GS2_REPO}/resid_post_all/{sae_id}/params.safetensors" in hub.requests
    assert any(r.startswith("range ") for r in hub.requests)
    # JumpReLU thresholds honoured: the BaseSAE reconstructs as the raw bf16 tensors say.
    x = torch.randn(1024, D_IN, generator=torch.Generator().manual_seed(3)) * 2
    pre = x.double() @ params["w_enc"].double() + params["b_enc"].double()
    # keep inputs with no pre-activation within 1e-2 of the threshold: rounding cannot flip one
    clear = ((pre - params["threshold"].double()).abs() > 1e-2).all(dim=1)
    x, pre = x[clear], pre[clear]
    assert len(x) >= 32
    gated = ((pre > 0) & (pre <= params["threshold"].double())).sum().item()
    assert gated > 0  # a ReLU without the threshold would differ on these
    ref = _jumprelu_reference(params, x)
    assert torch.allclose(sae(x).double(), ref, rtol=1e-4, atol=1e-4)
    sae.check_decoder_norms()


def test_resid_pre_release_is_read_at_the_previous_resid_post(hub):
    hub.put_saelens("gpt2-small-res-jb", "blocks.3.hook_resid_pre", "blocks.3.hook_resid_pre")
    sae = sp.load_release_sae("gpt2-small-res-jb:blocks.3.hook_resid_pre")
    assert (sae.cfg.hook_name, sae.cfg.hook_layer) == ("blocks.2.hook_resid_post", 2)
    assert sp.equivalent_resid_post("blocks.0.hook_resid_pre") == "blocks.0.hook_resid_pre"
    assert sp.equivalent_resid_post("blocks.4.hook_mlp_out") == "blocks.4.hook_mlp_out"


def test_resid_pre_is_the_same_tensor_as_previous_resid_post(tiny_model, tiny_tokens):
    _, cache = tiny_model.run_with_cache(tiny_tokens[:2])
    for layer in range(1, tiny_model.cfg.n_layers):
        pre = cache[f"blocks.{layer}.hook_resid_pre"]
        assert torch.equal(pre, cache[sp.equivalent_resid_post(f"blocks.{layer}.hook_resid_pre")])


def test_release_activation_normalization_is_folded(hub):
    """A release with ``normalize_activations=expected_average_only_in`` and a norm scaling factor
    in SAELens's directory: SAELens folds the factor, the BaseSAE reconstructs in model units."""
    release, sae_id = "gpt2-small-mlp-tm", "blocks.0.hook_mlp_out"
    scale = 1.049317316132615  # its norm_scaling_factor in sae_lens/pretrained_saes.yaml
    raw = hub.put_saelens(release, sae_id, "blocks.0.hook_mlp_out", norm="expected_average_only_in")
    sae = sp.load_release_sae(f"{release}:{sae_id}")
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        xs = x.double() * scale
        acts = torch.relu((xs - raw.b_dec.double()) @ raw.W_enc.double() + raw.b_enc.double())
        ref = (acts @ raw.W_dec.double() + raw.b_dec.double()) / scale
    assert torch.allclose(sae(x).double(), ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- release-specific up-front checks


def _cli(tmp_path, *args):
    return main(["--evals", "core", "--out", str(tmp_path / "out"), *args])


def test_other_model_family_exits_2_before_the_model(hub, tmp_path, caplog, monkeypatch):
    hub.put_gemma_scope("resid_post_all/layer_6_width_16k_l0_small")
    monkeypatch.setattr(
        "csae_bench.models.load_model", lambda *a, **k: pytest.fail("model loaded")
    )
    assert _cli(tmp_path, "--model", "gpt2", "--saes", f"{GS2}:layer_6_width_16k_l0_small") == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"{GS2}:layer_6_width_16k_l0_small was trained on google/gemma-3-270m" in error
    assert "another family" in error


def test_unsupported_architecture_exits_2(hub, tmp_path, caplog):
    """A Gemma Scope 2 transcoder is a release SAELens loads but BaseSAE cannot express."""
    spec = "gemma-scope-2-270m-pt-transcoders:transcoder/layer_9_width_16k_l0_small_affine"
    rel = sp.resolve_release(spec)
    params = hub.put_gemma_scope(rel.path, config=False)  # same tensors as a transcoder's
    save_file({**params, "affine_skip_connection": torch.zeros(D_IN, D_IN)},
              hub.file(GS2_REPO, rel.path) / "params.safetensors")
    assert _cli(tmp_path, "--saes", spec) == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert spec in error and "jumprelu_skip_transcoder" in error and "cannot be evaluated" in error


def test_model_match_warnings():
    rel = sp.resolve_release(f"{GS2}:layer_6_width_16k_l0_small")
    (dequant,) = sp.check_release_model(rel, "embedded")
    assert "dequantized from a Q4_K_M GGUF" in dequant
    assert sp.check_release_model(rel, "gemma-3-270m") == []  # the original weights
    (family,) = sp.check_release_model(rel, "google/gemma-3-1b-pt")
    assert "same family, another model" in family
    jb = sp.resolve_release("gpt2-small-res-jb:blocks.3.hook_resid_pre")
    (processed,) = sp.check_release_model(jb, "gpt2")
    assert "center_writing_weights" in processed
    assert sp.model_family("google/gemma-3-270m") == sp.model_family("gemma-3-1b-pt") == "gemma-3"


def test_embedded_model_id_says_dequantized():
    from csae_bench.models import EMBEDDED_TL_NAME, resolve_model
    from csae_bench.pipeline import model_display_name

    spec = resolve_model("embedded")
    assert spec.name == EMBEDDED_TL_NAME == "google/gemma-3-270m"  # TransformerLens architecture
    assert model_display_name("embedded") == spec.model_id
    assert "q4_k_m" in spec.model_id and "dequantized" in spec.model_id


# ---------------------------------------------------------------- runs and leaderboard


def test_trained_saes_and_release_in_one_run(hub, tmp_path, caplog):
    """Suite key ``extra_saes``: the run trains as usual and evaluates the release beside; the
    leaderboard keeps them apart by ``source`` and names the release SAE by release and id."""
    from helpers import tiny_resources, tiny_run_config

    from csae_bench.run import execute

    sae_id = "layer_2_width_16k_l0_small"
    hub.put_gemma_scope(f"resid_post_all/{sae_id}")
    cfg = tiny_run_config(
        tmp_path, model="embedded", architectures=["relu"], extra_saes=[f"{GS2}:{sae_id}"]
    )
    board = execute(cfg, tiny_resources(cfg), plots=False)
    rows = {r["source"]: r for r in board["rows"]}
    assert set(rows) == {"trained", "release"}
    release = rows["release"]
    assert (release["sae_release"], release["sae_id"], release["architecture"]) == (
        GS2,
        sae_id,
        "jumprelu",
    )
    assert release["hook"] == rows["trained"]["hook"] == "blocks.2.hook_resid_post"
    assert release["missing_evals"] == [] and release["l0"] is not None
    assert any("dequantized from a Q4_K_M GGUF" in r.getMessage() for r in caplog.records)


def test_saes_release_only_trains_nothing(hub, tmp_path):
    from helpers import tiny_resources, tiny_run_config

    from csae_bench.run import execute

    hub.put_gemma_scope("resid_post_all/layer_1_width_16k_l0_big", seed=1)
    cfg = tiny_run_config(tmp_path, model="embedded", saes=f"{GS2}:layer_1_width_16k_l0_big")
    assert not cfg.trains and cfg.saes is None
    board = execute(cfg, tiny_resources(cfg), plots=False)
    assert [(r["source"], r["hook"]) for r in board["rows"]] == [
        ("release", "blocks.1.hook_resid_post")
    ]
    assert not (tmp_path / "embedded").exists()


def test_sae_source():
    assert sp.sae_source(GS2, "layer_6_width_16k_l0_small") == "release"
    assert sp.sae_source("csae_bench-embedded-blocks.6.hook_resid_post", "csae-d2048-s0") == "trained"
    assert sp.sae_source("csae_bench-embedded-saes", "relu") == "folder"


# ---------------------------------------------------------------- the suite


def test_gemma_scope_suite_has_layer_6_releases_beside_trained_saes():
    from csae_bench.suite import build_config

    cfg = build_config(REPO / "evals" / "gemma-scope-2-270m.toml")
    assert cfg.trains and cfg.layer == 6 and "random-decoder" in cfg.architectures
    ids = sorted(sp.resolve_release(s).sae_id for s in cfg.extra_saes)
    assert ids == [f"layer_6_width_{w}_l0_{s}" for w in ("16k", "262k") for s in ("big", "small")]
    # every layer-6 SAE the release has is in the suite
    all_layer_6 = [i for i in sp.pretrained_directory()[GS2]["saes"] if i.startswith("layer_6_")]
    assert sorted(all_layer_6) == ids


def test_suite_keys_for_releases(tmp_path):
    from csae_bench.suite import SuiteError, build_config

    suite = tmp_path / "s.toml"
    suite.write_text(f'[run]\nsaes = ["{GS2}:layer_6_width_16k_l0_big"]\n')
    cfg = build_config(suite)
    assert cfg.release_saes == [f"{GS2}:layer_6_width_16k_l0_big"] and not cfg.trains
    suite.write_text('[run]\nrelease_saes = ["x:y"]\n')
    with pytest.raises(SuiteError, match="unknown key 'run.release_saes'"):
        build_config(suite)
    suite.write_text(f'[run]\nextra_saes = ["{tmp_path}"]\n')
    with pytest.raises(SuiteError, match="extra_saes takes SAELens release:sae_id"):
        build_config(suite)


def test_resid_pre_release_runs_every_eval_at_the_previous_resid_post(hub, tmp_path):
    """A ``blocks.L.hook_resid_pre`` release through core and NCES (whose engine patches only
    ``hook_resid_post``): both read it at ``blocks.{L-1}.hook_resid_post``."""
    from helpers import tiny_resources, tiny_run_config

    from csae_bench.run import execute

    hub.put_saelens("gpt2-small-res-jb", "blocks.2.hook_resid_pre", "blocks.2.hook_resid_pre")
    nces = {"n_features": 8, "tokens_per_feature": 2, "n_contexts": 4, "n_bootstrap": 50}
    cfg = tiny_run_config(
        tmp_path,
        model="gpt2",
        saes="gpt2-small-res-jb:blocks.2.hook_resid_pre",
        evals=["core", "nces"],
        eval_settings={"core": {"batch_size_prompts": 8}, "nces": nces},
    )
    board = execute(cfg, tiny_resources(cfg), plots=False)
    (row,) = board["rows"]
    assert (row["source"], row["sae_id"], row["hook"]) == (
        "release",
        "blocks.2.hook_resid_pre",
        "blocks.1.hook_resid_post",
    )
    assert row["missing_evals"] == [] and set(row["metrics"]) == {"core", "nces"}


def test_run_time_normalization_exits_2(hub, tmp_path, caplog):
    """``layer_norm`` normalization happens per token at run time: no BaseSAE expresses it."""
    spec = "gpt2-small-res-jb:blocks.3.hook_resid_pre"
    hub.put_saelens("gpt2-small-res-jb", "blocks.3.hook_resid_pre", "blocks.3.hook_resid_pre",
                    norm="layer_norm")
    assert _cli(tmp_path, "--model", "gpt2", "--saes", spec) == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert spec in error and "normalize_activations='layer_norm'" in error

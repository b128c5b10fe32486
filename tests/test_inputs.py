"""Real SAE folders and real mistakes (issue 17, items 3-6, 9-11): every case refused before any
work with exit 2 and one line naming the SAE or key, or evaluated right."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch

from csae_bench.errors import BadInputError, CsaeBenchError, JobFailedError, SaeMismatchError
from csae_bench.run import EXIT_USAGE, guarded, main

pytestmark = pytest.mark.usefixtures("one_thread")

GEMMA = dict(d_in=640, d_sae=256, hook="blocks.6.hook_resid_post", model="google/gemma-3-270m")
TINY = dict(d_in=64, d_sae=32, hook="blocks.2.hook_resid_post", model="tiny")  # helpers


def write_sae(folder: Path, d_in, d_sae, hook, model, normalize="none", seed=0) -> Path:
    """A random-weight SAELens 6 ``standard`` SAE folder."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, normalize_activations=normalize)
    cfg.metadata = SAEMetadata(model_name=model, hook_name=hook, context_size=32, prepend_bos=True)
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    sae.save_model(str(folder))
    return folder


def write_legacy_sae(folder: Path, d_in, d_sae, hook, model, normalize=False) -> Path:
    """A pre-6 SAELens folder: ``hook_point`` / ``hook_point_layer``, boolean normalization."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(1)
    W_dec = torch.randn(d_sae, d_in, generator=gen) / d_in**0.5
    save_file(
        {"W_enc": W_dec.T.contiguous(), "W_dec": W_dec, "b_enc": torch.randn(d_sae, generator=gen) * 0.1,
         "b_dec": torch.randn(d_in, generator=gen) * 0.1},
        str(folder / "sae_weights.safetensors"),
    )
    layer = int(hook.split(".")[1])
    (folder / "cfg.json").write_text(json.dumps({
        "model_name": model, "hook_point": hook, "hook_point_layer": layer, "hook_point_head_index": None,
        "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu", "context_size": 32,
        "normalize_activations": normalize, "activation_fn_str": "relu", "apply_b_dec_to_input": True,
        "sae_lens_training_version": "3.12.0",
    }))
    return folder


def run_tiny(tmp_path: Path, caplog, saes: Path | None = None, **overrides) -> int:
    """The CLI's guarded run on the tiny model (helpers); returns the exit code."""
    from helpers import tiny_resources, tiny_run_config

    from csae_bench.run import execute

    cfg = tiny_run_config(tmp_path / "out", saes=str(saes) if saes else None, **overrides)
    caplog.set_level(logging.INFO)
    return guarded(execute, cfg, tiny_resources(cfg), plots=False)


def error_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def assert_refused(caplog, tmp_path: Path, *named: str) -> None:
    """Exit-2 contract: one error line naming everything in ``named``, no traceback, no resume
    advice, no result written."""
    errors = error_lines(caplog)
    assert len(errors) == 1, [r.getMessage() for r in errors]
    msg = errors[0].getMessage()
    assert "\n" not in msg and errors[0].exc_info is None
    assert "re-run" not in msg
    for n in named:
        assert n in msg, (n, msg)
    assert not list((tmp_path / "out").rglob("*_eval_results.json"))


# ---------------------------------------------------------------- the error base


def test_every_error_class_has_one_of_the_two_bases():
    """Every exception class defined anywhere in the package is bad input (exit 2) or a failed job
    (exit 1), never both and never neither: found by walking the package, not from a list."""
    import importlib
    import inspect
    import pkgutil

    import csae_bench
    from csae_bench import data, suite

    found = []
    for info in pkgutil.walk_packages(csae_bench.__path__, "csae_bench."):
        if info.name.endswith("__main__"):
            continue  # importing it runs the CLI
        module = importlib.import_module(info.name)
        found += [c for _, c in inspect.getmembers(module, inspect.isclass)
                  if issubclass(c, Exception) and c.__module__ == info.name]
    assert len(found) >= 15, [c.__name__ for c in found]
    for c in found:
        assert issubclass(c, CsaeBenchError), f"{c.__module__}.{c.__name__} has no csae_bench base"
        assert issubclass(c, BadInputError) != issubclass(c, JobFailedError) or c in (
            CsaeBenchError, BadInputError, JobFailedError), c
    assert issubclass(suite.SuiteError, ValueError) and issubclass(data.DataError, RuntimeError)


def test_guarded_maps_by_base_class(caplog):
    from csae_bench.run import EXIT_FAILED

    class NewBadInput(BadInputError):
        pass

    class NewJobFailure(JobFailedError):
        pass

    def raise_(err):
        raise err

    assert guarded(raise_, NewBadInput("fix X")) == EXIT_USAGE
    assert guarded(raise_, NewJobFailure("job Y broke")) == EXIT_FAILED
    assert guarded(lambda: None) == 0


# ---------------------------------------------------------------- item 3: colliding ids


def test_colliding_sae_ids_are_refused_naming_both_folders(tmp_path, caplog):
    from csae_bench.pipeline import find_saes

    saes = tmp_path / "saes"
    write_sae(saes / "a" / "b", **GEMMA)
    write_sae(saes / "a_b", **GEMMA)
    with pytest.raises(SaeMismatchError, match="'a_b'"):
        find_saes(saes)
    tiny = tmp_path / "tiny_saes"
    write_sae(tiny / "a" / "b", **TINY)
    write_sae(tiny / "a_b", **TINY)
    assert run_tiny(tmp_path, caplog, saes=tiny) == EXIT_USAGE
    assert_refused(caplog, tmp_path, str(tiny / "a_b"), str(tiny / "a" / "b"))


def test_two_jobs_writing_one_file_are_refused(tmp_path):
    """The whole kind: any plan where two jobs share an output (the second would be skipped)."""
    from helpers import tiny_resources, tiny_run_config

    from csae_bench.pipeline import plan, run_jobs
    from csae_bench.suite import SuiteError

    f1 = write_sae(tmp_path / "one", **TINY)
    f2 = write_sae(tmp_path / "two", **TINY)
    cfg = tiny_run_config(tmp_path / "out", saes=str(tmp_path))
    jobs = plan(cfg, TINY["hook"], [("same", f1, TINY["hook"]), ("same", f2, TINY["hook"])])
    with pytest.raises(SuiteError, match="would both write"):
        run_jobs(jobs, tiny_resources(cfg))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- item 4: normalization


@pytest.mark.parametrize("mode", ["expected_average_only_in", "covariance_whitening"])
def test_normalization_inference_would_skip_is_refused(tmp_path, caplog, mode):
    from csae_bench.pipeline import load_sae

    folder = write_sae(tmp_path / "gemma", **GEMMA, normalize=mode)
    with pytest.raises(SaeMismatchError, match=f"normalize_activations='{mode}'.*Fold the normalization"):
        load_sae(folder)
    saes = tmp_path / "saes"
    write_sae(saes / "norm", **TINY, normalize=mode)
    assert run_tiny(tmp_path, caplog, saes=saes) == EXIT_USAGE
    assert_refused(caplog, tmp_path, "SAE norm", mode, "fold_activation_norm_scaling_factor")


def test_legacy_boolean_normalization_is_refused_too(tmp_path):
    from csae_bench.pipeline import load_sae

    folder = write_legacy_sae(tmp_path / "old", **GEMMA, normalize=True)
    with pytest.raises(SaeMismatchError, match="expected_average_only_in"):
        load_sae(folder)


@pytest.mark.parametrize("mode", ["none", "constant_norm_rescale", "layer_norm"])
def test_normalization_saelens_applies_is_evaluated_as_saelens_does(tmp_path, mode):
    from sae_lens import SAE

    from csae_bench.pipeline import load_sae

    folder = write_sae(tmp_path / "gemma", **GEMMA, normalize=mode)
    x = torch.randn(16, 640, generator=torch.Generator().manual_seed(0)) * 30 + 5
    ours = load_sae(folder)
    ref = SAE.load_from_disk(str(folder))
    with torch.no_grad():
        torch.testing.assert_close(ours.decode(ours.encode(x)), ref(x), rtol=1e-4, atol=1e-3)
        if mode != "none":  # the normalization changes the output: it was not skipped
            plain = write_sae(tmp_path / "plain", **GEMMA)
            assert not torch.allclose(SAE.load_from_disk(str(plain))(x), ref(x), atol=1e-2)


def test_training_snapshots_inside_an_sae_folder_are_not_evaluated_as_saes(tmp_path, caplog):
    from csae_bench.pipeline import find_saes

    saes = tmp_path / "saes"
    topk = write_sae(saes / "topk", **GEMMA)
    snap = write_sae(topk / "snapshots" / "tokens_000000020480", **GEMMA)
    other = write_sae(saes / "snapshots" / "x", **GEMMA)  # a folder named so, not inside an SAE
    with caplog.at_level("INFO"):
        found = find_saes(saes)
    assert [f for _, f, _ in found] == [other, topk]
    assert "Skipping 1 training snapshots" in caplog.text
    assert [f for _, f, _ in find_saes(topk)] == [topk]  # an SAE folder: itself, not its snapshots
    assert [f for _, f, _ in find_saes(topk / "snapshots")] == [snap]  # asked for: evaluated


# ---------------------------------------------------------------- item 5: pre-6 configs


def test_pre6_hook_point_config_is_read_as_saelens_reads_it(tmp_path):
    from csae_bench.architectures.loading import read_sae_config
    from csae_bench.pipeline import find_saes, load_sae

    saes = tmp_path / "saes"
    folder = write_legacy_sae(saes / "old", **GEMMA)
    assert find_saes(saes) == [("old", folder, "blocks.6.hook_resid_post")]
    cfg = read_sae_config(folder)
    assert (cfg.d_in, cfg.d_sae, cfg.normalize_activations) == (640, 256, "none")
    assert cfg.metadata.model_name == "google/gemma-3-270m"
    sae = load_sae(folder)
    from safetensors.torch import load_file

    w = load_file(str(folder / "sae_weights.safetensors"))
    x = torch.randn(8, 640, generator=torch.Generator().manual_seed(2))
    expected = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) @ w["W_dec"] + w["b_dec"]
    with torch.no_grad():
        torch.testing.assert_close(sae.decode(sae.encode(x)), expected, rtol=1e-4, atol=1e-4)


def test_pre6_folder_is_evaluated_end_to_end(tmp_path, caplog):
    saes = tmp_path / "saes"
    write_legacy_sae(saes / "old", **TINY)
    assert run_tiny(tmp_path, caplog, saes=saes) == 0
    (result,) = (tmp_path / "out" / "eval_results" / "core").glob("*_eval_results.json")
    data = json.loads(result.read_text())
    assert data["sae_lens_id"] == "old"
    assert data["sae_cfg_dict"]["hook_name"] == TINY["hook"]


# ---------------------------------------------------------------- item 6: core metric families


def _compute_flags() -> list[str]:
    from sae_bench.evals.core.eval_config import CoreEvalConfig

    return [f.name for f in dataclasses.fields(CoreEvalConfig) if f.name.startswith("compute_")]


@pytest.mark.parametrize("flag", _compute_flags())
def test_disabling_a_required_core_metric_family_is_refused_up_front(tmp_path, caplog, flag):
    suite = tmp_path / "suite.toml"
    suite.write_text(f'[run]\nevals = ["core"]\n\n[evals.core]\n{flag} = false\n')
    out = tmp_path / "out"
    assert main(["--suite", str(suite), "--out", str(out)]) == EXIT_USAGE
    (err,) = error_lines(caplog)
    assert f"[evals.core] {flag} = false" in err.getMessage() and err.exc_info is None
    assert not out.exists()  # rejected before any work


def test_core_flags_left_on_are_accepted():
    from csae_bench.evals.core.main import check_core_overrides

    check_core_overrides({flag: True for flag in _compute_flags()} | {"batch_size_prompts": 4})


# ---------------------------------------------------------------- item 9: SAE vs model


@pytest.mark.parametrize(("overrides", "evals", "message"), [
    (dict(d_in=768), ["core"], "SAE bad: d_in is 768 but the model's d_model is 64"),
    (dict(hook="blocks.9.hook_resid_post"), ["core"], "layer 9 but the model has layers 0..3"),
    (dict(hook="blocks.2.hook_resid_pre"), ["nces"], "eval nces does not support hook_resid_pre"),
    (dict(hook="blocks.2.hook_mlp_out"), ["csae_probing"], "does not support hook_mlp_out"),
    (dict(hook="blocks.2.hook_nonsense"), ["core"], "the model has no hook blocks.2.hook_nonsense"),
    (dict(model="gpt2"), ["core"], "trained on gpt2, but the run's model is google/gemma-3-270m"),
])
def test_sae_that_does_not_fit_the_model_is_refused(tiny_model, overrides, evals, message):
    from csae_bench.architectures.loading import check_sae_fits

    sae = {**TINY, "model": "google/gemma-3-270m", **overrides}
    with pytest.raises(SaeMismatchError, match=message):
        check_sae_fits("bad", sae["d_in"], sae["hook"], tiny_model, sae_model_name=sae["model"],
                       run_model_name="google/gemma-3-270m", evals=evals)


def test_same_family_other_variant_warns_and_resid_pre_fits_core(tiny_model):
    from csae_bench.architectures.loading import check_sae_fits

    warnings = check_sae_fits("ok", 64, "blocks.2.hook_resid_pre", tiny_model,
                              sae_model_name="google/gemma-3-270m-it",
                              run_model_name="google/gemma-3-270m", evals=["core", "csae_probing"])
    assert warnings == ["SAE ok was trained on google/gemma-3-270m-it; evaluating it on "
                        "google/gemma-3-270m (same family, another variant)."]
    assert check_sae_fits("ok", 64, TINY["hook"], tiny_model, sae_model_name="tiny",
                          run_model_name="tiny", evals=["core", "nces", "csae_probing"]) == []


def test_nces_width_check_is_the_same_check(tiny_model):
    from csae_bench.architectures.loading import check_sae_fits
    from csae_bench.interventions import InterventionError
    from csae_bench.interventions.engine import check_sae_matches

    class Wide:
        W_dec = torch.zeros(8, 768)

    with pytest.raises(SaeMismatchError) as shared:
        check_sae_fits("x", 768, TINY["hook"], tiny_model)
    with pytest.raises(InterventionError) as nces:
        check_sae_matches(Wide(), tiny_model, TINY["hook"], name="x")
    assert str(nces.value) == str(shared.value)


def test_wrong_width_sae_exits_2_before_any_eval(tmp_path, caplog):
    saes = tmp_path / "saes"
    write_sae(saes / "wide", **{**TINY, "d_in": 768})
    assert run_tiny(tmp_path, caplog, saes=saes) == EXIT_USAGE
    assert_refused(caplog, tmp_path, "SAE wide", "d_in is 768", "d_model is 64")


# ---------------------------------------------------------------- item 10: bad input in a job


def test_bad_corpus_found_inside_a_job_exits_2_without_traceback(tmp_path, caplog):
    from helpers import tiny_model, tiny_run_config

    from csae_bench.data import load_tokens
    from csae_bench.pipeline import Resources
    from csae_bench.run import execute

    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("Caf\xe9 cr\xe8me br\xfbl\xe9e, na\xefve fa\xe7ade.\n".encode("latin-1"))
    cfg = tiny_run_config(tmp_path / "out", corpus=str(corpus))

    def real_corpus(model, cfg, split, n_contexts, seed):  # the real reader; no tokenizer needed
        return load_tokens(None, corpus=cfg.corpus, split=split, context_size=cfg.context_size,
                           n_contexts=n_contexts, seed=seed)

    res = Resources(cfg, model_loader=lambda name, device, dtype: tiny_model(), token_loader=real_corpus)
    caplog.set_level(logging.INFO)
    assert guarded(execute, cfg, res, plots=False) == EXIT_USAGE
    assert_refused(caplog, tmp_path, str(corpus), "is not UTF-8")


# ---------------------------------------------------------------- item 11: archive extraction


def test_corpus_archive_cannot_write_outside_its_folder_or_follow_links(tmp_path):
    import io
    import tarfile

    from csae_bench.data import VADER_SOURCES, DataError
    from csae_bench.data.vader import _extract_vader

    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for i, name in enumerate(VADER_SOURCES.values()):
            if i == 0:  # a link to a file outside the archive
                info = tarfile.TarInfo(f"data/{name}")
                info.type, info.linkname = tarfile.SYMTYPE, str(tmp_path / "secret.txt")
                tar.addfile(info)
                continue
            data = b"id_1\t1.0\tgood text\n"
            info = tarfile.TarInfo(f"../../escape/{name}" if i == 1 else f"data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    sdist = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(sdist, "w:gz") as outer:
        info = tarfile.TarInfo("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(inner.getvalue())
        outer.addfile(info, io.BytesIO(inner.getvalue()))
    (tmp_path / "secret.txt").write_text("not corpus")
    out = tmp_path / "x" / "y" / "out"
    out.parent.mkdir(parents=True)
    with pytest.raises(DataError, match="lacks the VADER ground-truth files"):
        _extract_vader(sdist, out)
    names = list(VADER_SOURCES.values())
    assert sorted(p.name for p in out.iterdir()) == sorted(names[1:])  # the link was not followed
    assert not list(tmp_path.rglob("escape"))  # the ../ member landed inside out, by base name


def test_second_saes_folder_with_the_same_name_is_not_skipped_as_done(tmp_path, caplog):
    """x/saes and y/saes share a release id: the second run into the same --out is refused, not
    answered with the first one's results."""
    for parent in ("x", "y"):
        write_sae(tmp_path / parent / "saes" / "s", **TINY, seed=parent == "y")
    assert run_tiny(tmp_path, caplog, saes=tmp_path / "x" / "saes") == 0
    first = sorted((tmp_path / "out").rglob("*_eval_results.json"))
    assert len(first) == 1
    caplog.clear()
    assert run_tiny(tmp_path, caplog, saes=tmp_path / "y" / "saes") == EXIT_USAGE
    (err,) = error_lines(caplog)
    assert str(tmp_path / "x" / "saes") in err.getMessage() and "use another --out" in err.getMessage()
    assert "skip" not in caplog.text


def test_trained_manifest_cannot_point_outside_its_folder(tmp_path):
    from csae_bench.pipeline import HarvestJob, TrainJob

    write_sae(tmp_path / "elsewhere" / "relu", **TINY)
    saes = tmp_path / "run" / "saes"
    saes.mkdir(parents=True)
    (saes / "trained.json").write_text(json.dumps({"saes": {"relu": "../../elsewhere/relu"}}))
    job = TrainJob(HarvestJob(TINY["hook"], 0, tmp_path / "a.safetensors"), None, ["relu"], {}, saes)
    assert job.finished() == {} and not job.done()
    write_sae(saes / "relu", **TINY)
    (saes / "trained.json").write_text(json.dumps({"saes": {"relu": "relu"}}))
    assert job.finished() == {"relu": saes / "relu"} and job.done()


def test_invalid_eval_setting_is_refused_before_any_work(tmp_path, caplog):
    suite = tmp_path / "suite.toml"
    suite.write_text('[run]\nevals = ["nces"]\n\n[evals.nces]\nn_bootstrap = 3\n')
    assert main(["--suite", str(suite), "--out", str(tmp_path / "out")]) == EXIT_USAGE
    (err,) = error_lines(caplog)
    assert err.getMessage() == "[evals.nces] is invalid: n_bootstrap=3 is too few; use at least 10."
    assert not (tmp_path / "out").exists()


def test_invalid_eval_setting_found_inside_a_job_exits_2(tmp_path, caplog):
    """The config a job builds (run values + suite values) is checked again; a refusal there is
    bad input too (exit 2, no resume advice), not a job failure. (``execute`` is called without
    the CLI's up-front suite checks, so the job is where it is found.)"""
    code = run_tiny(tmp_path, caplog, evals=["nces"], eval_settings={"nces": {"n_bootstrap": 3}})
    assert code == EXIT_USAGE
    assert_refused(caplog, tmp_path, "[evals.nces] is invalid: n_bootstrap=3 is too few")


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--device", "gpu", "is not a torch device"),
    ("--corpus", "/no/such/corpus.txt", "no such file or folder"),
    ("--layer", "18", "--layer 18 is out of range: embedded has layers 0..17"),
])
def test_bad_device_or_corpus_path_fails_before_any_model_loads(flag, value, says, caplog):
    assert main([flag, value, "--out", "/nonexistent/never-written"]) == EXIT_USAGE
    assert says in caplog.text and "Loading model" not in caplog.text


def test_cuda_is_refused_where_torch_has_none(monkeypatch):
    import torch

    from csae_bench.suite import SuiteError
    from csae_bench.suite_checks import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SuiteError, match="no CUDA GPU here; use --device cpu"):
        check_device("cuda")
    check_device("cuda:1", on_this_machine=False)  # Ray workers may have the GPU the driver lacks
    check_device("cpu")


def test_layer_check_reads_a_local_model_config_and_skips_unknown_ones(tmp_path, monkeypatch):
    from csae_bench import models
    from csae_bench.suite import RunConfig, SuiteError
    from csae_bench.suite_checks import check_layer

    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 4}}))
    assert models.model_n_layers(str(tmp_path)) == 4
    check_layer(RunConfig(model=str(tmp_path), layer=3))
    with pytest.raises(SuiteError, match="--layer 4 is out of range: .* has layers 0..3"):
        check_layer(RunConfig(model=str(tmp_path), layer=4))
    monkeypatch.setattr(models, "model_n_layers", lambda name: None)  # needs the network: unchecked
    check_layer(RunConfig(model="gpt2", layer=40))

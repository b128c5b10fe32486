"""The causal probing eval (csae_probing) on tiny fixtures: selection finds planted informative
features; a planted causal feature passes verification and a planted non-causal one fails; bad input
fails with clear errors; the output validates against SAEBench's format."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from sae_bench.custom_saes.relu_sae import ReluSAE

from csae_bench.data import DataError
from csae_bench.evals.probing import ProbingEvalConfig, ProbingEvalOutput
from csae_bench.evals.probing import model_io as io
from csae_bench.evals.probing.probe import k_sparse_probes, select_top_k
from csae_bench.evals.probing.run import evaluate_task, prepare_task, run
from csae_bench.evals.probing.tasks import ProbingTask, load_task, register_task, split_task
from csae_bench.evals.probing.verify import compare_effects
from csae_bench.evals.registry import EvalContext, get_eval

HOOK = "blocks.1.hook_resid_post"


def _word_texts(n_per_class: int, seed: int) -> tuple[list[str], list[int]]:
    """A random prefix of words, then a last word that carries the label."""
    rng = random.Random(seed)
    texts, labels = [], []
    for label, last in ((0, "w1"), (1, "w2")):
        for _ in range(n_per_class):
            prefix = " ".join(f"w{rng.randrange(10, 400)}" for _ in range(rng.randrange(3, 7)))
            texts.append(f"{prefix} {last}")
            labels.append(label)
    return texts, labels


def _answers_the_model_gives(model, texts, labels) -> tuple[str, str]:
    """The two tokens whose logits differ most between the classes at the last position, so the
    random model 'solves' the task."""
    batch = io.tokenize(model, texts)
    with torch.no_grad():
        logits = model(batch.tokens_BT)[torch.arange(len(texts)), batch.last_B]
    y = torch.tensor(labels)
    diff = logits[y == 1].mean(0) - logits[y == 0].mean(0)
    diff[:3] = 0  # not BOS / pad / eos
    return f"w{int(diff.argmin()) - 3}", f"w{int(diff.argmax()) - 3}"


@pytest.fixture(scope="module")
def word_task(word_model) -> ProbingTask:
    texts, labels = _word_texts(40, seed=0)
    answers = _answers_the_model_gives(word_model, texts, labels)
    return ProbingTask("last_word", tuple(texts), tuple(labels), ("w1", "w2"), "last", answers)


def _cfg(**kw) -> ProbingEvalConfig:
    base = dict(tasks=["last_word"], examples_per_class=40, ks=[1, 2, 5], verify_k=1, n_random_sets=4,
                max_verify_examples=32, n_bootstrap=300, batch_size=12, interventions=["zero", "clamp:2"])
    return ProbingEvalConfig(**{**base, **kw})


def _planted_sae(model, task: ProbingTask, causal: bool, d_sae: int = 256, seed: int = 0) -> ReluSAE:
    """Feature 7 reads the label direction at the last token. Its decoder is the residual direction
    the logit difference is most sensitive to (``causal``) or the one it is least sensitive to.
    The other features are random and sparse, with the same maximum activation as feature 7."""
    gen = torch.Generator().manual_seed(seed)
    batch = io.tokenize(model, task.texts)
    y = torch.tensor(task.labels)
    resid = io.residual_at(model, HOOK, batch).detach().requires_grad_(True)
    final = model(resid, start_at_layer=2, stop_at_layer=model.cfg.n_layers)
    ids = torch.tensor([io.single_token_id(model, a) for a in task.answers])
    logits = io.answer_logits(model, final[torch.arange(len(y)), batch.last_B], ids)
    (grads,) = torch.autograd.grad((logits[:, 1] - logits[:, 0]).sum(), resid)
    G = grads[torch.arange(len(y)), batch.last_B]  # per-example gradients at the read position
    H = resid.detach()[torch.arange(len(y)), batch.last_B]
    if causal:  # the direction the logit difference is most sensitive to
        _, _, Vh = torch.linalg.svd(G, full_matrices=False)
        d = Vh[0] * torch.sign(Vh[0] @ G.mean(0))
    else:  # least sensitive, and away from the residuals themselves (RMS norms hide those from G)
        rows = torch.cat([G / G.norm(dim=1, keepdim=True), H / H.norm(dim=1, keepdim=True)])
        d = torch.linalg.svd(rows, full_matrices=False)[2][-1]
    u = H[y == 1].mean(0) - H[y == 0].mean(0)
    u_hat = u / u.norm()
    mid = (H[y == 1].mean(0) + H[y == 0].mean(0)) / 2
    # scale: on label-1 texts the feature is about a quarter of the residual's norm
    alpha = 0.25 * H.norm(dim=1).mean() / (u.norm() / 2)

    D = model.cfg.d_model
    sae = ReluSAE(D, d_sae, "tiny", 1, torch.device("cpu"), torch.float32, hook_name=HOOK)
    with torch.no_grad():
        h_scale = H.norm(dim=1).mean()
        W_enc = torch.randn(D, d_sae, generator=gen) / H.std(0).norm()
        W_dec = torch.randn(d_sae, D, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        sae.W_enc.copy_(W_enc * 0.05 * h_scale)
        sae.b_enc.copy_(torch.full((d_sae,), -0.05 * h_scale) - (H.mean(0) @ sae.W_enc))
        sae.W_enc[:, 7] = alpha * u_hat
        sae.b_enc[7] = -alpha * (u_hat @ mid)
        W_dec[7] = d
        sae.W_dec.copy_(W_dec)
        # random features as strong as the planted one, so the control is a fair comparison
        max_F = sae.encode(H).max(0).values
        scale_F = torch.where(max_F > 0, max_F[7] / max_F.clamp(min=1e-8), torch.ones_like(max_F))
        sae.W_enc.mul_(scale_F)
        sae.b_enc.mul_(scale_F)
    return sae


# ---------------------------------------------------------------- selection and probes


def test_selection_picks_planted_informative_features():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (200,), generator=gen)
    acts = torch.rand(200, 128, generator=gen) * (torch.rand(200, 128, generator=gen) < 0.2)
    acts[:, 11] += 3.0 * y  # fires for label 1
    acts[:, 40] += 2.0 * (1 - y)  # fires for label 0
    top = select_top_k(acts[:150], y[:150], 2)
    assert top.tolist() == [11, 40]
    results = {r.k: r for r in k_sparse_probes(acts[:150], y[:150], acts[150:], y[150:], [1, 2, 5], full=True)}
    assert results[1].indices == (11,) and results[1].test_accuracy > 0.95
    assert results[None].test_accuracy > 0.9
    # without a planted feature, a top-1 probe is near chance
    noise = acts.clone()
    noise[:, [11, 40]] = torch.rand(200, 2, generator=gen)
    (r1,) = k_sparse_probes(noise[:150], y[:150], noise[150:], y[150:], [1])
    assert r1.test_accuracy < 0.75


def test_compare_effects_statistic():
    gen = torch.Generator().manual_seed(0)
    rand = torch.randn(4, 50, generator=gen) * 0.1
    clean = torch.ones(50)
    big = compare_effects("zero", 1.0 + 0.1 * torch.randn(50, generator=gen), rand, clean, 300, 0.95, 0, 0.05)
    assert big.passed and big.ci_low > 0.5 and big.relative_effect == pytest.approx(big.difference)
    null = compare_effects("zero", rand[0].clone(), rand[1:], clean, 300, 0.95, 0, 0.05)
    assert not null.passed and null.ci_low < 0 < null.ci_high


# ---------------------------------------------------------------- causal verification


@pytest.fixture(scope="module")
def prepared(word_model, word_task):
    return prepare_task(word_model, HOOK, word_task, _cfg())


@pytest.fixture(scope="module")
def causal_sae(word_model, word_task):
    return _planted_sae(word_model, word_task, causal=True)


def test_the_tiny_model_solves_the_planted_task(prepared):
    assert prepared.clean_accuracy >= 0.9
    assert prepared.behaviour.kind == "logit_diff"


@pytest.mark.parametrize("causal", [True, False])
def test_planted_causal_feature_passes_and_non_causal_fails(word_model, word_task, prepared, causal_sae, causal):
    sae = causal_sae if causal else _planted_sae(word_model, word_task, causal=False)
    cfg = _cfg()
    detail = evaluate_task(word_model, sae, prepared, cfg)
    probe1 = next(p for p in detail.probes if p.k == 1)
    assert probe1.sae_features == [7], "selection must find the planted feature"
    assert probe1.sae_test_accuracy >= 0.9
    zero = next(v for v in detail.verification if v.intervention == "zero")
    clamp = next(v for v in detail.verification if v.intervention == "clamp:2")
    if causal:
        assert zero.passed and clamp.passed and detail.verified
        assert zero.relative_effect > 0.2
    else:
        assert not zero.passed and not clamp.passed and detail.verified is False
        assert abs(zero.relative_effect) < 0.2


def test_task_the_model_cannot_do_is_reported_not_judged(word_model, word_task, causal_sae):
    wrong = ProbingTask("wrong", word_task.texts, word_task.labels, word_task.label_names, "last",
                        (word_task.answers[1], word_task.answers[0]))  # answers swapped
    prep = prepare_task(word_model, HOOK, wrong, _cfg())
    assert prep.clean_accuracy < 0.2
    detail = evaluate_task(word_model, causal_sae, prep, _cfg())
    assert not detail.judged and detail.verified is None and detail.verification == []
    assert "does not do this task" in detail.note


# ---------------------------------------------------------------- the eval end to end


def test_run_writes_valid_saebench_output(word_model, word_task, causal_sae, tmp_path):
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

    from csae_bench.utils import atomic_write_text

    register_task("last_word_e2e", lambda n, seed: dataclasses.replace(word_task, name="last_word_e2e"))
    texts, labels = _word_texts(30, seed=1)
    jsonl = tmp_path / "words.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "label": ["a", "b"][y]}) for t, y in zip(texts, labels)))
    ctx = EvalContext(model=word_model, hook_name=HOOK, eval_tokens=torch.zeros(1, 2, dtype=torch.long))
    cfg = _cfg(tasks=["last_word_e2e", str(jsonl)], behaviour_layer_offset=2, interventions=["zero"], n_bootstrap=200)
    out = run(ctx, causal_sae, "planted", cfg)
    path = tmp_path / "out.json"
    atomic_write_text(path, out.to_json())
    validate_eval_output_format_file(str(path), ProbingEvalOutput)
    m = out.eval_result_metrics
    assert out.eval_type_id == "csae_probing"
    assert out.sae_bench_commit_hash.startswith("sae-bench==") and out.sae_cfg_dict["d_sae"] == causal_sae.cfg.d_sae
    assert m.tasks.n_tasks == 2
    by_name = {d.task_name: d for d in out.eval_result_details}
    assert by_name["last_word_e2e"].verified is True
    assert by_name[str(jsonl)].behaviour == "later_probe" and by_name[str(jsonl)].read == "mean"
    judged = [d for d in out.eval_result_details if d.judged]
    assert m.causal.fraction_tasks_verified == pytest.approx(sum(bool(d.verified) for d in judged) / len(judged))
    # the SAE-independent work is kept for the next SAE on the same model, and not reused for another
    from csae_bench.evals.probing.run import clear_cache, prepared_task

    assert prepared_task(word_model, HOOK, "last_word_e2e", cfg) is prepared_task(word_model, HOOK, "last_word_e2e", cfg)
    clear_cache()


def test_schema_file_is_generated_and_current(tmp_path):
    from csae_bench.evals.probing.output import SCHEMA_PATH, generate_schema

    fresh = generate_schema(tmp_path / "schema.json")
    assert json.loads(fresh.read_text()) == json.loads(SCHEMA_PATH.read_text()), (
        f"{SCHEMA_PATH.name} is stale: run csae_bench.evals.probing.output.generate_schema()")


def test_registered_with_the_runner():
    spec = get_eval("csae_probing")
    assert spec.output_cls is ProbingEvalOutput and "causal.fraction_tasks_verified" in spec.headline


# ---------------------------------------------------------------- bad input


def test_one_class_task_is_rejected():
    with pytest.raises(DataError, match="only one class"):
        ProbingTask("one", ("a", "b"), (1, 1), ("x", "y"), "last", (" a", " b"))


def test_too_few_examples_for_split():
    task = ProbingTask("small", tuple("abcdefgh"), (0, 1) * 4, ("x", "y"), "last")
    with pytest.raises(DataError, match="too few for a split"):
        split_task(task, test_fraction=0.4, seed=0)


def test_label_file_that_does_not_parse(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "a"}\nnot json\n')
    with pytest.raises(DataError, match="does not parse"):
        load_task(str(bad))


def test_multi_label_file_needs_a_positive_label(tmp_path):
    f = tmp_path / "three.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"t{i}", "label": "abc"[i % 3]}) for i in range(30)))
    with pytest.raises(DataError, match="probing task is binary"):
        load_task(str(f))
    task = load_task(f"{f}:b")
    assert task.label_names == ("not_b", "b") and task.class_counts() == (10, 10)


def test_unknown_task_and_bad_config():
    with pytest.raises(DataError, match="Unknown probing task"):
        load_task("no_such_task")
    with pytest.raises(ValueError, match="n_random_sets"):
        ProbingEvalConfig(n_random_sets=1)


def test_templated_tasks_are_deterministic_and_balanced():
    for name in ("sv_agreement", "pronoun_gender", "city_country"):
        a, b = load_task(name, 50, seed=3), load_task(name, 50, seed=3)
        assert a == b and a.class_counts() == (50, 50) and a.answers is not None
        assert load_task(name, 50, seed=4).texts != a.texts

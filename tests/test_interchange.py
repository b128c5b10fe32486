"""Interchange interventions (probing eval, ``interchange.py``) on a tiny random model: pairs are
token-aligned and differ at one position; the whole-residual ceiling flips every answer when the
answer is set by the patched position; patching nothing flips none; the brackets have dimension
k; the KV-cached patched runs equal full forward passes; the output validates."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from csae_bench.evals.probing import ProbingEvalConfig, ProbingEvalOutput
from csae_bench.evals.probing import interchange as iia
from csae_bench.evals.probing import model_io as io
from csae_bench.evals.probing.run import clear_cache, evaluate_task, prepare_task, run
from csae_bench.evals.probing.tasks import TEMPLATED, ProbingTask, load_task, register_task
from csae_bench.evals.registry import EvalContext, get_eval

pytestmark = pytest.mark.usefixtures("one_thread")

MID, LAST = "blocks.1.hook_resid_post", "blocks.3.hook_resid_post"  # the tiny model has 4 blocks


def _word_task(model, n_per_class: int = 30, label_at: int = -1) -> ProbingTask:
    """A random prefix of words with the label word (w1 / w2) at position ``label_at`` of the
    words; the counterfactual swaps it. The first candidate of every fourth text is one word
    longer (unaligned), so pairing must skip to the next."""
    rng = random.Random(0)
    texts, labels, cfs = [], [], []
    for label, (word, other) in enumerate((("w1", "w2"), ("w2", "w1"))):
        for i in range(n_per_class):
            words = [f"w{rng.randrange(10, 400)}" for _ in range(rng.randrange(4, 7))]
            pos = label_at % (len(words) + 1)
            base, cf = [*words], [*words]
            base.insert(pos, word)
            cf.insert(pos, other)
            cands = (" ".join(cf),) if i % 4 else (" ".join([*cf, "w9"]), " ".join(cf))
            texts.append(" ".join(base))
            labels.append(label)
            cfs.append(cands)
    batch = io.tokenize(model, texts)
    with torch.no_grad():
        logits = model(batch.tokens_BT)[torch.arange(len(texts)), batch.last_B]
    y = torch.tensor(labels)
    diff = logits[y == 1].mean(0) - logits[y == 0].mean(0)
    diff[:3] = 0  # not BOS / pad / eos: the two answers the model gives most differently
    answers = (f"w{int(diff.argmin()) - 3}", f"w{int(diff.argmax()) - 3}")
    return ProbingTask(
        "word_pairs", tuple(texts), tuple(labels), ("w1", "w2"), "last", answers, counterfactuals=tuple(cfs)
    )


def _cfg(**kw) -> ProbingEvalConfig:
    base = dict(tasks=["word_pairs"], examples_per_class=30, ks=[1, 2, 5], verify_k=1, n_random_sets=2,
                max_verify_examples=32, n_bootstrap=100, batch_size=16, interventions=["zero"])
    return ProbingEvalConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def word_task(word_model):
    return _word_task(word_model)


def _pairs(model, task, hook, **kw) -> iia.Pairs:
    prep = prepare_task(model, hook, task, _cfg(**kw))
    assert prep.pairs is not None
    return prep.pairs


def test_templated_counterfactuals_swap_one_slot():
    for name in TEMPLATED:
        task = load_task(name, 20, seed=0)
        assert task.has_pairs and len(task.counterfactuals) == len(task.texts)
        for text, cands in zip(task.texts, task.counterfactuals):
            for cf in cands:
                a, b = text.split(), cf.split()
                assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1, (text, cf)
    sv = load_task("sv_agreement", 20, seed=0)
    for text, y, (cf,) in zip(sv.texts, sv.labels, sv.counterfactuals):
        subj = next(w for w, v in zip(text.split(), cf.split()) if w != v)
        swapped = next(v for w, v in zip(text.split(), cf.split()) if w != v)
        singular, plural = (subj, swapped) if y == 0 else (swapped, subj)
        assert singular + "s" == plural  # the subject's number, and nothing else


def test_pairs_are_token_aligned_and_differ_at_one_position(word_model, word_task):
    rows = list(range(len(word_task.texts)))
    found, unaligned = iia.build_pairs(word_model, word_task, rows, max_tokens=40)
    assert unaligned == 0 and len(found) == len(rows)  # the longer first candidates were skipped
    for row, cf, pos in found:
        base_ids = io.tokenize(word_model, [word_task.texts[row]]).tokens_BT[0]
        cf_ids = io.tokenize(word_model, [cf]).tokens_BT[0]
        assert len(base_ids) == len(cf_ids)
        assert (base_ids != cf_ids).nonzero().flatten().tolist() == [pos] == [len(base_ids) - 1]
    only_bad = dataclasses.replace(word_task, counterfactuals=tuple((c[0] + " w9",) for c in word_task.counterfactuals))
    assert iia.build_pairs(word_model, only_bad, rows[:5], 40) == ([], 5)
    assert iia.align(torch.tensor([2, 5, 6]), torch.tensor([2, 7, 8])) is None  # two positions


@pytest.mark.parametrize("position", ["last", "varied"])
def test_ceiling_is_one_when_the_position_sets_the_answer(word_model, word_task, position):
    # after the last block the answer is a function of the patched position's residual alone
    pairs = _pairs(word_model, word_task, LAST, interchange_position=position)
    assert pairs.n_candidates > 0 and len(pairs.rows) >= 0.8 * pairs.n_candidates
    assert pairs.ceiling.iia == 1.0 and pairs.ceiling.n == len(pairs.rows)
    assert pairs.ceiling.ci_low < 1.0 == pytest.approx(pairs.ceiling.ci_high)


def test_patching_nothing_flips_nothing(word_model, word_task):
    from helpers import random_sae

    pairs = _pairs(word_model, word_task, MID)
    zero = torch.zeros(2, len(pairs.rows), word_model.cfg.d_model)
    assert not iia.patched_flips(word_model, pairs, zero, _cfg()).any()
    no_features = iia.sae_delta(random_sae(), pairs, torch.tensor([], dtype=torch.long))
    assert iia.estimate(iia.patched_flips(word_model, pairs, no_features[None], _cfg())).iia == 0.0


def test_cached_patched_runs_equal_full_forward_passes(word_model, word_task):
    pairs = _pairs(word_model, word_task, MID)
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(3, len(pairs.rows), word_model.cfg.d_model, generator=gen) * 2
    cached = iia.patched_margins(word_model, pairs, delta, batch_tokens=7)  # several passes
    by_row = io.by_row(prepare_task(word_model, MID, word_task, _cfg()).chunks)
    for c in range(3):
        for i, row in enumerate(pairs.rows):
            resid, tokens = by_row[row]
            resid = resid.clone()[None]
            resid[0, -1] += delta[c, i]
            raw = pairs.behaviour.raw(word_model, resid, io.Batch(tokens[None], torch.tensor([len(tokens)])))
            full = raw if pairs.cf_labels_N[i] == 1 else -raw
            assert float(cached[c, i]) == pytest.approx(float(full[0]), rel=1e-3, abs=1e-3)


@pytest.mark.parametrize("position", ["last", "varied"])
def test_brackets_have_dimension_k(word_model, position):
    from helpers import random_sae

    task = _word_task(word_model, label_at=1)  # the varied token is the second word
    pairs = _pairs(word_model, task, MID, interchange_position=position)
    Vh = iia.principal_directions(pairs)
    sae = random_sae("topk", seed=1)
    for k in (1, 2, 5):
        resid, pca, dims = iia.bracket_deltas(pairs, k, Vh)
        assert len(set(dims)) == k and set(resid.abs().sum(0).nonzero().flatten().tolist()) <= set(dims)
        assert torch.linalg.matrix_rank(pca.double(), atol=1e-4) == k
        idx = torch.arange(k) * 3
        assert torch.linalg.matrix_rank(iia.sae_delta(sae, pairs, idx).double(), atol=1e-4) <= k
    detail = iia.evaluate(word_model, sae, pairs, None, _cfg(interchange_position=position))
    assert detail.position == position and [e.k for e in detail.per_k] == [1, 2, 5]
    for e in detail.per_k:
        assert len(e.sae_features) == e.k and len(e.resid_dims) == e.k
        assert len(e.random_per_set) == 3 and e.random.n == 3 * detail.n_pairs
        assert e.sae.n == e.pca.n == detail.n_pairs and 0 <= e.sae.ci_low <= e.sae.iia <= e.sae.ci_high
    expected_pos = 1 + 1 if position == "varied" else None  # BOS, then the second word
    if expected_pos is not None:
        found, _ = iia.build_pairs(word_model, task, pairs.rows, 40)
        assert {p for _, _, p in found} == {expected_pos}


def test_run_output_validates_and_reports_iia(word_model, word_task, tmp_path):
    from helpers import random_sae
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

    from csae_bench.utils import atomic_write_text

    register_task("word_pairs_iia", lambda n, seed: dataclasses.replace(word_task, name="word_pairs_iia"))
    ctx = EvalContext(model=word_model, hook_name=MID, eval_tokens=torch.zeros(1, 2, dtype=torch.long))
    sae = random_sae("topk", seed=1)
    out = run(ctx, sae, "random", _cfg(tasks=["word_pairs_iia"], interchange_position="last"))
    path = tmp_path / "out.json"
    atomic_write_text(path, out.to_json())
    validate_eval_output_format_file(str(path), ProbingEvalOutput)
    (detail,) = out.eval_result_details
    m = out.eval_result_metrics.interchange
    assert detail.judged and detail.interchange is not None and m.n_tasks_with_pairs == 1
    assert m.sae_iia_top_1 == detail.interchange.per_k[0].sae.iia and m.ceiling_iia == detail.interchange.ceiling.iia
    assert m.sae_iia_top_10 is None  # k = 10 not configured
    probe_features = {p.k: p.sae_features for p in detail.probes if p.k}
    # at the last token, the patched features are the probes' own
    assert all(e.sae_features == probe_features[e.k] for e in detail.interchange.per_k)
    assert "interchange.sae_iia_top_1" in get_eval("csae_probing").headline
    off = evaluate_task(word_model, sae, prepare_task(word_model, MID, word_task, _cfg(interchange=False)), _cfg())
    assert off.interchange is None
    clear_cache()


def test_config_needs_three_random_sets():
    with pytest.raises(ValueError, match="interchange_random_sets"):
        ProbingEvalConfig(interchange_random_sets=2)

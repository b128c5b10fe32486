"""Shared fixtures (built by ``helpers``) and the test tiers. Tests run offline; the embedded model
is loaded once per session.

Tiers (markers, assigned here at collection, so a new test gets one without thinking):

- ``e2e``: runs a whole suite or job through the CLI or the pipeline; marked explicitly
  (``@pytest.mark.e2e``), or uses a Ray cluster (the ``cluster`` fixture);
- ``integration``: loads the embedded Gemma-3-270M (the ``embedded_model`` fixture), or is marked
  ``@pytest.mark.integration`` where it loads it another way (through the CLI);
- ``unit``: everything else (tiny models built in the test; seconds).

``slow`` is an alias added to every ``integration`` and ``e2e`` test (``-m "not slow"`` = ``-m unit``).
``tests/test_tiers.py`` fails if a test ends up with no tier or two."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from helpers import embedded_model as load_embedded_model
from helpers import embedded_tokens, random_tokens
from helpers import tiny_model as build_tiny_model

TIERS = ("unit", "integration", "e2e")
E2E_FIXTURES = {"cluster"}
"""Fixtures that make a test end-to-end: a Ray cluster runs whole jobs on worker processes."""
INTEGRATION_FIXTURES = {"embedded_model"}
"""Fixtures that make a test an integration test: the embedded model."""
ALL_ITEMS = pytest.StashKey[list]()
"""Every collected test, before ``-m`` deselects any (for ``test_tiers.py``)."""


def tier_of(marks: set[str], fixtures: set[str]) -> set[str]:
    """The tiers of a test with these marker and fixture names: its explicit tier marks if it has
    any, else ``e2e`` / ``integration`` / ``unit`` by the fixtures it uses (in that order)."""
    explicit = marks & set(TIERS)
    if explicit:
        return explicit
    if fixtures & E2E_FIXTURES:
        return {"e2e"}
    if fixtures & INTEGRATION_FIXTURES:
        return {"integration"}
    return {"unit"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        tiers = tier_of(marks, set(item.fixturenames))
        for name in sorted(tiers - marks):
            item.add_marker(name)
        if tiers & {"integration", "e2e"}:
            item.add_marker("slow")
    config.stash[ALL_ITEMS] = list(items)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread: tiny ops on a shared 2-core machine are far
    faster that way. Opt in per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny random Gemma-like HookedTransformer (no tokenizer: feed token ids)."""
    return build_tiny_model()


@pytest.fixture(scope="session")
def tiny_tokens():
    return random_tokens(8, 32, seed=0)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A real results folder, read-only: the tiny run (2 architectures, core eval; ``helpers.run_tiny``)."""
    from helpers import run_tiny

    return run_tiny(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def embedded_model():
    """The real embedded Gemma-3-270M (converted once into the user cache, ~10 s per load)."""
    return load_embedded_model()


@pytest.fixture(scope="session")
def embedded_eval_tokens(embedded_model):
    return embedded_tokens(embedded_model, split="eval", context_size=64, n_contexts=16)


@pytest.fixture(scope="module")
def word_model():
    """The probing tests' tiny model over ``w<i>`` words (helpers.loud_word_model), per module."""
    from helpers import loud_word_model

    return loud_word_model()


@pytest.fixture(scope="session")
def word_tokenizer():
    """A real (fast) Hugging Face tokenizer over a small word vocabulary, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"word{i}" for i in range(500)] + "the a of and is to in it that was".split()
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")

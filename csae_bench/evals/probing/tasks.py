"""Probing tasks: labelled texts, where to read them, and the model behaviour the label drives.

Two families (docs/probing.md):

- **Templated** tasks the project generates itself (deterministic, seeded): the label decides the
  correct next token after the prompt (``answers[label]``), so the behaviour measure is the logit
  difference between the correct and the incorrect continuation, read at the last token.
  ``sv_agreement`` (" is" / " are" after a singular / plural subject, half of the prompts with an
  attractor noun of the other number), ``pronoun_gender`` (" he" / " she" after a first name),
  ``city_country`` (" France" / " Italy" after a city).
- **Text** tasks from the real labelled data the foundation installs (``csae_bench.data``):
  ``vader_sentiment`` (human scores split at ±margin) and ``vader_domain:<source>`` (one source of
  the four against the other three, negatives balanced as SAEBench's sparse probing does). They
  have no single next token, so they are read as the mean over the text's tokens and their
  behaviour is a logistic probe read at a later layer (see ``verify.py``). A JSONL file with
  ``text`` and ``label`` fields (exactly two labels) is a text task too.

Every task is binary (labels 0/1); :func:`split_task` makes the stratified train/test split.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from csae_bench.data import DataError, LabelledSet, load_labelled

ReadMode = Literal["last", "mean"]


@dataclass(frozen=True)
class ProbingTask:
    """A binary labelled task."""

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    """0/1 per text."""
    label_names: tuple[str, str]
    read: ReadMode
    """``last``: features at each text's last token; ``mean``: features averaged over its tokens
    (BOS excluded)."""
    answers: tuple[str, str] | None = None
    """Templated tasks: the continuation each label makes correct (``answers[label]``, one token
    each); the behaviour is ``logit(answers[label]) − logit(answers[1 − label])``. ``None``: the
    behaviour is a later-layer probe."""
    source: str = "templated"
    meta: dict = field(default_factory=dict, hash=False, compare=False)
    counterfactuals: tuple[tuple[str, ...], ...] | None = None
    """Per text, candidate counterfactual texts of the other label, best first: the same template
    with its one slot swapped (the subject's number, the name, the city). The interchange
    intervention (``interchange.py``) pairs a text with the first candidate that tokenizes to the
    same length and differs at one token. ``None``: the task has no pairs."""

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(
                f"Task {self.name!r}: {len(self.texts)} texts but {len(self.labels)} labels."
            )
        present = set(self.labels)
        if not present <= {0, 1}:
            raise DataError(f"Task {self.name!r}: labels must be 0/1, got {sorted(present)}.")
        if len(present) < 2:
            raise DataError(
                f"Task {self.name!r} has only one class ({self.label_names[next(iter(present))] if present else 'none'}); "
                "a probing task needs examples of both classes."
            )
        if self.counterfactuals is not None and len(self.counterfactuals) != len(self.texts):
            raise DataError(
                f"Task {self.name!r}: {len(self.counterfactuals)} counterfactual lists for "
                f"{len(self.texts)} texts."
            )
        if self.read not in ("last", "mean"):
            raise DataError(
                f"Task {self.name!r}: read must be 'last' or 'mean', got {self.read!r}."
            )

    @property
    def has_logit_behaviour(self) -> bool:
        return self.answers is not None

    @property
    def has_pairs(self) -> bool:
        """Counterfactual pairs can be built (a logit behaviour and candidate texts)."""
        return self.counterfactuals is not None and self.answers is not None

    def class_counts(self) -> tuple[int, int]:
        n1 = sum(self.labels)
        return len(self.labels) - n1, n1


@dataclass(frozen=True)
class TaskSplit:
    """Indices into a task's texts."""

    train: tuple[int, ...]
    test: tuple[int, ...]


def split_task(
    task: ProbingTask, test_fraction: float, seed: int, min_per_class: int = 4
) -> TaskSplit:
    """A stratified train/test split; each class needs ``min_per_class`` examples on each side."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    rng = random.Random(seed)
    train: list[int] = []
    test: list[int] = []
    for cls in (0, 1):
        idx = [i for i, y in enumerate(task.labels) if y == cls]
        rng.shuffle(idx)
        n_test = round(len(idx) * test_fraction)
        if n_test < min_per_class or len(idx) - n_test < min_per_class:
            raise DataError(
                f"Task {task.name!r}: class {task.label_names[cls]!r} has {len(idx)} examples, too few "
                f"for a split with test_fraction={test_fraction} and at least {min_per_class} per class on "
                f"each side. Give it at least {int(min_per_class / min(test_fraction, 1 - test_fraction)) + 1} "
                "examples per class or change test_fraction."
            )
        test += idx[:n_test]
        train += idx[n_test:]
    return TaskSplit(tuple(sorted(train)), tuple(sorted(test)))


# ---------------------------------------------------------------- templated generators

WORDS_PATH = Path(__file__).with_name("templated_words.json")
"""Word lists and templates of the templated tasks (package data)."""


@functools.cache
def _words() -> dict:
    return json.loads(WORDS_PATH.read_text(encoding="utf-8"))


Generated = tuple[list[str], list[int], list[tuple[str, ...]]]
"""Texts, labels and each text's counterfactual candidates (see ``ProbingTask.counterfactuals``)."""


def _sv_examples() -> Generated:
    words = _words()["sv_agreement"]
    pairs = [tuple(p) for p in words["noun_pairs"]]
    examples: dict[str, tuple[int, str]] = {}  # ordered, de-duplicated: text -> (label, cf)
    for (sg, pl), tpl in itertools.product(pairs, words["templates"]):
        attractors = (
            [(asg, apl) for asg, apl in pairs[::7] if asg != sg] if "{pp}" in tpl else [("", "")]
        )
        for (asg, apl), frame in itertools.product(attractors, words["attractor_frames"][:2]):
            # the attractor noun has the other number than the subject; the counterfactual swaps
            # the subject's number only
            examples[tpl.format(subj=sg, pp=frame.format(apl))] = (
                0,
                tpl.format(subj=pl, pp=frame.format(apl)),
            )
            examples[tpl.format(subj=pl, pp=frame.format(asg))] = (
                1,
                tpl.format(subj=sg, pp=frame.format(asg)),
            )
    return list(examples), [y for y, _ in examples.values()], [(cf,) for _, cf in examples.values()]


def _cross_product(task: str) -> Generated:
    """Every template of ``task`` with every word of class 0, then of class 1, template by
    template (the words fill the template's one ``{slot}``). A text's counterfactual candidates are
    the same template with the other class's words, starting at the same index and cycling."""
    words = _words()[task]
    texts, labels, cfs = [], [], []
    for tpl in words["templates"]:
        for label, fillers in enumerate(words["classes"]):
            other = words["classes"][1 - label]
            for j, filler in enumerate(fillers):
                texts.append(tpl.format(**{words["slot"]: filler}))
                labels.append(label)
                cfs.append(
                    tuple(
                        tpl.format(**{words["slot"]: other[(j + m) % len(other)]})
                        for m in range(len(other))
                    )
                )
    return texts, labels, cfs


@dataclass(frozen=True)
class _TemplatedSpec:
    generate: Callable[[], Generated]
    label_names: tuple[str, str]
    answers: tuple[str, str]
    description: str


TEMPLATED: dict[str, _TemplatedSpec] = {
    "sv_agreement": _TemplatedSpec(
        _sv_examples,
        ("singular", "plural"),
        (" is", " are"),
        "subject–verb number: 'The keys near the table' -> ' are' / ' is'",
    ),
    "pronoun_gender": _TemplatedSpec(
        functools.partial(_cross_product, "pronoun_gender"),
        ("male", "female"),
        (" he", " she"),
        "pronoun after a first name: 'Mary was tired, so' -> ' she' / ' he'",
    ),
    "city_country": _TemplatedSpec(
        functools.partial(_cross_product, "city_country"),
        ("France", "Italy"),
        (" France", " Italy"),
        "a city's country: 'Lyon is a city in' -> ' France' / ' Italy'",
    ),
}
TEXT_TASKS = ("vader_sentiment", "vader_domain:<movie|tweet|amazon|nyt>", "<path>.jsonl")


def _sample_rows(labels: list[int], n_per_class: int | None, seed: int) -> list[int]:
    rng = random.Random(seed)
    keep: list[int] = []
    for cls in (0, 1):
        idx = [i for i, y in enumerate(labels) if y == cls]
        keep += (
            idx if n_per_class is None or len(idx) <= n_per_class else rng.sample(idx, n_per_class)
        )
    return sorted(keep)


def _sample_per_class(
    texts: list[str], labels: list[int], n_per_class: int | None, seed: int
) -> tuple[list[str], list[int]]:
    keep = _sample_rows(labels, n_per_class, seed)
    return [texts[i] for i in keep], [labels[i] for i in keep]


def templated_task(name: str, n_per_class: int | None = 150, seed: int = 0) -> ProbingTask:
    spec = TEMPLATED[name]
    texts, labels, cfs = spec.generate()
    keep = _sample_rows(labels, n_per_class, seed)
    return ProbingTask(
        name,
        tuple(texts[i] for i in keep),
        tuple(labels[i] for i in keep),
        spec.label_names,
        "last",
        spec.answers,
        "templated",
        {"description": spec.description},
        tuple(cfs[i] for i in keep),
    )


def _binary_from_labelled(
    name: str, ls: LabelledSet, positive: int | None, n_per_class: int | None, seed: int
) -> ProbingTask:
    if positive is None:
        if len(ls.label_names) != 2:
            raise DataError(
                f"{name}: {len(ls.label_names)} labels {ls.label_names}; a probing task is binary. "
                f"Name one label to probe against the rest as '{name}:<label>'."
            )
        texts, labels, names = (
            list(ls.texts),
            list(ls.labels),
            (ls.label_names[0], ls.label_names[1]),
        )
    else:
        rng = random.Random(seed)
        pos = [t for t, y in zip(ls.texts, ls.labels) if y == positive]
        neg = [t for t, y in zip(ls.texts, ls.labels) if y != positive]
        if not pos or not neg:
            raise DataError(
                f"{name}: one class only after splitting {ls.label_names[positive]!r} from the rest."
            )
        neg = rng.sample(neg, min(len(neg), len(pos)))  # balanced, as SAEBench's prepare_probe_data
        texts, labels = pos + neg, [1] * len(pos) + [0] * len(neg)
        names = (f"not_{ls.label_names[positive]}", ls.label_names[positive])
    texts, labels = _sample_per_class(texts, labels, n_per_class, seed)
    return ProbingTask(
        name, tuple(texts), tuple(labels), names, "mean", None, ls.name, dict(ls.meta)
    )


def text_task(name: str, n_per_class: int | None = 150, seed: int = 0) -> ProbingTask:
    """``vader_sentiment``, ``vader_domain:<source>``, or ``<file>.jsonl[:<label>]``."""
    base, _, positive_name = name.partition(":")
    if base == "vader_sentiment":
        return _binary_from_labelled(
            name, load_labelled(base, max_per_class=n_per_class, seed=seed), None, None, seed
        )
    if base == "vader_domain":
        # enough of every source that the balanced negatives can be drawn from all three others
        ls = load_labelled(base, max_per_class=n_per_class, seed=seed)
    elif base.endswith(".jsonl"):
        if not Path(base).exists():
            raise DataError(f"Label file {base} does not exist.")
        ls = load_labelled(base, seed=seed)
    else:
        raise DataError(
            f"Unknown probing task {name!r}; valid: {', '.join([*TEMPLATED, *TEXT_TASKS, *CUSTOM_TASKS])}."
        )
    if not positive_name:
        return _binary_from_labelled(name, ls, None, n_per_class, seed)
    if positive_name not in ls.label_names:
        raise DataError(f"{name}: label {positive_name!r} not in {ls.label_names}.")
    return _binary_from_labelled(name, ls, ls.label_names.index(positive_name), n_per_class, seed)


TaskBuilder = Callable[[int | None, int], ProbingTask]
"""``builder(n_per_class, seed) -> ProbingTask``."""
CUSTOM_TASKS: dict[str, TaskBuilder] = {}


def register_task(name: str, builder: TaskBuilder) -> None:
    """Make ``name`` loadable by :func:`load_task` (and so usable in the eval's ``tasks``)."""
    if (
        name in TEMPLATED
        or name in CUSTOM_TASKS
        or name.split(":")[0] in ("vader_sentiment", "vader_domain")
    ):
        raise ValueError(f"Probing task {name!r} is already defined.")
    CUSTOM_TASKS[name] = builder


def load_task(name: str, n_per_class: int | None = 150, seed: int = 0) -> ProbingTask:
    """A task by name (see :data:`TEMPLATED`, :data:`TEXT_TASKS` and :func:`register_task`), at
    most ``n_per_class`` examples of each label, sampled with ``seed``."""
    if name in TEMPLATED:
        return templated_task(name, n_per_class, seed)
    if name in CUSTOM_TASKS:
        return CUSTOM_TASKS[name](n_per_class, seed)
    return text_task(name, n_per_class, seed)


DEFAULT_TASKS = ("sv_agreement", "pronoun_gender", "city_country", "vader_sentiment")
"""The default run's tasks: the three templated tasks (with counterfactual pairs, so interchange
interventions) and sentiment; the four VADER domain tasks (:data:`ALL_TASKS`) cost the CPU default
run ~110 s and are in the GPU suites."""
ALL_TASKS = (
    *DEFAULT_TASKS,
    "vader_domain:movie",
    "vader_domain:tweet",
    "vader_domain:amazon",
    "vader_domain:nyt",
)

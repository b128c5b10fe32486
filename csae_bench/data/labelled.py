"""Labelled sets: texts with integer labels, by name (the VADER sentiment and domain tasks) or
from a JSONL file, and per-class balancing."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from csae_bench.data.vader import VADER_SOURCES, load_vader
from csae_bench.errors import DataError


@dataclass
class LabelledSet:
    """Texts with integer labels; ``label_names[label]`` names each class."""

    name: str
    texts: list[str]
    labels: list[int]
    label_names: list[str]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(f"{self.name}: {len(self.texts)} texts but {len(self.labels)} labels.")
        present = set(self.labels)
        if len(present) < 2:
            raise DataError(
                f"{self.name}: only one class present ({sorted(present)}); a probing task needs at least two."
            )
        bad = [y for y in present if not 0 <= y < len(self.label_names)]
        if bad:
            raise DataError(
                f"{self.name}: labels {bad} have no name in label_names={self.label_names}."
            )


def load_labelled(
    name: str, max_per_class: int | None = None, seed: int = 0, margin: float = 1.0
) -> LabelledSet:
    """A labelled set by name: ``vader_sentiment`` (scores ≤ −margin vs ≥ +margin),
    ``vader_domain`` (movie / tweet / amazon / nyt), or a path to a JSONL file with ``text`` and
    ``label`` fields."""
    if name == "vader_sentiment":
        sents = [s for s in load_vader() if abs(s.score) >= margin]
        ls = LabelledSet(
            name,
            [s.text for s in sents],
            [int(s.score > 0) for s in sents],
            ["negative", "positive"],
            {"margin": margin},
        )
    elif name == "vader_domain":
        sources = list(VADER_SOURCES)
        sents = load_vader()
        ls = LabelledSet(
            name, [s.text for s in sents], [sources.index(s.source) for s in sents], sources
        )
    elif Path(name).exists():
        ls = _labelled_from_jsonl(Path(name))
    else:
        raise DataError(
            f"Unknown labelled set {name!r}: use vader_sentiment, vader_domain or a JSONL path."
        )
    return balance(ls, max_per_class, seed) if max_per_class else ls


def _labelled_from_jsonl(path: Path) -> LabelledSet:
    texts, raw_labels = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            texts.append(str(row["text"]))
            raw_labels.append(str(row["label"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(
                f"{path}:{i + 1} does not parse: each line must be a JSON object with 'text' and 'label'."
            ) from None
    names = sorted(set(raw_labels))
    return LabelledSet(path.stem, texts, [names.index(y) for y in raw_labels], names)


def balance(ls: LabelledSet, max_per_class: int, seed: int = 0) -> LabelledSet:
    """At most ``max_per_class`` examples of each class, chosen with ``seed``."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(ls.labels):
        by_class.setdefault(y, []).append(i)
    keep = sorted(
        i for idx in by_class.values() for i in rng.sample(idx, min(len(idx), max_per_class))
    )
    return LabelledSet(
        ls.name, [ls.texts[i] for i in keep], [ls.labels[i] for i in keep], ls.label_names, ls.meta
    )

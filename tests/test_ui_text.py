"""Names, captions and file names are shown as text: rendered as Markdown they make no tag, link or image."""

from __future__ import annotations

import html
from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt

from ui.text import NO_TAG, escaped, plain

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


class _Markup(HTMLParser):
    """What a browser's parser makes of a toast's text: the tags it would open, and the text it would show."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        self.tags.append("/" + tag)

    def handle_comment(self, data: str) -> None:
        self.tags.append("!--")

    def handle_decl(self, decl: str) -> None:
        self.tags.append("!" + decl)

    def handle_data(self, data: str) -> None:
        self.text += data


@pytest.mark.parametrize("name", [*HOSTILE, "<!-- x -->", "</div><b>", "a < b & c > d"])
def test_toast_text_opens_no_tag_and_reads_as_typed_for_the_browser_and_the_api(name: str) -> None:
    shown = escaped(name)
    parsed = _Markup()
    parsed.feed(shown)
    parsed.close()
    assert parsed.tags == [], (name, parsed.tags)
    # The browser shows the name itself (the word joiner has no width), and an API client reads it with no
    # entity in it: "Zoë's model" used to arrive as "Zoë&#x27;s model".
    assert parsed.text.replace(NO_TAG, "") == name
    assert shown.replace(NO_TAG, "") == name and "&#" not in shown and "&lt;" not in shown


def test_error_texts_name_no_server_path() -> None:
    message = ("lora_path: '/srv/likeness/data/people/anon-0123abcd/models/m1/lora.safetensors' is not a LoRA for "
               "this base model (tiny): OSError: cannot open /srv/likeness/data/people/anon-0123abcd/x.json.")
    shown = escaped(message)
    assert "/srv" not in shown and "anon-0123abcd" not in shown
    assert "'lora.safetensors'" in shown and "x.json" in shown
    # What is not a server path stays: a URL, a repo id, a relative name.
    for kept in ("see https://huggingface.co/bob/likeness", "push to bob/likeness", "photos/portrait_00.jpg"):
        assert escaped(kept) == kept

"""Names, captions and file names are shown as text: rendered as Markdown they make no tag, link or image."""

from __future__ import annotations

import html
from html.parser import HTMLParser
from pathlib import Path

import pytest
from app_runner import RunningApp
from gradio_client import Client
from markdown_it import MarkdownIt

from pipeline.people.workspaces import Workspaces
from pipeline.settings import AppSettings
from pipeline.status import Status
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


def test_the_running_app_answers_errors_as_plain_text_without_server_paths(tmp_path: Path) -> None:
    """Issue 32, item 6, on the running app: a damaged LoRA's error named its full server path, API error texts
    arrived HTML-escaped (``&#x27;``), and None in a text field gave "the upstream app has raised an exception"."""
    data_dir = tmp_path / "data"
    people = Workspaces(AppSettings(data_dir=data_dir, base_model="tiny"), start_worker=False)
    record = people.local.library.create("Zoë's model", "tiny", {})
    damaged = Path(record.folder) / "lora.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    people.local.library.update(record.id, status=Status.READY, lora_path=damaged)
    people.close()

    app = RunningApp(data_dir)
    try:
        client = Client(app.url, verbose=False)
        form = ["{trigger}", "", 1, 2, 3.5, 1.0, 64, 64, 1]

        def error(*args: object, api_name: str) -> str:
            with pytest.raises(Exception) as raised:  # gradio_client's AppError carries the handler's message
                client.predict(*args, api_name=api_name)
            return str(raised.value)

        damaged_lora = error(record.id, *form, api_name="/generate")
        assert "lora.safetensors" in damaged_lora and "is not a LoRA" in damaged_lora
        assert str(tmp_path) not in damaged_lora and "/models/" not in damaged_lora, damaged_lora
        assert "&#" not in damaged_lora and "&lt;" not in damaged_lora and "&amp;" not in damaged_lora

        # None where the page always sends text or a number: the field is named. (A slider's None is refused by
        # Gradio itself before the handler runs, with its own generic message.)
        nones = {
            "generate (prompt)": error("", None, *form[1:], api_name="/generate"),
            "generate (seed)": error("", "{trigger}", "", None, 2, 3.5, 1.0, 64, 64, 1, api_name="/generate"),
            "compare (prompt)": error("", None, *form[1:], "", 0.5, api_name="/compare"),
            "video (prompt)": error("", None, "", 4, 4, 1, api_name="/video"),
            "video (second prompt, seed)": error("", "{trigger}", None, 4, 4, None, api_name="/video"),
        }
        for where, message in nones.items():
            assert "upstream" not in message and ("prompt" in message or "seed" in message), (where, message)
            assert "got None" in message, (where, message)
        # The Models tab's text fields (and the privacy checkbox, whose None would make a public repo).
        fields = {
            "New name": error(record.id, None, api_name="/rename_model"),
            "Repository": error(record.id, None, "hf_x", True, api_name="/push_to_hub"),
            "Write token": error(record.id, "bob/x", None, True, api_name="/push_to_hub"),
            "Private repository": error(record.id, "bob/x", "hf_x", None, api_name="/push_to_hub"),
        }
        for field, message in fields.items():
            assert f"{field}: expected" in message and "got None" in message, (field, message)
        assert people.local.library.get(record.id).name == "Zoë's model"
    finally:
        app.stop()

"""User text (model names, trigger words, captions, file names) shown as text, never as markup.

Gradio renders Markdown and the HTML inside it, and its toasts render HTML: a model named ``<img src=…>`` made the
browser fetch that address. Everything a user or a file name supplies goes through ``plain`` (Markdown) or
``escaped`` (toasts and error messages, which are HTML, not Markdown) before it is shown.

An error message reaches an API client as the same text as the toast, so ``escaped`` makes no entities (a client
used to read ``Zoë&#x27;s model``): it only keeps ``<`` from opening a tag, and it takes the server's own paths
out (a damaged LoRA's error named its full path in the data dir).
"""

from __future__ import annotations

import html
import re

import gradio as gr

# What can turn text into markup: HTML (escaped as entities), and Markdown's code, emphasis, links and images.
# Intraword underscores and dots are left alone: they are everywhere in file names and make no markup there.
_MARKDOWN = re.compile(r"([\\`*\[\]!|~#])")


def plain(text: object) -> str:
    """``text`` escaped for Markdown and HTML, so it reads exactly as typed."""
    return html.escape(_MARKDOWN.sub(r"\\\1", str(text)), quote=True)  # entities last: their "#" stays


# "<" opens a tag (or a comment, a declaration) only when a letter, "/", "!" or "?" follows it; a WORD JOINER
# (U+2060, invisible, no width) in between makes it text for the browser's parser and for Gradio's sanitizer alike.
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
NO_TAG = "\u2060"
# An absolute server path: "/" and at least two parts, at the start or after a space, quote, bracket or "=" (so
# that a URL's "//host/…" and a repo id "owner/name" are left alone).
_SERVER_PATH = re.compile(r"(?:(?<=^)|(?<=[\s'\"(\[=:]))/(?:[^/\s'\"()\[\]]+/)+([^/\s'\"()\[\]]+)")


def without_paths(text: str) -> str:
    """``text`` with each absolute path cut to its last part: where the data dir lies, whose folder a model is in,
    and the server's layout are nobody's business but the operator's (the log keeps the full paths)."""
    return _SERVER_PATH.sub(r"\1", text)


def escaped(text: object) -> str:
    """``text`` for ``gr.Info``/``gr.Warning``/``gr.Error``, whose messages are HTML in the browser and plain text
    for API clients: without server paths, with no tag that could open, and no entity (it reads as typed)."""
    return _TAG_START.sub("<" + NO_TAG, without_paths(str(text)))


def text_field(value: object, label: str, *, required: bool = True) -> str:
    """A text input as a handler receives it: an API caller may send ``None`` (or a number) where the page always
    sends a string; say which field, instead of Gradio's "the upstream app has raised an exception"."""
    if value is None:
        if required:
            raise gr.Error(f"{label}: expected text, got None")
        return ""
    if not isinstance(value, str):
        raise gr.Error(f"{label}: expected text, got {type(value).__name__}")
    return value


def number_field(value: object, label: str) -> float:
    """A number input (slider, number box) that an API caller may send as ``None`` or as text."""
    if isinstance(value, bool) or value is None:
        raise gr.Error(f"{label}: expected a number, got {escaped(repr(value))}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise gr.Error(f"{label}: expected a number, got {escaped(repr(value))}") from None

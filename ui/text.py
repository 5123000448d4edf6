"""User text (model names, trigger words, captions, file names) shown as text, never as markup.

Gradio renders Markdown and the HTML inside it, and its toasts render HTML: a model named ``<img src=…>`` made the
browser fetch that address. Everything a user or a file name supplies goes through ``plain`` (Markdown) or
``escaped`` (toasts and error messages, which are HTML, not Markdown) before it is shown.
"""

from __future__ import annotations

import html
import re

# What can turn text into markup: HTML (escaped as entities), and Markdown's code, emphasis, links and images.
# Intraword underscores and dots are left alone: they are everywhere in file names and make no markup there.
_MARKDOWN = re.compile(r"([\\`*\[\]!|~#])")


def plain(text: object) -> str:
    """``text`` escaped for Markdown and HTML, so it reads exactly as typed."""
    return html.escape(_MARKDOWN.sub(r"\\\1", str(text)), quote=True)  # entities last: their "#" stays


def escaped(text: object) -> str:
    """``text`` escaped for HTML only: for ``gr.Info``/``gr.Warning``/``gr.Error``, whose messages are HTML."""
    return html.escape(str(text), quote=True)

"""Pipeline progress events shown on a Gradio progress bar: one callback for every tab."""

from __future__ import annotations

import gradio as gr

from pipeline.events import Event, EventCallback, Message, Progress
from ui.text import escaped


def progress_events(progress: gr.Progress, desc: str, *, use_messages: bool = False) -> EventCallback:
    """An ``on_event`` callback that moves ``progress`` for each Progress event with a total and shows warnings as
    toasts; other events are ignored.

    ``desc`` labels the bar; with ``use_messages`` an event's own message (e.g. which photo) replaces it.
    """

    def on_event(event: Event) -> None:
        if isinstance(event, Progress) and event.total:
            progress((event.done, event.total), desc=(use_messages and event.message) or desc)
        elif isinstance(event, Message) and event.level == "warning":
            gr.Warning(escaped(event.text))  # e.g. the base model only fits streamed from host RAM: slow

    return on_event

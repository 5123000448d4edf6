"""The step indicator above the tabs: where this person is on the way to a model and what is missing."""

from __future__ import annotations

import gradio as gr

from pipeline.flow_status import FlowStatus
from ui.people import People

REFRESH_SECONDS = 4.0  # long enough to cost nothing, short enough to follow an upload, a check or a training


def render(status: FlowStatus) -> str:
    """One line of steps; the current one marked. Only counts and fixed words: nothing the user typed."""
    parts = []
    for number, state in enumerate(status.steps, start=1):
        mark = "✅" if state.done else ("👉" if state.step == status.current else "○")
        name = f"**{number} · {state.step.value}**" if state.step == status.current else \
            f"{number} · {state.step.value}"
        parts.append(f"{mark} {name} — {state.note}")
    return " &nbsp;→&nbsp; ".join(parts)


def build(people: People, demo: gr.Blocks) -> gr.Markdown:
    line = gr.Markdown(elem_classes=["steps"], elem_id="steps")

    def refresh(request: gr.Request) -> str:
        try:
            return render(people(request).flow_status())
        except gr.Error:  # no workspace for this visitor (e.g. the app is full): the page says why elsewhere
            return ""

    demo.load(refresh, None, line, api_name=False, show_progress="hidden")
    # Outside the queue: a tick must never wait behind (or fill) the queue that trainings and generations use.
    gr.Timer(REFRESH_SECONDS).tick(refresh, None, line, api_name=False, show_progress="hidden", queue=False)
    return line

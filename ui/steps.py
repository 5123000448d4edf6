"""The step guide above the tabs: where this person is on the way to a model and what is missing."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

import gradio as gr

from pipeline.flow_status import FlowStatus, Step, guide_state
from ui.people import People

REFRESH_SECONDS = 4.0  # long enough to cost nothing, short enough to follow an upload, a check or a training


def tab_labels(demo: gr.Blocks) -> dict[Step, str]:
    """Each step's tab as the page labels it ("3 · Review"): read from the tabs themselves, so the guide's numbers
    are the tabs' numbers (it used to number its own four steps 1–4 beside tabs numbered 1–6)."""
    tabs = {block.id: block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)}
    return {step: str(tabs[step.value]) for step in Step if step.value in tabs}


def _line(status: FlowStatus, labels: Mapping[Step, str], state_step: Step) -> str:
    state = status.state(state_step)
    mark = "✅" if state.done else ("👉" if state.step == status.current else "○")
    name = escape(labels.get(state.step, state.step.value.capitalize()))
    if state.step == status.current:
        name = f"<strong>{name}</strong>"
    return f"{mark} {name} — {escape(state.note)}"


def render(status: FlowStatus, labels: Mapping[Step, str]) -> str:
    """The steps in one line on wide screens; on a phone only the current step, the others folded under it (the
    whole line took ~8 lines there and pushed the tabs below the first screen). Only counts and fixed words:
    nothing the user typed."""
    lines = [_line(status, labels, s.step) for s in status.steps]
    done = sum(s.done for s in status.steps)
    whole = " &nbsp;→&nbsp; ".join(lines)
    now = _line(status, labels, status.current)
    return (f'<div class="guide-wide">{whole}</div>'
            f'<details class="guide-narrow"><summary>{now} <span class="guide-count">({done} of '
            f'{len(status.steps)} done)</span></summary>{"<br>".join(lines)}</details>')


def build(people: People, demo: gr.Blocks) -> gr.HTML:
    line = gr.HTML(elem_classes=["steps"], elem_id="steps")

    def refresh(request: gr.Request) -> str:
        try:
            return render(guide_state(people(request)), tab_labels(demo))
        except gr.Error:  # no workspace for this visitor (e.g. the app is full): the page says why elsewhere
            return ""

    demo.load(refresh, None, line, api_name=False, show_progress="hidden")
    # Outside the queue: a tick must never wait behind (or fill) the queue that trainings and generations use.
    gr.Timer(REFRESH_SECONDS).tick(refresh, None, line, api_name=False, show_progress="hidden", queue=False)
    return line

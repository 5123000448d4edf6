"""The Playground's Stop reaches the drawing itself: a per-session flag that the generation checks between images
(Gradio's ``cancels=`` ends the event, not the worker thread that draws)."""

from __future__ import annotations

import threading
from pathlib import Path

from pipeline.events import Progress
from pipeline.settings import AppSettings, GenerateSettings
from pipeline.workflow import Workflow
from ui.playground import SessionStops


def test_stop_ends_a_sessions_generation_between_two_images(tmp_path: Path) -> None:
    stops = SessionStops()
    flag, other = stops.start("alice"), stops.start("bob")
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), start_worker=False)
    try:
        settings = GenerateSettings(prompt="a portrait", steps=2, width=64, height=64, num_images=6)
        steps = 0

        def count(event: object) -> None:  # Alice presses Stop (the button's handler) as her second image starts
            nonlocal steps
            steps += isinstance(event, Progress)
            if steps == settings.steps + 1:
                click = threading.Thread(target=stops.stop, args=("alice",))  # from another thread, as Gradio's
                click.start()
                click.join()

        paths = workflow.generate(None, settings, on_event=count, should_stop=flag.is_set)
    finally:
        workflow.close()
    assert flag.is_set() and not other.is_set()  # only her session's drawing stops
    assert len(paths) == 1
    assert not stops.start("alice").is_set()  # her next generation starts unstopped

"""The Playground's Video follows its clip through the job queue: the place in line on the page while it waits,
Cancel (the session's Stop) removes it from the queue, a page that stops listening cancels it, and a clip that
runs ends with the MP4, its summary and its likeness."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import gradio as gr
import pytest

from pipeline.settings import AppSettings, GenerateSettings
from pipeline.status import Status
from pipeline.workflow import Workflow
from ui.playground import NEW_STILL, SessionStops, _still_choices, followed


class Bar:
    """What the page's progress bar is told (gr.Progress's call)."""

    def __init__(self) -> None:
        self.shown: list[tuple[object, str | None]] = []

    def __call__(self, progress: object, desc: str | None = None, **_: object) -> None:
        self.shown.append((progress, desc))


def test_a_queued_clip_on_the_page_cancel_and_the_clip(tmp_path: Path) -> None:
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny", video_model="tiny"),
                        start_worker=False)  # no worker yet: the clips wait in line
    clip = {"prompt": "a portrait", "frames": 5, "fps": 5, "video_model": "tiny"}
    try:
        # Cancel pressed while it waits: the session's Stop cancels the job in the queue, and the page says so;
        # a Generate started meanwhile (a fresh Stop flag for its drawing) leaves the clip's cancel in place.
        stops, bar = SessionStops(), Bar()
        waiting = workflow.queue_video(None, **clip)
        stops.watch("alice", waiting.id, lambda: workflow.cancel_video(waiting.id))
        drawing = stops.start("alice")  # Make video, then Generate
        page = followed(workflow, waiting.id, bar)  # type: ignore[arg-type]
        assert next(page)[1] == "⏳ waiting: starting, position 1" and bar.shown[-1][1].startswith("waiting")
        stops.stop("alice")
        assert drawing.is_set()
        with pytest.raises(gr.Error, match="nothing was kept"):
            next(page)
        assert workflow.jobs.get(waiting.id).status == Status.CANCELLED

        # A page that stops listening (closed, or Gradio's cancel) cancels its clip: nobody waits for it.
        left = workflow.queue_video(None, **clip)
        page = followed(workflow, left.id, bar)  # type: ignore[arg-type]
        next(page)
        page.close()
        assert workflow.jobs.get(left.id).status == Status.CANCELLED

        # Run by the queue's worker: the page gets the MP4, the summary and every frame's likeness.
        made = workflow.queue_video(None, **clip)
        workflow.jobs.start()
        *_updates, (video, summary, _curve, likeness) = followed(workflow, made.id, bar)  # type: ignore[arg-type]
        assert video.endswith(".mp4") and summary.startswith("**An image-to-video clip** (5 frames")
        assert likeness["kind"] == "image-to-video" and likeness["frame_count"] == 5
        assert workflow.jobs.get(made.id).status in (Status.RUNNING, Status.DONE)  # done, or about to be recorded
    finally:
        workflow.close()


def test_a_closed_page_cancels_its_waiting_clip(tmp_path: Path) -> None:
    """As Gradio closes the page's generator: ``close()`` from another thread while the generator is being asked
    for its next update, retried while it is refused ("generator already executing", as Gradio's aclose does).
    A clip that waits in line must pause at a yield soon enough for it to go through, and is then cancelled."""
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), start_worker=False)
    try:
        job = workflow.queue_video(None, prompt="a face", frames=5, fps=5, video_model="morph")
        polled = threading.Event()
        page = followed(workflow, job.id, lambda *_a, **_k: polled.set())  # type: ignore[arg-type]
        next(page)
        polled.clear()
        asking = threading.Thread(target=lambda: next(page, None), daemon=True)  # Gradio's worker thread
        asking.start()
        assert polled.wait(30)  # the generator runs: it has polled the queue again
        deadline, closed = time.monotonic() + 30, False
        while not closed and time.monotonic() < deadline:
            try:
                page.close()
                closed = True
            except ValueError as exc:
                assert "already executing" in str(exc)
                polled.wait(0.05)
        assert closed, "the page's generator never paused at a yield while its clip waited"
        assert workflow.jobs.get(job.id).status == Status.CANCELLED
        asking.join(30)
    finally:
        workflow.close()


def test_the_still_picker_offers_the_models_own_generations(tmp_path: Path) -> None:
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), start_worker=False)
    try:
        assert _still_choices(workflow, "") == [(NEW_STILL, "")]
        [drawn] = workflow.generate(None, GenerateSettings(prompt="a portrait", seed=5, steps=2, width=64, height=64))
        [new, (label, ref)] = _still_choices(workflow, "")  # the base model's own generation, by its seed and prompt
        assert new == (NEW_STILL, "") and ref == drawn.relative_to(workflow.data_dir).as_posix()
        assert "seed 5 · a portrait" in label
        assert _still_choices(workflow, "no-such-model") == [(NEW_STILL, "")]  # deleted since the page loaded
    finally:
        workflow.close()

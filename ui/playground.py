"""Playground tab: generate images (and a short video) with a model from the library."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import gradio as gr
import pandas as pd

from pipeline.clip_likeness import MORPH_WHY
from pipeline.settings import GenerateSettings
from pipeline.status import Status
from pipeline.workflow import Workflow
from ui.charts import series_frame
from ui.files import served
from ui.people import People
from ui.progress import progress_events
from ui.text import escaped, number_field, text_field

if TYPE_CHECKING:  # pipeline.video brings torch; the app must start without it where no GPU can be
    from pipeline.video import VideoResult

BASE_ONLY = "(base model, no LoRA)"


class SessionStops:
    """One Stop flag per browser session. Gradio's ``cancels=`` ends the event, not the worker thread that draws the
    images: without a flag the thread went on to its last image or frame, holding the generator (issue 32)."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        """A fresh flag for the generation this session starts now."""
        with self._lock:
            flag = self._flags[session] = threading.Event()
            return flag

    def stop(self, session: str) -> None:
        with self._lock:
            flag = self._flags.get(session)
        if flag is not None:
            flag.set()


def _choices(workflow: Workflow) -> list[tuple[str, str]]:
    ready = [(f"{r.name} · {r.trigger_word} · {r.created_at[:19].replace('T', ' ')}", r.id)
             for r in workflow.models(Status.READY)]
    return ready + [(BASE_ONLY, "")]


def _for_images(people: People, request: gr.Request, *models: str | None) -> Workflow:
    """Where a generation is kept: with a model, its owner's workspace (reading finds it, or finds no model);
    from the base model alone, the first image is what makes a new person's workspace."""
    return people(request) if all(models) else people.storing(request)


def _settings(text: object, neg: object, sd: object, st: object, gd: object, w: object, h: object, n: object,
              scale: object = 1.0) -> GenerateSettings:
    """The form's values, each checked by name first: an API caller may send None for any of them."""
    whole = {label: int(number_field(v, label)) for v, label in
             ((sd, "seed"), (st, "steps"), (w, "width"), (h, "height"), (n, "images"))}
    return GenerateSettings(prompt=text_field(text, "prompt"), negative_prompt=text_field(neg, "negative prompt",
                            required=False), seed=whole["seed"], steps=whole["steps"],
                            guidance=number_field(gd, "guidance"), width=whole["width"], height=whole["height"],
                            lora_scale=number_field(scale, "LoRA scale"), num_images=whole["images"])


CURVE_COLUMNS = ("frame", "likeness %", "measure")
CURVE_SERIES = ("likeness %", "recognised above")


def _curve(result: VideoResult | None) -> pd.DataFrame:
    """Each frame's likeness ×100, and the 50 % line: a frame above it is recognised (the calibrated boundary)."""
    rows = []
    if result is not None and result.likeness is not None:
        rows = [(f.index, 100 * (f.likeness or 0.0), CURVE_SERIES[0]) for f in result.likeness.frames]
        rows += [(f.index, 50.0, CURVE_SERIES[1]) for f in result.likeness.frames]
    return series_frame(rows, CURVE_COLUMNS, CURVE_SERIES)


def _clip_summary(result: VideoResult) -> str:
    """Which kind of clip was made and why, then how much of it shows the person."""
    likeness = (result.likeness.sentence() if result.likeness is not None
                else "No likeness measured: the base model has no person to compare with.")
    return (f"**A {result.kind}** ({result.frames} frames at {result.fps} fps) — {result.why}.\n\n{escaped(likeness)}"
            f"\n\nThe MP4 carries the prompt, seed, models and likeness in its metadata; every frame's score is in "
            f"`{result.likeness_json.name}` beside it.")


def _defaults(workflow: Workflow) -> GenerateSettings:
    size = workflow.test_generate_settings(512)
    return GenerateSettings(prompt="a portrait photo of {trigger}", steps=size.steps, width=size.width,
                            height=size.height)


def build(people: People) -> gr.Tab:
    stops = SessionStops()
    d = _defaults(people.workspaces.local)  # sizes and steps of the base model: the same for everyone
    with gr.Tab("5 · Playground", id="playground") as tab:
        with gr.Row():
            # Custom values: the API may name a model trained after this page was built.
            model = gr.Dropdown(label="Model", choices=[(BASE_ONLY, "")], value="", scale=2,
                                allow_custom_value=True)
            prompt = gr.Textbox(label="Prompt ({trigger} is replaced by the model's trigger word)",
                                value=d.prompt, scale=4)
        negative = gr.Textbox(label="Negative prompt", value="")
        with gr.Row():
            seed = gr.Number(label="Seed", value=0, precision=0)
            steps = gr.Slider(1, 100, value=d.steps, step=1, label="Steps")
            guidance = gr.Slider(0, 10, value=d.guidance, step=0.5, label="Guidance")
            scale = gr.Slider(0, 2, value=1.0, step=0.05, label="LoRA scale")
        with gr.Row():
            width = gr.Slider(32, 1536, value=d.width, step=16, label="Width")
            height = gr.Slider(32, 1536, value=d.height, step=16, label="Height")
            count = gr.Slider(1, 8, value=1, step=1, label="Images")
        with gr.Row():
            go = gr.Button("Generate", variant="primary", scale=3)
            stop = gr.Button("Cancel", scale=1)
        gallery = gr.Gallery(label="Results (PNG with prompt and settings in its metadata)", columns=4, height=420,
                             preview=False, elem_classes=["results-gallery"],
                             object_fit="contain", type="filepath", buttons=["download", "fullscreen"])
        with gr.Accordion("Compare: two models, or one model at two LoRA scales, same prompt and seeds", open=False):
            with gr.Row():
                other = gr.Dropdown(label="Second model", choices=[(BASE_ONLY, "")], value="",
                                    allow_custom_value=True)
                other_scale = gr.Slider(0, 2, value=0.8, step=0.05, label="Second LoRA scale")
            compare = gr.Button("Compare")
            sheet = gr.Image(label="Side by side", type="filepath", height=420)
        # On this machine the clip is a morph between stills, not motion: the title says so before anyone waits.
        with gr.Accordion("Video: a morph between stills, with the likeness in every frame", open=False):
            gr.Markdown(f"Made here as a **morph**: {MORPH_WHY}. Each frame's face is judged as the assessment "
                        "judges a test image, against the model's training photos.")
            with gr.Row():
                prompt_b = gr.Textbox(label="Second prompt (optional)")
                frames = gr.Slider(4, 96, value=16, step=1, label="Frames")
                fps = gr.Slider(4, 30, value=8, step=1, label="Frames per second")
            make = gr.Button("Make video")
            video = gr.Video(label="Clip (MP4, H.264)", height=420)
            clip_summary = gr.Markdown()
            clip_curve = gr.LinePlot(_curve(None), x=CURVE_COLUMNS[0], y=CURVE_COLUMNS[1], color=CURVE_COLUMNS[2],
                                     title="Likeness in each frame (recognised above 50 %)", height=240,
                                     y_lim=[0, 100])
            with gr.Accordion("Every frame's likeness (JSON, saved beside the clip)", open=False):
                clip_likeness = gr.JSON(label="Frames' likeness")

        def generate(mid, text, neg, sd, st, gd, sc, w, h, n, request: gr.Request,
                     progress: gr.Progress = gr.Progress()) -> list[tuple[str, str]]:
            settings = _settings(text, neg, sd, st, gd, w, h, n, sc)
            workflow = _for_images(people, request, mid)
            try:
                paths = workflow.generate(mid or None, settings, on_event=progress_events(progress, "generating"),
                                          should_stop=stops.start(request.session_hash or "").is_set)
            except ValueError as exc:
                raise gr.Error(escaped(exc)) from exc
            # Each image with its seed, so a good one can be made again (prompt and settings are in the PNG too).
            return [(served(p), f"seed {settings.seed + i}") for i, p in enumerate(paths)]

        def side_by_side(mid, text, neg, sd, st, gd, sc, w, h, n, mid_b, sc_b, request: gr.Request,
                         progress: gr.Progress = gr.Progress()) -> str:
            settings = _settings(text, neg, sd, st, gd, w, h, n)
            scales = number_field(sc, "LoRA scale"), number_field(sc_b, "second LoRA scale")
            workflow = _for_images(people, request, mid, mid_b)
            try:
                path = workflow.compare((mid or None, scales[0]), (mid_b or None, scales[1]), settings,
                                        on_event=progress_events(progress, "generating"),
                                        should_stop=stops.start(request.session_hash or "").is_set)
            except ValueError as exc:
                raise gr.Error(escaped(exc)) from exc
            return served(path)

        def clip(mid, text, second, nframes, rate, sd, request: gr.Request,
                 progress: gr.Progress = gr.Progress()) -> tuple[str, str, pd.DataFrame, dict]:
            text, second = text_field(text, "prompt"), text_field(second, "second prompt", required=False)
            nframes, rate, sd = (int(number_field(v, label)) for v, label in
                                 ((nframes, "frames"), (rate, "frames per second"), (sd, "seed")))
            workflow = _for_images(people, request, mid)
            try:
                result = workflow.video(mid or None, prompt=text, prompt_b=second or None, frames=nframes,
                                        fps=rate, seed=sd, on_event=progress_events(progress, "frames"),
                                        should_stop=stops.start(request.session_hash or "").is_set)
            except ValueError as exc:
                raise gr.Error(escaped(exc)) from exc
            # The file's name only: a data-dir path is never shown to the page or an API caller.
            return (served(result.video), _clip_summary(result), _curve(result),
                    result.to_dict() | {"video": result.video.name})

        form = [model, prompt, negative, seed, steps, guidance, scale, width, height, count]
        generating = go.click(generate, form, gallery, api_name="generate", concurrency_id="gpu", concurrency_limit=1)
        comparing = compare.click(side_by_side, [*form, other, other_scale], sheet, api_name="compare",
                                  concurrency_id="gpu", concurrency_limit=1)
        filming = make.click(clip, [model, prompt, prompt_b, frames, fps, seed],
                             [video, clip_summary, clip_curve, clip_likeness], api_name="video",
                   concurrency_id="gpu", concurrency_limit=1)

        def refresh(first: str, second: str, request: gr.Request) -> tuple:
            # A model trained or deleted since the page loaded: offer the current list, newest ready model first.
            choices = _choices(people(request))
            ids = [mid for _, mid in choices]
            return tuple(gr.update(choices=choices, value=value if value and value in ids else ids[0])
                         for value in (first, second))

        tab.select(refresh, [model, other], [model, other], api_name=False)
        # Gradio's own cancellation ends the event and the queue moves on; the session's flag stops the drawing
        # itself between two images or frames.
        def stop_drawing(request: gr.Request) -> None:
            stops.stop(request.session_hash or "")

        stop.click(stop_drawing, None, None, cancels=[generating, comparing, filming], api_name=False)
    return tab

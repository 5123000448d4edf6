"""Playground tab: generate images (and a short video) with a model from the library."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import gradio as gr
import pandas as pd

from pipeline.settings import GenerateSettings
from pipeline.status import JOB_FINISHED, Status
from pipeline.video.choice import VideoModelChoice
from pipeline.video.clip_likeness import MORPH_WHY
from pipeline.video.i2v import IMAGE_TO_VIDEO, why_animated
from pipeline.workflow import Workflow
from ui.charts import series_frame
from ui.files import served
from ui.handlers import refused
from ui.people import People
from ui.progress import progress_events
from ui.text import escaped, number_field, text_field

if TYPE_CHECKING:  # pipeline.video.clip brings torch; the app must start without it where no GPU can be
    from pipeline.video.clip import VideoResult

BASE_ONLY = "(base model, no LoRA)"


class SessionStops:
    """One Stop flag per browser session. Gradio's ``cancels=`` ends the event, not the worker thread that draws the
    images: without a flag the thread went on to its last image or frame, holding the generator (issue 32).

    A queued clip is cancelled in the job queue instead (``watch``), under its own key: a Generate started while the
    clip waits takes a fresh flag but leaves the clip's cancel in place, so Stop still reaches both."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._on_stop: dict[str, dict[str, Callable[[], object]]] = {}  # session -> key (a job id) -> cancel
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        """A fresh flag for the generation this session starts now."""
        with self._lock:
            flag = self._flags[session] = threading.Event()
            return flag

    def watch(self, session: str, key: str, on_stop: Callable[[], object]) -> None:
        """Stop calls ``on_stop`` too, until ``forget(session, key)``."""
        with self._lock:
            self._on_stop.setdefault(session, {})[key] = on_stop

    def forget(self, session: str, key: str) -> None:
        with self._lock:
            self._on_stop.get(session, {}).pop(key, None)
            if not self._on_stop.get(session, True):
                del self._on_stop[session]

    def stop(self, session: str) -> None:
        with self._lock:
            flag, on_stop = self._flags.get(session), self._on_stop.pop(session, {})
        if flag is not None:
            flag.set()
        for cancel in on_stop.values():
            cancel()


def _choices(workflow: Workflow) -> list[tuple[str, str]]:
    ready = [(f"{r.name} · {r.trigger_word} · {r.created_at[:19].replace('T', ' ')}", r.id)
             for r in workflow.models(Status.READY)]
    return ready + [(BASE_ONLY, "")]


def _for_images(people: People, request: gr.Request, *models: str | None) -> Workflow:
    """Where a generation is kept: with a model, its owner's workspace (reading finds it, or finds no model);
    from the base model alone, the first image is what makes a new person's workspace."""
    return people(request) if all(models) else people.storing(request)


def _settings(prompt: object, negative_prompt: object, seed: object, steps: object, guidance: object, width: object,
              height: object, num_images: object, lora_scale: object = 1.0) -> GenerateSettings:
    """The form's values, each checked by name first: an API caller may send None for any of them."""
    whole = {label: int(number_field(v, label)) for v, label in
             ((seed, "seed"), (steps, "steps"), (width, "width"), (height, "height"), (num_images, "images"))}
    return GenerateSettings(prompt=text_field(prompt, "prompt"),
                            negative_prompt=text_field(negative_prompt, "negative prompt", required=False),
                            seed=whole["seed"], steps=whole["steps"], guidance=number_field(guidance, "guidance"),
                            width=whole["width"], height=whole["height"],
                            lora_scale=number_field(lora_scale, "LoRA scale"), num_images=whole["images"])


NEW_STILL = "(a new still, drawn from the prompt)"


def _still_choices(workflow: Workflow, model_id: str | None) -> list[tuple[str, str]]:
    """A new still, or one of the person's generations with this model (newest first)."""
    try:
        stills = workflow.stills(model_id or None)
    except ValueError:  # a model deleted since the page loaded
        stills = []
    return [(NEW_STILL, ""), *((still.label, still.ref) for still in stills)]


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
    kind = "An image-to-video clip" if result.kind == IMAGE_TO_VIDEO else f"A {result.kind}"
    return (f"**{kind}** ({result.frames} frames at {result.fps} fps) — {result.why}.\n\n{escaped(likeness)}"
            f"\n\nThe MP4 carries the prompt, seed, models and likeness in its metadata; every frame's score is in "
            f"`{result.likeness_json.name}` beside it.")


def _clip_outputs(result: VideoResult) -> tuple[str, str, pd.DataFrame, dict]:
    # The file's name only: a data-dir path is never shown to the page or an API caller.
    return (served(result.video), _clip_summary(result), _curve(result),
            result.to_dict() | {"video": result.video.name})


HEARTBEAT_SECONDS = 1.0


def followed(workflow: Workflow, job_id: str, progress: gr.Progress) -> Iterator[tuple]:
    """A queued clip on the page: its place in line, then each step (bar with the time left, and the summary line),
    then the clip; a cancelled or failed one as a message. A page that stops listening cancels it.

    It yields at least every ``HEARTBEAT_SECONDS``, even with nothing new to show: Gradio closes the generator of a
    page that went away only while it is paused at a yield (``close()`` is refused while it runs), so a clip waiting
    minutes behind a training would otherwise stay queued for nobody."""
    shown, ended, last = "", False, 0.0
    try:
        for update in workflow.follow_video(job_id):
            if update.result is not None:
                ended = True
                yield _clip_outputs(update.result)
                return
            if update.status in JOB_FINISHED:
                ended = True
                raise gr.Error(escaped(update.error), title="Stopped" if update.status == Status.CANCELLED else None)
            progress((update.done, update.total) if update.total else None, desc=update.text)
            if update.text != shown or time.monotonic() - last >= HEARTBEAT_SECONDS:
                shown, last = update.text, time.monotonic()
                yield gr.update(), f"⏳ {escaped(update.text)}", gr.update(), gr.update()
    finally:
        if not ended:  # the page went away: nobody waits for this clip, so it does not hold the GPU
            workflow.cancel_video(job_id)


def _defaults(workflow: Workflow) -> GenerateSettings:
    size = workflow.test_generate_settings(512)
    return GenerateSettings(prompt="a portrait photo of {trigger}", steps=size.steps, width=size.width,
                            height=size.height)


@dataclass
class Form:
    """What a generation reads, in the order the API takes it (``/generate``; ``/compare`` adds the second model)."""

    model_id: gr.Dropdown
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    seed: gr.Number
    steps: gr.Slider
    guidance: gr.Slider
    lora_scale: gr.Slider
    width: gr.Slider
    height: gr.Slider
    num_images: gr.Slider

    def inputs(self) -> list[gr.components.Component]:
        return [getattr(self, f.name) for f in fields(self)]


@dataclass
class ComparePanel:
    second_model_id: gr.Dropdown
    second_lora_scale: gr.Slider
    button: gr.Button
    sheet: gr.Image


@dataclass
class VideoPanel:
    second_prompt: gr.Textbox
    frames: gr.Slider
    fps: gr.Slider
    still: gr.Dropdown
    button: gr.Button
    video: gr.Video
    summary: gr.Markdown
    curve: gr.LinePlot
    likeness: gr.JSON

    def outputs(self) -> list[gr.components.Component]:
        return [self.video, self.summary, self.curve, self.likeness]


@dataclass
class PlaygroundTab:
    tab: gr.Tab
    form: Form
    generate: gr.Button
    stop: gr.Button
    gallery: gr.Gallery
    compare: ComparePanel
    video: VideoPanel


def _form(d: GenerateSettings) -> Form:
    with gr.Row():
        # Custom values: the API may name a model trained after this page was built.
        model_id = gr.Dropdown(label="Model", choices=[(BASE_ONLY, "")], value="", scale=2, allow_custom_value=True)
        prompt = gr.Textbox(label="Prompt ({trigger} is replaced by the model's trigger word)", value=d.prompt,
                            scale=4)
    negative_prompt = gr.Textbox(label="Negative prompt", value="")
    with gr.Row():
        seed = gr.Number(label="Seed", value=0, precision=0)
        steps = gr.Slider(1, 100, value=d.steps, step=1, label="Steps")
        guidance = gr.Slider(0, 10, value=d.guidance, step=0.5, label="Guidance")
        lora_scale = gr.Slider(0, 2, value=1.0, step=0.05, label="LoRA scale")
    with gr.Row():
        width = gr.Slider(32, 1536, value=d.width, step=16, label="Width")
        height = gr.Slider(32, 1536, value=d.height, step=16, label="Height")
        num_images = gr.Slider(1, 8, value=1, step=1, label="Images")
    return Form(model_id, prompt, negative_prompt, seed, steps, guidance, lora_scale, width, height, num_images)


def _compare_panel() -> ComparePanel:
    with gr.Accordion("Compare: two models, or one model at two LoRA scales, same prompt and seeds", open=False):
        with gr.Row():
            second_model_id = gr.Dropdown(label="Second model", choices=[(BASE_ONLY, "")], value="",
                                          allow_custom_value=True)
            second_lora_scale = gr.Slider(0, 2, value=0.8, step=0.05, label="Second LoRA scale")
        button = gr.Button("Compare")
        sheet = gr.Image(label="Side by side", type="filepath", height=420)
    return ComparePanel(second_model_id, second_lora_scale, button, sheet)


def video_model_line(choice: VideoModelChoice) -> str:
    """Which kind of clip the Video panel makes here, and why, before anyone waits for one."""
    if choice.is_morph:
        return (f"**Video model:** none ({escaped(choice.why)}) — made here as a **morph**: {MORPH_WHY} (start the "
                "app with `--video-model` for motion).")
    return (f"**Video model:** `{escaped(choice.spec)}` ({escaped(choice.why)}) — image-to-video: "
            f"{escaped(why_animated(choice.spec))}. The second prompt, if given, is the motion; otherwise the prompt.")


def _video_panel(video_model: VideoModelChoice) -> VideoPanel:
    # Morph or motion: the line says which before anyone waits.
    with gr.Accordion("Video: a short clip, with the likeness in every frame", open=False):
        gr.Markdown(video_model_line(video_model) + " Each frame's face is judged as the assessment judges a test "
                    "image, against the model's training photos.")
        with gr.Row():
            second_prompt = gr.Textbox(label="Second prompt or motion (optional)")
            frames = gr.Slider(4, 96, value=16, step=1, label="Frames")
            fps = gr.Slider(4, 30, value=8, step=1, label="Frames per second")
        # Custom values: the API may name a generation made after this page was built.
        still = gr.Dropdown(label="Start from (image-to-video only)", choices=[(NEW_STILL, "")], value="",
                            allow_custom_value=True, visible=not video_model.is_morph,
                            info="one of your generations with this model, instead of a new still")
        button = gr.Button("Make video")
        video = gr.Video(label="Clip (MP4, H.264)", height=420)
        summary = gr.Markdown()
        curve = gr.LinePlot(_curve(None), x=CURVE_COLUMNS[0], y=CURVE_COLUMNS[1], color=CURVE_COLUMNS[2],
                            title="Likeness in each frame (recognised above 50 %)", height=240, y_lim=[0, 100])
        with gr.Accordion("Every frame's likeness (JSON, saved beside the clip)", open=False):
            likeness = gr.JSON(label="Frames' likeness")
    return VideoPanel(second_prompt, frames, fps, still, button, video, summary, curve, likeness)


def layout(defaults: GenerateSettings, video_model: VideoModelChoice) -> PlaygroundTab:
    with gr.Tab("5 · Playground", id="playground") as tab:
        form = _form(defaults)
        with gr.Row():
            generate = gr.Button("Generate", variant="primary", scale=3)
            stop = gr.Button("Cancel", scale=1)
        gallery = gr.Gallery(label="Results (PNG with prompt and settings in its metadata)", columns=4, height=420,
                             preview=False, elem_classes=["results-gallery"],
                             object_fit="contain", type="filepath", buttons=["download", "fullscreen"])
        compare = _compare_panel()
        video = _video_panel(video_model)
    return PlaygroundTab(tab, form, generate, stop, gallery, compare, video)


class Handlers:
    """The tab's events. Their parameters are the API's: ``client.view_api()`` lists ``/generate(model_id, prompt,
    negative_prompt, seed, steps, guidance, lora_scale, width, height, num_images)``."""

    def __init__(self, people: People, stops: SessionStops) -> None:
        self.people = people
        self.stops = stops

    def _should_stop(self, request: gr.Request) -> Callable[[], bool]:
        """A fresh Stop flag for the generation this session starts now."""
        return self.stops.start(request.session_hash or "").is_set

    def generate(self, model_id: str, prompt: str, negative_prompt: str, seed: float, steps: float, guidance: float,
                 lora_scale: float, width: float, height: float, num_images: float, request: gr.Request,
                 progress: gr.Progress = gr.Progress()) -> list[tuple[str, str]]:
        settings = _settings(prompt, negative_prompt, seed, steps, guidance, width, height, num_images, lora_scale)
        workflow = _for_images(self.people, request, model_id)
        with refused():
            paths = workflow.generate(model_id or None, settings, on_event=progress_events(progress, "generating"),
                                      should_stop=self._should_stop(request))
        # Each image with its seed, so a good one can be made again (prompt and settings are in the PNG too).
        return [(served(p), f"seed {settings.seed + i}") for i, p in enumerate(paths)]

    def compare(self, model_id: str, prompt: str, negative_prompt: str, seed: float, steps: float, guidance: float,
                lora_scale: float, width: float, height: float, num_images: float, second_model_id: str,
                second_lora_scale: float, request: gr.Request, progress: gr.Progress = gr.Progress()) -> str:
        settings = _settings(prompt, negative_prompt, seed, steps, guidance, width, height, num_images)
        scales = number_field(lora_scale, "LoRA scale"), number_field(second_lora_scale, "second LoRA scale")
        workflow = _for_images(self.people, request, model_id, second_model_id)
        with refused():
            path = workflow.compare((model_id or None, scales[0]), (second_model_id or None, scales[1]), settings,
                                    on_event=progress_events(progress, "generating"),
                                    should_stop=self._should_stop(request))
        return served(path)

    def video(self, model_id: str, prompt: str, second_prompt: str, frames: float, fps: float, seed: float,
              still: str, request: gr.Request, progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
        """Queued behind the trainings and clips before it (one job on the GPU at a time), followed until made."""
        prompt, second_prompt = text_field(prompt, "prompt"), text_field(second_prompt, "second prompt",
                                                                         required=False)
        still = text_field(still, "still", required=False)
        frames, fps, seed = (int(number_field(v, label)) for v, label in
                             ((frames, "frames"), (fps, "frames per second"), (seed, "seed")))
        workflow = _for_images(self.people, request, model_id)
        with refused():
            job = workflow.queue_video(model_id or None, prompt=prompt, prompt_b=second_prompt or None, frames=frames,
                                       fps=fps, seed=seed, video_model=workflow.settings.video_model,
                                       still=still or None)
        session = request.session_hash or ""
        self.stops.watch(session, job.id, lambda: workflow.cancel_video(job.id))
        try:
            yield from followed(workflow, job.id, progress)
        finally:
            self.stops.forget(session, job.id)

    def stills(self, model_id: str, request: gr.Request) -> dict:
        """The generations a clip may start from, for the model now picked."""
        return gr.update(choices=_still_choices(self.people(request), model_id), value="")

    def refresh(self, first: str, second: str, request: gr.Request) -> tuple:
        # A model trained or deleted since the page loaded: offer the current list, newest ready model first.
        choices = _choices(self.people(request))
        ids = [mid for _, mid in choices]
        return tuple(gr.update(choices=choices, value=value if value and value in ids else ids[0])
                     for value in (first, second))

    def stop_drawing(self, request: gr.Request) -> None:
        self.stops.stop(request.session_hash or "")


def wire(view: PlaygroundTab, handlers: Handlers) -> None:
    form, compare, video = view.form, view.compare, view.video
    gpu = {"concurrency_id": "gpu", "concurrency_limit": 1}
    generating = view.generate.click(handlers.generate, form.inputs(), view.gallery, api_name="generate", **gpu)
    comparing = compare.button.click(handlers.compare, [*form.inputs(), compare.second_model_id,
                                                        compare.second_lora_scale], compare.sheet,
                                     api_name="compare", **gpu)
    # Not in the "gpu" concurrency group: the clip waits in the job queue, behind trainings, and runs there.
    filming = video.button.click(handlers.video, [form.model_id, form.prompt, video.second_prompt, video.frames,
                                                  video.fps, form.seed, video.still], video.outputs(),
                                 api_name="video")
    models = [form.model_id, compare.second_model_id]
    view.tab.select(handlers.refresh, models, models, api_name=False)
    for refresh in (view.tab.select, form.model_id.change, generating.then):  # the model's generations, newest too
        refresh(handlers.stills, form.model_id, video.still, api_name=False)
    # Gradio's own cancellation ends the event and the queue moves on; the session's flag stops the drawing
    # itself between two images or frames.
    view.stop.click(handlers.stop_drawing, None, None, cancels=[generating, comparing, filming], api_name=False)


def build(people: People) -> gr.Tab:
    local = people.workspaces.local  # sizes and steps of the base model, and the video model: the same for everyone
    view = layout(_defaults(local), local.video_model_choice())
    wire(view, Handlers(people, SessionStops()))
    return view.tab

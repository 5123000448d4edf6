"""Training tab: press Train, then watch the live log, loss curve, phase, ETA and sample images."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from pipeline.assessment.scores import headline
from pipeline.assessment.verdict import Verdict
from pipeline.events import duration_text
from pipeline.jobs.queue import JobKind
from pipeline.status import MODEL_ACTIVE, MODEL_FINISHED, MODEL_RESUMABLE, Status
from pipeline.training.job import TrainingMonitor
from pipeline.training.series import buckets
from pipeline.workflow import Workflow
from ui.charts import series_frame
from ui.files import served
from ui.handlers import for_person, refused
from ui.models import model_choices
from ui.people import People
from ui.progress import progress_events
from ui.settings import SettingsInputs, settings_from_values
from ui.text import escaped, plain, without_paths

VERDICT_ICONS = {Verdict.READY: "✅", Verdict.LOW_QUALITY: "⚠️", Verdict.NOT_RECOGNISABLE: "❌"}
POLL_SECONDS = 1.0
# The live views are re-sent every poll: their size is bounded, not the run's (issue 33: a 5000-step run sent 10 000
# loss points a second and froze the tab).
LOG_LINES = 100
LOSS_BUCKETS = 160  # ≤ 2 raw + 1 smoothed rows each: ≤ 480 rows
LOSS_EXACT = 40  # the latest steps drawn as reported
IDLE = "Upload photos, check them on the Review tab, then press Train. Pick a model under *Watch a model* to see " \
       "an earlier or queued training."


def _loss_frame(monitor: TrainingMonitor) -> pd.DataFrame:
    """At most ~3 × LOSS_BUCKETS rows however long the run (it is re-sent and redrawn on every poll): per bucket of
    steps the raw loss's lowest and highest step (its noise band) and the smoothed loss's mean.

    Rows go bucket by bucket: a poll changes only the last buckets' rows and adds some at the end, so Gradio's diff
    of the frame stays small."""
    raw = buckets([(s, loss) for s, loss, _ in monitor.losses], LOSS_BUCKETS, exact=LOSS_EXACT)
    smooth = buckets([(s, sm) for s, _, sm in monitor.losses], LOSS_BUCKETS, exact=LOSS_EXACT)
    rows: list[tuple[int, float, str]] = []
    for band, trend in zip(raw, smooth, strict=True):
        rows += [(step, value, "loss") for step, value in band.extremes()]
        rows.append((*trend.middle, "smoothed"))
    return series_frame(rows, ("step", "loss", "series"), ("loss", "smoothed"))


def _likeness_frame(monitor: TrainingMonitor) -> pd.DataFrame:
    rows = [(s, like * 100, "likeness %") for s, like, _ in monitor.assessments]
    rows += [(s, overall, "overall score") for s, _, overall in monitor.assessments]
    return series_frame(rows, ("step", "score", "measure"), ("likeness %", "overall score"))


def _log_text(lines: list[str]) -> str:
    """The log's last LOG_LINES lines, newest first (Gradio's autoscroll does not follow a streamed textbox), with
    runs of the same line folded into one ("… ×16"): per-photo progress would drown the rest.

    Read from the end and only as far as it shows: the whole text is re-sent on every poll (newest first, it is
    never an append), so its cost must not grow with the run."""
    folded: list[list] = []
    for line in reversed(lines):
        if folded and folded[-1][0] == line:
            folded[-1][1] += 1
        elif len(folded) == LOG_LINES:
            break
        else:
            folded.append([line, 1])
    # Server paths out: where the data dir lies is the operator's business (issue 32; the journal keeps them).
    return without_paths("\n".join(text if n == 1 else f"{text}  ×{n}" for text, n in folded))


def _step_lines(monitor: TrainingMonitor, status: Status) -> list[str]:
    """The last step's figures, and while the final assessment runs (minutes without a step) its own progress; the
    time left counts down between steps and through the assessment (``TrainingMonitor.time_left``)."""
    step, left = monitor.last_step, monitor.time_left()
    if step is None or left is None:
        return []
    running = status in (Status.TRAINING, Status.ASSESSING)
    parts = [f"Step **{step.step}/{step.total_steps}**", f"phase *{step.phase}*"]
    parts += [f"{step.resolution} px"] if step.resolution else []
    parts += [f"{step.seconds_per_step:.2f} s/step"] + ([f"ETA {duration_text(left)}"] if running else [])
    parts += [f"loss {step.loss_smooth:.4f}"] + ([f"GPU {step.gpu_memory_gb:.1f} GB"] if step.gpu_memory_gb else [])
    lines = [" · ".join(parts)]
    if status == Status.ASSESSING:
        doing = f": {monitor.assessing.message}" if monitor.assessing else ""
        when = f"about {duration_text(left)} left" if left > 0 else "taking longer than estimated"
        lines.append(f"🔎 Final assessment{doing} · {when}")
    return lines


def _status(workflow: Workflow, monitor: TrainingMonitor) -> str:
    record = workflow.model(monitor.model_id)
    lines = [f"### {plain(record.name)} — {monitor.status}", f"Trigger word: **{plain(record.trigger_word)}**"]
    ahead = workflow.jobs_ahead(monitor.model_id)
    if ahead:
        lines.append(f"⏳ Waiting in the queue: {ahead} training(s) ahead (one runs at a time per GPU).")
    lines += _step_lines(monitor, record.status)
    if record.status == Status.CANCELLED:
        # Resume is the button that applies (Train would start over, from the Settings tab's values).
        since = (f"its last checkpoint (step {monitor.checkpoints[-1]})" if monitor.checkpoints
                 else "the start (no checkpoint was saved yet)")
        lines.append(f"⏹ Stopped. Press **Resume** to go on from {since}.")
    elif record.error:
        lines.append(f"❌ {without_paths(record.error)}")
    if record.status == Status.READY and record.scores:
        icon = VERDICT_ICONS.get(record.scores.verdict, "")
        lines.append(f"Training finished. {icon} **{headline(record.status, record.scores)}.** "
                     f"{record.scores.verdict_text} (overall "
                     f"{record.scores.overall or 0:.0f}/100) — try it on the Playground tab; its files are on "
                     "the Models tab.")
    return "\n\n".join(lines)


def _render(workflow: Workflow, model_id: str) -> tuple:
    monitor = workflow.training_view(model_id)
    samples = [(served(path), f"step {step}: {prompt}") for step, path, prompt in reversed(monitor.samples[-12:])]
    return (_status(workflow, monitor), _log_text(monitor.log), _loss_frame(monitor),
            _likeness_frame(monitor), samples)


def cluster_text(workflow: Workflow) -> str | None:
    """The Ray cluster's nodes and the queue with each training's node; None when trainings run in the app."""
    view = workflow.cluster()
    if view is None:
        return None
    alive = [n for n in view.nodes if n.alive]
    lines = [f"**Ray cluster** `{plain(view.address)}`: {len(alive)} node(s), {view.cpus:g} CPU, {view.gpus:g} GPU"]
    lines += [f"- node `{n.node_id[:8]}` {plain(n.address)} · {n.cpus:g} CPU · {n.gpus:g} GPU"
              + ("" if n.alive else " · gone") for n in view.nodes]
    entries = workflow.queue()
    lines.append("" if entries else "No training runs or waits.")
    for entry in entries:
        who = f"'{plain(entry.name)}'" if entry.name else "another person's training"
        if entry.kind == JobKind.VIDEO:  # a clip waits for the GPU in the same queue
            who = f"a video of '{plain(entry.name)}'" if entry.name else "another person's video"
        where = f" on node `{entry.node[:8]}`" if entry.node and entry.status == Status.RUNNING else ""
        lines.append(f"- {who}: {entry.status}{where}")
    return "\n".join(lines)


@dataclass
class TrainingTab:
    tab: gr.Tab
    train: gr.Button
    anyway: gr.Checkbox
    stop: gr.Button
    resume: gr.Button
    watch: gr.Dropdown
    status: gr.Markdown
    cluster: gr.Markdown
    plot: gr.LinePlot
    likeness: gr.LinePlot
    samples: gr.Gallery
    log: gr.Textbox
    model_id: gr.Textbox
    # The page's current watcher: a new Train or watch retires the previous loop, so two loops never take turns
    # drawing different models into the same components.
    watcher: gr.State

    def outputs(self) -> list[gr.components.Component]:
        """What every render fills (``_render`` and the model's id)."""
        return [self.status, self.log, self.plot, self.likeness, self.samples, self.model_id]


def _charts() -> tuple[gr.LinePlot, gr.LinePlot]:
    # Steps are whole numbers (",d"): with one point, Vega labelled its only tick "1,000.000000".
    with gr.Row():
        plot = gr.LinePlot(series_frame([], ("step", "loss", "series"), ("loss", "smoothed")), x="step",
                           y="loss", color="series", title="Training loss", height=300, scale=3,
                           x_axis_format=",d", y_axis_format="~g", elem_id="loss-chart")
        likeness = gr.LinePlot(series_frame([], ("step", "score", "measure"), ("likeness %", "overall score")),
                               x="step", y="score", color="measure", title="Likeness by checkpoint (%, /100)",
                               height=300, scale=2, y_lim=[0, 100], x_axis_format=",d",
                               elem_id="likeness-chart")
    return plot, likeness


def layout() -> TrainingTab:
    with gr.Tab("4 · Training", id="training") as tab:
        with gr.Row():
            with gr.Column(scale=2, min_width=160):
                train = gr.Button("Train", variant="primary")
                anyway = gr.Checkbox(label="Train even if the photos are not ready", value=False)
            stop = gr.Button("Stop", variant="stop", scale=1, interactive=False)
            resume = gr.Button("Resume", scale=1, interactive=False)
            watch = gr.Dropdown(label="Watch a model", choices=[], value=None, scale=3,
                                allow_custom_value=True)
        status = gr.Markdown(IDLE)
        cluster = gr.Markdown(visible=False, elem_id="cluster-view")
        plot, likeness = _charts()
        samples = gr.Gallery(label="Samples as it learns (newest first)", columns=6, height=220,
                             object_fit="contain")
        log = gr.Textbox(label="Log (newest first)", lines=14, max_lines=14, autoscroll=False)
        model_id = gr.Textbox(label="Model id", interactive=False)
        watcher = gr.State({})
    return TrainingTab(tab, train, anyway, stop, resume, watch, status, cluster, plot, likeness, samples, log,
                       model_id, watcher)


# The handlers. Those named ``_…`` act for one person (``for_person`` finds their workflow): their parameters after
# the workflow are the API's (``/watch_training(mid)``; ``current`` is the page's watcher state).

def _starter(people: People, names: list[str], outputs: int) -> Callable[..., Iterator[tuple]]:
    """The Train button's handler: the Settings tab's values (``names``), "train anyway" and the watcher."""

    def start(request: gr.Request, *values) -> Iterator[tuple]:
        *values, train_anyway, current, progress = values  # Gradio puts each where __signature__ below says
        workflow = people(request)
        # Progress is drawn here, not by Gradio's overlay: a refusal (e.g. "not ready") is then a message that
        # leaves the page as it was, instead of red "Error" badges over every panel.
        yield ("### Preparing…\n\n⏳ Checking the photos and cutting the face crops (a few seconds).",
               *(gr.skip(),) * (outputs - 1))
        # Classifying and cropping the photos, before the job is queued.
        on_event = progress_events(progress, "preparing the photos", use_messages=True)
        with refused("Check the Settings tab: "):
            train_settings = settings_from_values(names, list(values), workflow.default_train_settings())
            train_settings.validate()
        with refused():
            record = workflow.start_training(train_settings, anyway=bool(train_anyway), on_event=on_event)
            yield from _follow(workflow, record.id, current)

    # The API names each value as its setting (``/train(name, steps, learning_rate, …)``, not param_0 … param_16):
    # Gradio reads a handler's parameter names from its signature.
    named = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
             for n in ["request", *names, "train_anyway", "current"]]
    progress = inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress())
    start.__signature__ = inspect.Signature([*named, progress])
    return start


def _follow(workflow: Workflow, mid: str, current: dict) -> Iterator[tuple]:
    # Renders ``mid`` every POLL_SECONDS until it finishes or the page watches another model (a deleted model or a
    # mistyped id: its error). No docstring: Gradio would show it as /watch_training's description.
    if not mid:
        return
    token = current["token"] = object()
    workflow.model(mid)
    while current.get("token") is token:
        # Read the status before rendering: a run that finishes between the two still gets its final
        # state rendered (on the next pass), so the last update is never a stale "assessing".
        finished = workflow.model(mid).status in MODEL_FINISHED
        yield (*_render(workflow, mid), mid)
        if finished:
            return
        time.sleep(POLL_SECONDS)


def _cancel(workflow: Workflow, mid: str) -> str:
    record = workflow.model(mid)
    if record.status in MODEL_FINISHED:
        gr.Info(f"'{escaped(record.name)}' has already finished ({record.status}); nothing to stop.")
        return _status(workflow, workflow.training_view(mid))
    workflow.cancel_training(mid)
    return (f"### {plain(record.name)} — stopping\n\nStopping at the next step; the last checkpoint is kept "
            "and **Resume** goes on from it.")


def _resume(workflow: Workflow, mid: str, current: dict) -> Iterator[tuple]:
    workflow.resume_training(mid)
    yield from _follow(workflow, mid, current)


def _on_open(workflow: Workflow, mid: str, current: dict) -> Iterator[tuple]:
    """Opening the tab with nothing shown (e.g. after a page reload) follows the run in progress, if any."""
    if mid:
        return
    busy = [r for r in workflow.models() if r.status in MODEL_ACTIVE]
    running = [r for r in busy if r.status != Status.QUEUED] or busy[::-1]  # else the oldest waiting one
    # Nothing running: the latest model, so the tab is never blank once something was trained.
    shown = running or workflow.models()[:1]
    if shown:
        yield from _follow(workflow, shown[0].id, current)


def _buttons(workflow: Workflow, mid: str) -> tuple:
    """Stop only while a run waits or trains; Resume only for a stopped or failed one."""
    try:
        state = workflow.model(mid).status if mid else ""
    except ValueError:
        state = ""
    return (gr.update(interactive=state in MODEL_ACTIVE),
            gr.update(interactive=state in MODEL_RESUMABLE))


def _show_cluster(workflow: Workflow) -> dict:
    text = cluster_text(workflow)
    return gr.update(value=text or "", visible=text is not None)


def _refresh(workflow: Workflow, mid: str) -> dict:
    return gr.update(choices=model_choices(workflow), value=mid or None)


def wire(view: TrainingTab, people: People, settings: SettingsInputs) -> None:
    outputs, hidden = view.outputs(), {"show_progress": "hidden"}
    refresh = (for_person(people)(_refresh), view.model_id, view.watch)
    start = _starter(people, list(settings.components), len(outputs))
    # "multiple": a second Train while one runs queues a second model (Gradio ignores it by default).
    view.train.click(start, [*settings.as_list(), view.anyway, view.watcher], outputs, api_name="train",
                     trigger_mode="multiple", **hidden).then(
        *refresh, api_name=False)  # the list shows the run's final status
    # .input, not .change: the dropdown also shows the model that Train started, without a second watcher.
    view.watch.input(for_person(people)(_follow), [view.watch, view.watcher], outputs,
                     api_name="watch_training").then(*refresh, api_name=False)
    # The watcher keeps running after Stop, so the page shows the run end ("cancelled") by itself.
    cancel = for_person(people, missing="Nothing is training: press Train, or pick a model under 'Watch a model'.")
    view.stop.click(cancel(_cancel), view.model_id, view.status, api_name="stop_training", **hidden)
    resume = for_person(people, missing="Pick the stopped model under 'Watch a model' first.")
    view.resume.click(resume(_resume), [view.model_id, view.watcher], outputs, api_name="resume_training",
                      **hidden).then(*refresh, api_name=False)
    # Each render may change the status: the buttons follow it.
    view.status.change(for_person(people)(_buttons), view.model_id, [view.stop, view.resume], api_name=False,
                       **hidden)
    view.model_id.change(*refresh, api_name=False)
    view.tab.select(*refresh, api_name=False)
    view.tab.select(for_person(people)(_show_cluster), None, view.cluster, api_name=False, **hidden)
    view.tab.select(for_person(people)(_on_open), [view.model_id, view.watcher], outputs, api_name=False).then(
        *refresh, api_name=False)  # its label then shows the final status, not "(training)"


def build(people: People, settings: SettingsInputs) -> gr.Tab:
    view = layout()
    wire(view, people, settings)
    return view.tab

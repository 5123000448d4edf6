"""Training tab: press Train, then watch the live log, loss curve, phase, ETA and sample images."""

from __future__ import annotations

import time
from collections.abc import Iterator

import gradio as gr
import pandas as pd

from pipeline.workflow import TERMINAL_STATUSES, TrainingMonitor, Workflow
from ui.settings import SettingsInputs, settings_from_values

POLL_SECONDS = 1.0


def _loss_frame(monitor: TrainingMonitor) -> pd.DataFrame:
    rows = [(s, raw, "loss") for s, raw, _ in monitor.losses] + [(s, sm, "smoothed") for s, _, sm in monitor.losses]
    return pd.DataFrame(rows, columns=["step", "loss", "series"])


def _likeness_frame(monitor: TrainingMonitor) -> pd.DataFrame:
    rows = [(s, like * 100, "likeness %") for s, like, _ in monitor.assessments]
    rows += [(s, overall, "overall score") for s, _, overall in monitor.assessments]
    return pd.DataFrame(rows, columns=["step", "score", "measure"])


def _status(workflow: Workflow, monitor: TrainingMonitor) -> str:
    record = workflow.library.get(monitor.model_id)
    lines = [f"### {record.name} — {monitor.status}", f"Trigger word: `{record.trigger_word}`"]
    ahead = workflow.jobs_ahead(monitor.model_id)
    if ahead:
        lines.append(f"⏳ Waiting in the queue: {ahead} training(s) ahead (one runs at a time per GPU).")
    step = monitor.last_step
    if step:
        lines.append(f"Step **{step.step}/{step.total_steps}** · phase *{step.phase}* · "
                     f"{step.seconds_per_step:.2f} s/step · ETA {step.eta_seconds:.0f} s · loss {step.loss_smooth:.4f}")
    if record.error:
        lines.append(f"❌ {record.error}")
    if record.status == "ready" and record.scores:
        lines.append(f"✅ {record.scores.get('verdict_text', '')} (overall {record.scores.get('overall', 0):.0f}/100)")
    return "\n\n".join(lines)


def _render(workflow: Workflow, model_id: str) -> tuple:
    monitor = workflow.training_view(model_id)
    samples = [(str(path), f"step {step}: {prompt}") for step, path, prompt in monitor.samples[-12:]]
    return (_status(workflow, monitor), "\n".join(monitor.log[-400:]), _loss_frame(monitor),
            _likeness_frame(monitor), samples)


def _model_choices(workflow: Workflow) -> list[tuple[str, str]]:
    return [(f"{r.name} ({r.status})", r.id) for r in workflow.library.list()]


def build(workflow: Workflow, settings: SettingsInputs) -> gr.Tab:
    names = list(settings.components)
    with gr.Tab("4 · Training", id="training") as tab:
        with gr.Row():
            train = gr.Button("Train", variant="primary", scale=2)
            stop = gr.Button("Stop", variant="stop", scale=1)
            watch = gr.Dropdown(label="Watch a model", choices=_model_choices(workflow), scale=3,
                                allow_custom_value=True)
        status = gr.Markdown("Upload photos, check them on the Review tab, then press Train.")
        with gr.Row():
            plot = gr.LinePlot(x="step", y="loss", color="series", title="Training loss", height=300, scale=3)
            likeness = gr.LinePlot(x="step", y="score", color="measure", title="Likeness by checkpoint",
                                   height=300, scale=2)
        samples = gr.Gallery(label="Samples as it learns", columns=6, height=220)
        log = gr.Textbox(label="Log", lines=14, max_lines=14, autoscroll=True)
        model_id = gr.Textbox(label="Model id", interactive=False)

        def start(*values) -> Iterator[tuple]:
            try:
                train_settings = settings_from_values(names, list(values))
                record = workflow.start_training(train_settings)
            except ValueError as exc:
                raise gr.Error(str(exc)) from exc
            yield from follow(record.id)

        def follow(mid: str) -> Iterator[tuple]:
            if not mid:
                return
            while True:
                rendered = _render(workflow, mid)
                yield (*rendered, mid)
                if workflow.library.get(mid).status in TERMINAL_STATUSES:
                    return
                time.sleep(POLL_SECONDS)

        def cancel(mid: str) -> str:
            if not mid:
                raise gr.Error("Nothing is training.")
            workflow.cancel_training(mid)
            return "Stopping at the next step; the last checkpoint is kept."

        outputs = [status, log, plot, likeness, samples, model_id]
        run_event = train.click(start, settings.as_list(), outputs, api_name="train")
        watch_event = watch.change(follow, watch, outputs, api_name="watch_training")
        stop.click(cancel, model_id, status, api_name="stop_training", cancels=[run_event, watch_event])
        tab.select(lambda: gr.update(choices=_model_choices(workflow)), None, watch, api_name=False)
    return tab

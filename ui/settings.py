"""Settings tab: model name, steps, learning rate, batch size, resolutions; advanced settings folded away."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gradio as gr

from pipeline.estimate import TrainingEstimate, embedded_kind
from pipeline.settings import TrainSettings, coerce
from pipeline.status import Status
from ui.people import People
from ui.text import plain


@dataclass
class SettingsInputs:
    """The components the Training tab reads when the user presses Train (order = TrainSettings fields)."""

    components: dict[str, gr.components.Component]

    def as_list(self) -> list[gr.components.Component]:
        return list(self.components.values())


def settings_from_values(names: list[str], values: list, defaults: TrainSettings) -> TrainSettings:
    """The form's (or an API caller's) values over the base model's ``defaults`` (the fields the form does not show
    keep those, not the dataclass's); a missing or malformed value names its field."""
    kwargs = {**dataclasses.asdict(defaults), **dict(zip(names, values, strict=True))}
    kwargs["trigger_word"] = (kwargs.get("trigger_word") or "").strip()
    if "test_prompts" in kwargs:  # one prompt per line; empty: the built-in set
        kwargs["test_prompts"] = tuple(line.strip() for line in str(kwargs["test_prompts"] or "").splitlines()
                                       if line.strip())
    return coerce(TrainSettings, kwargs)


def size_hints(base_model: str, defaults: TrainSettings) -> dict[str, str]:
    """The hints that depend on the base: FLUX.1-dev's sizes are no advice next to the micro model's 96 px."""
    kind = embedded_kind(base_model)
    if kind is None:
        return {"resolution": "the size most steps train at: 512 learns a face fast, 1024 adds detail",
                "rank": "capacity of the LoRA: 16 holds a face; more learns faster, overfits sooner",
                "memory_mode": "how the base model is held: auto picks by free GPU memory "
                               "(bf16 ≥ 40 GB, fp8 24 GB, nf4 16 GB, offload 12 GB)"}
    return {"resolution": f"the {kind} model draws at {defaults.resolution} px: train at {defaults.resolution} "
                          "(larger sizes only slow it down; 512–1024 are for FLUX.1-dev)",
            "rank": f"capacity of the LoRA: {defaults.rank} is this model's default; more learns faster, overfits "
                    "sooner",
            "memory_mode": f"the {kind} model trains on the CPU in float32 whatever is chosen here: memory modes are "
                           "for FLUX.1-dev on a GPU"}


def estimate_markdown(estimate: TrainingEstimate) -> str:
    """The estimate's sentence, then its parts one per line (what the person will wait for, in order)."""
    parts = [f"- {line}" for line in estimate.breakdown()]
    return "\n".join([f"⏱ {estimate.text()}", *([""] + parts if parts else [])])  # a blank line opens the list


def build(people: People, demo: gr.Blocks) -> SettingsInputs:
    workflow = people.workspaces.local  # the base model's defaults: the same for everyone
    defaults = workflow.default_train_settings()
    hints = size_hints(workflow.base_model, defaults)
    with gr.Tab("2 · Settings", id="settings"):
        gr.Markdown(
            f"Base model: **{workflow.base_model}**. Defaults work for a face; change them only if you know why. "
            "They apply to the next run you start with **Train** on the Training tab."
        )
        c: dict[str, gr.components.Component] = {}
        with gr.Row():
            c["name"] = gr.Textbox(label="Model name", value=defaults.name,
                                   info="how the model is listed; the trigger word, not the name, brings you in")
            c["steps"] = gr.Number(label="Training steps", value=defaults.steps, precision=0, minimum=1,
                                   info="more steps learn the face more closely; too many copy the photos' "
                                        "clothes and light. The best checkpoint is chosen by measurement")
            c["learning_rate"] = gr.Number(label="Learning rate", value=defaults.learning_rate,
                                           info="how big each step is: higher learns faster but can overshoot "
                                                "(noisy loss, burnt images)")
        with gr.Row():
            c["batch_size"] = gr.Number(label="Batch size (0 = automatic from photos and memory)",
                                        value=defaults.batch_size, precision=0, minimum=0,
                                        info="photos per step; automatic fits the GPU and the photo count")
            c["resolution"] = gr.Dropdown(label="Resolution (px)", value=defaults.resolution,
                                          choices=sorted({defaults.resolution, 512, 768, 1024}),
                                          info=hints["resolution"])
            c["finish_resolution"] = gr.Dropdown(
                label="Finish at (px): the last quarter of the steps, if above the resolution",
                value=defaults.finish_resolution,
                choices=[("none", 0)] + [(str(r), r) for r in sorted({defaults.finish_resolution, 768, 1024} - {0})])
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                c["trigger_word"] = gr.Textbox(label="Trigger word (empty: generated)", value="")
                c["rank"] = gr.Number(label="LoRA rank", value=defaults.rank, precision=0, minimum=1,
                                    info=hints["rank"])
                c["alpha"] = gr.Number(label="LoRA alpha", value=defaults.alpha,
                                     info="scales the LoRA's effect (alpha / rank); equal to the rank is neutral")
                c["seed"] = gr.Number(label="Seed", value=defaults.seed, precision=0,
                                    info="the same seed, photos and settings train the same LoRA")
            with gr.Row():
                c["memory_mode"] = gr.Dropdown(label="Memory mode", value=defaults.memory_mode,
                                               choices=["auto", "bf16", "fp8", "nf4", "offload"],
                                               info=hints["memory_mode"])
                c["optimizer"] = gr.Dropdown(label="Optimizer (8-bit needs bitsandbytes and a GPU)",
                                             value=defaults.optimizer, choices=["adamw", "adamw8bit"],
                                             info="8-bit keeps the optimizer's memory 4x smaller")
                c["checkpoint_every"] = gr.Number(label="Checkpoint every N steps", value=defaults.checkpoint_every,
                                                  precision=0, minimum=1,
                                                  info="each checkpoint is tested for likeness; Resume starts there")
                c["sample_every"] = gr.Number(label="Sample images every N steps", value=defaults.sample_every,
                                              precision=0, minimum=1,
                                              info="pictures on the Training tab as the face appears")
                c["caption_dropout"] = gr.Slider(label="Caption dropout", minimum=0, maximum=0.5, step=0.01,
                                                 value=defaults.caption_dropout,
                                                 info="share of steps trained without a caption: the face then "
                                                      "comes with the trigger word less exclusively")
            c["test_prompts"] = gr.Textbox(
                label="Test prompts for the assessment, one per line ({trigger} = the trigger word); "
                      "empty: the built-in portrait, style, setting and expression set",
                value="\n".join(defaults.test_prompts), lines=3)
            reset = gr.Button("Back to the defaults", size="sm")
        estimate = gr.Markdown(elem_id="estimate")

    names = list(c)
    # The form is kept in the person's workspace as they type: a reload (or another device with the same login)
    # shows what they chose, instead of silently training on the defaults.
    def restore(request: gr.Request) -> tuple:
        draft = people(request).settings_draft()
        return tuple(draft[name] if name in draft else gr.skip() for name in names)

    def save(request: gr.Request, *values) -> None:  # the request first: Gradio injects it by position
        # Fired by the person typing (``.input``, not by the page restoring the form): storing what they chose.
        people.storing(request).save_settings_draft(dict(zip(names, values, strict=True)))

    def back_to_defaults(request: gr.Request) -> tuple:
        workflow = people.existing(request)
        if workflow is not None:  # nobody's draft to clear: no workspace is made for it
            workflow.save_settings_draft({})
        fresh = dataclasses.asdict(defaults)
        fresh["test_prompts"] = "\n".join(defaults.test_prompts)
        fresh["trigger_word"] = ""
        return tuple(fresh[name] for name in names)

    def estimate_text(request: gr.Request, *values) -> str:
        workflow = people(request)
        try:
            chosen = settings_from_values(names, list(values), workflow.default_train_settings()).validate()
        except ValueError as exc:
            return f"⏱ No estimate until the settings are valid: {plain(exc)}"
        active = [entry.status for entry in workflow.queue()]
        estimate = workflow.estimate(chosen).with_queue(running=active.count(Status.RUNNING),
                                                        waiting=active.count(Status.QUEUED))
        return estimate_markdown(estimate)

    demo.load(restore, None, list(c.values()), api_name=False).then(
        estimate_text, list(c.values()), estimate, api_name=False, show_progress="hidden")
    # Every setting the time depends on: checkpoints and samples are parts of it, a test prompt an image a checkpoint.
    gr.on([c[name].change for name in ("steps", "batch_size", "resolution", "finish_resolution", "rank",
                                       "memory_mode", "optimizer", "checkpoint_every", "sample_every",
                                       "test_prompts")],
          estimate_text, list(c.values()), estimate, api_name=False, show_progress="hidden")
    gr.on([component.input for component in c.values()], save, list(c.values()), None, api_name=False,
          show_progress="hidden", queue=False)
    reset.click(back_to_defaults, None, list(c.values()), api_name=False)
    return SettingsInputs(c)

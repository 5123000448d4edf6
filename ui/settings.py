"""Settings tab: model name, steps, learning rate, batch size, resolutions; advanced settings folded away.

The form is built from TrainSettings' field declarations (``pipeline.settings.Setting``): a field in the basic or
advanced group is a component here, in field order, with its label, help, choices and widget; nothing in this module
names a setting.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipeline.events import duration_text
from pipeline.models.base_choice import BaseModelPick
from pipeline.settings import (
    GPU_MEMORY_MODES,
    Group,
    Setting,
    TrainSettings,
    Widget,
    coerce,
    declaration,
    declared_fields,
)
from pipeline.training.estimate import BaseModelChoice, TrainingEstimate, base_model_choices, embedded_kind
from ui.people import People
from ui.text import plain

FORM_GROUPS = (Group.BASIC, Group.ADVANCED)
_COMPONENTS: dict[Widget, type[gr.components.Component]] = {
    Widget.TEXT: gr.Textbox, Widget.LINES: gr.Textbox, Widget.NUMBER: gr.Number, Widget.DROPDOWN: gr.Dropdown,
    Widget.SLIDER: gr.Slider, Widget.CHECKBOX: gr.Checkbox,
}


@dataclass
class SettingsInputs:
    """The components the Training tab reads when the user presses Train (order = the form's, basic then advanced;
    the train API takes its values in this order)."""

    components: dict[str, gr.components.Component]

    def as_list(self) -> list[gr.components.Component]:
        return list(self.components.values())


@dataclass(frozen=True)
class FormItem:
    """One setting on the form: which component, with which arguments, where (group and row)."""

    name: str
    group: Group
    row: int
    component: type[gr.components.Component]
    kwargs: dict[str, Any]

    def make(self) -> gr.components.Component:
        return self.component(**self.kwargs)


def to_form(setting: Setting, value: Any) -> Any:
    """A setting's value as its component shows it (a tuple of prompts: one per line)."""
    return "\n".join(value) if setting.widget is Widget.LINES else value


def from_form(setting: Setting, value: Any) -> Any:
    """A component's (or an API caller's) value for the setting: lines back to a tuple, text stripped."""
    if setting.widget is Widget.LINES:  # one item per line; empty: none
        return tuple(line.strip() for line in str(value or "").splitlines() if line.strip())
    if setting.widget is Widget.TEXT:
        return str(value or "").strip()
    return value


def settings_from_values(names: list[str], values: list, defaults: TrainSettings) -> TrainSettings:
    """The form's (or an API caller's) values over the base model's ``defaults`` (the fields the form does not show
    keep those, not the dataclass's); a missing or malformed value names its field."""
    fields = {f.name: declaration(f) for f in dataclasses.fields(defaults)}
    given = {name: from_form(fields[name], value) if name in fields else value
             for name, value in zip(names, values, strict=True)}  # an unknown name: coerce names it
    return coerce(type(defaults), {**dataclasses.asdict(defaults), **given})


def size_hints(base_model: str, defaults: TrainSettings) -> dict[str, str]:
    """Each form field's help on this base: FLUX.1-dev's sizes are no advice next to the micro model's 96 px (the
    texts are the fields' declarations)."""
    kind = embedded_kind(base_model)
    return {f.name: declaration(f).info_for(kind, getattr(defaults, f.name))
            for f in declared_fields(type(defaults), *FORM_GROUPS)}


def _choices(setting: Setting, default: Any) -> list[tuple[str, Any]]:
    values = setting.choices if default in setting.choices else sorted({*setting.choices, default})
    return [(setting.shows(value), value) for value in values]


def form_item(settings_field: dataclasses.Field, default: Any, info: str) -> FormItem:
    """The component of one setting, showing ``default`` (the base model's) with ``info`` under its label."""
    setting = declaration(settings_field)
    kwargs: dict[str, Any] = {"label": setting.label, "value": to_form(setting, default), "info": info or None,
                              "minimum": setting.minimum, "maximum": setting.maximum, "step": setting.step}
    if setting.widget is Widget.NUMBER and isinstance(default, int):
        kwargs["precision"] = 0
    elif setting.widget is Widget.DROPDOWN:
        kwargs["choices"] = _choices(setting, default)
    elif setting.widget is Widget.LINES:
        kwargs["lines"] = setting.lines
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    return FormItem(settings_field.name, setting.group, setting.row, _COMPONENTS[setting.widget], kwargs)


def form_spec(defaults: TrainSettings, hints: dict[str, str] | None = None) -> list[FormItem]:
    """The form, field by field in its order (basic, then advanced), for a base with these ``defaults``."""
    hints = hints or {}
    return [form_item(f, getattr(defaults, f.name), hints.get(f.name, declaration(f).info))
            for f in declared_fields(type(defaults), *FORM_GROUPS)]


def place(items: list[FormItem]) -> dict[str, gr.components.Component]:
    """The components of ``items``, a gr.Row per row (a row of one component takes the full width)."""
    components: dict[str, gr.components.Component] = {}
    for _, row in itertools.groupby(items, key=lambda item: item.row):
        row = list(row)
        if len(row) == 1:
            components[row[0].name] = row[0].make()
            continue
        with gr.Row():
            components.update((item.name, item.make()) for item in row)
    return components


def estimate_markdown(estimate: TrainingEstimate) -> str:
    """The estimate's sentence, then its parts one per line (what the person will wait for, in order)."""
    parts = [f"- {line}" for line in estimate.breakdown()]
    return "\n".join([f"⏱ {estimate.text()}", *([""] + parts if parts else [])])  # a blank line opens the list


def base_models_markdown(choices: tuple[BaseModelChoice, ...], current: str) -> str:
    """The models one could train on instead, each family's, for these settings: licence, GPU memory per mode, the
    steps' time on an H100 (FLUX.1-dev's measured times scaled by each model's step FLOPs: not measured per model)."""
    rows = ["| base model (`--base-model`) | family | licence | GPU memory: bf16 / fp8 / nf4 / offload | "
            "steps on an H100 in bf16 (estimated: FLUX.1-dev's measured times × step FLOPs) |",
            "| --- | --- | --- | --- | --- |"]
    for choice in choices:
        variant = choice.variant
        memory = " / ".join(f"{choice.memory_gb[mode]:g}" for mode in GPU_MEMORY_MODES)
        in_use = " **(in use)**" if variant.hub_id == current else ""
        rows.append(f"| {variant.name}{in_use}: `{variant.hub_id}` | {choice.family} | {variant.licence} | "
                    f"{memory} GB | {duration_text(choice.h100_seconds)} |")
    return "\n".join([f"In use: **{current}**. Other base models for these settings (start the app with "
                      "`--base-model` to switch; a LoRA only fits the base it was trained on):", "", *rows])


def base_model_line(pick: BaseModelPick) -> str:
    """The base model trainings use, and why where ``--base-model auto`` chose it."""
    why = f" — chosen by `--base-model auto`, {pick.why}" if pick.mode else ""
    return f"Base model: **{pick.spec}**{why}."


class _Handlers:
    """The tab's events for one form: ``names`` are its settings in the components' order."""

    def __init__(self, people: People, names: list[str], defaults: TrainSettings) -> None:
        self.people, self.names, self.defaults = people, names, defaults
        self.fields = {f.name: declaration(f) for f in dataclasses.fields(defaults)}

    # The form is kept in the person's workspace as they type: a reload (or another device with the same login)
    # shows what they chose, instead of silently training on the defaults.
    def restore(self, request: gr.Request) -> tuple:
        draft = self.people(request).settings_draft()
        return tuple(draft[name] if name in draft else gr.skip() for name in self.names)

    def save(self, request: gr.Request, *values) -> None:  # the request first: Gradio injects it by position
        # Fired by the person typing (``.input``, not by the page restoring the form): storing what they chose.
        self.people.storing(request).save_settings_draft(dict(zip(self.names, values, strict=True)))

    def back_to_defaults(self, request: gr.Request) -> tuple:
        workflow = self.people.existing(request)
        if workflow is not None:  # nobody's draft to clear: no workspace is made for it
            workflow.save_settings_draft({})
        return tuple(to_form(self.fields[name], getattr(self.defaults, name)) for name in self.names)

    def estimate_text(self, request: gr.Request, *values) -> str:
        workflow = self.people(request)
        try:
            chosen = settings_from_values(self.names, list(values), workflow.default_train_settings()).validate()
        except ValueError as exc:
            return f"⏱ No estimate until the settings are valid: {plain(exc)}"
        running, waiting = workflow.trainings_in_line()
        estimate = workflow.estimate(chosen).with_queue(running=running, waiting=waiting)
        return estimate_markdown(estimate)

    def base_models_text(self, request: gr.Request, *values) -> str:
        workflow = self.people(request)
        try:
            chosen = settings_from_values(self.names, list(values), workflow.default_train_settings()).validate()
        except ValueError:
            chosen = workflow.default_train_settings()
        return base_models_markdown(base_model_choices(chosen), workflow.base_model)


def _wire(handlers: _Handlers, demo: gr.Blocks, c: dict[str, gr.components.Component], reset: gr.Button,
          estimate: gr.Markdown, base_models: gr.Markdown) -> None:
    inputs = list(c.values())
    restored = demo.load(handlers.restore, None, inputs, api_name=False)
    restored.then(handlers.estimate_text, inputs, estimate, api_name=False, show_progress="hidden")
    restored.then(handlers.base_models_text, inputs, base_models, api_name=False, show_progress="hidden")
    # Every setting the time depends on: checkpoints and samples are parts of it, a test prompt an image a checkpoint.
    changed = [component.change for name, component in c.items() if handlers.fields[name].estimate]
    gr.on(changed, handlers.estimate_text, inputs, estimate, api_name=False, show_progress="hidden")
    gr.on(changed, handlers.base_models_text, inputs, base_models, api_name=False, show_progress="hidden")
    gr.on([component.input for component in inputs], handlers.save, inputs, None, api_name=False,
          show_progress="hidden", queue=False)
    reset.click(handlers.back_to_defaults, None, inputs, api_name=False)


def build(people: People, demo: gr.Blocks) -> SettingsInputs:
    workflow = people.workspaces.local  # the base model's defaults: the same for everyone
    defaults = workflow.default_train_settings()
    spec = form_spec(defaults, size_hints(workflow.base_model, defaults))
    with gr.Tab("2 · Settings", id="settings"):
        gr.Markdown(
            f"{base_model_line(workflow.base_model_pick)} Defaults work for a face; change them only if you know why. "
            "They apply to the next run you start with **Train** on the Training tab."
        )
        c = place([item for item in spec if item.group is Group.BASIC])
        with gr.Accordion("Advanced", open=False):
            c |= place([item for item in spec if item.group is Group.ADVANCED])
            reset = gr.Button("Back to the defaults", size="sm")
        estimate = gr.Markdown(elem_id="estimate")
        with gr.Accordion("Base models: families, licences, GPU memory", open=False):
            base_models = gr.Markdown(elem_id="base-models")
    _wire(_Handlers(people, list(c), defaults), demo, c, reset, estimate, base_models)
    return SettingsInputs(c)

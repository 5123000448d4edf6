"""Every numeric setting has a sane range: a request cannot hold the only GPU for weeks or pass nonsense along."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from pipeline.settings import (
    MAX_CHECKPOINTS,
    MAX_PROMPT_CHARS,
    MAX_SAMPLE_PROMPTS,
    MAX_STEPS,
    MAX_TEST_PROMPTS,
    GenerateSettings,
    Group,
    SettingsError,
    TrainSettings,
    VideoSettings,
    Widget,
    declaration,
    setting,
)


@pytest.mark.parametrize(("field", "value"), [
    ("steps", 10**12), ("steps", MAX_STEPS + 1), ("steps", 0), ("batch_size", 10_000), ("rank", 100_000),
    ("alpha", 0.0), ("seed", -1), ("seed", 2**40), ("warmup_steps", -5), ("guidance", 1e9), ("keep_checkpoints", 10**6),
    ("max_grad_norm", 0.0), ("sample_every", 0),
])
def test_train_settings_out_of_range_name_the_field(field: str, value: object) -> None:
    with pytest.raises(SettingsError, match=f"^{field}:"):
        TrainSettings(**{field: value}).validate()


@pytest.mark.parametrize(("field", "overrides"), [
    ("checkpoint_every", {"checkpoint_every": 10**12}),  # accepted before: a run with no checkpoint to resume
    ("checkpoint_every", {"steps": MAX_STEPS, "checkpoint_every": 1}),  # 100 000 checkpoints, each assessed
    ("test_prompts", {"test_prompts": ("{trigger}",) * 10_000}),  # held the only slot for hours, deaf to Stop
    ("test_prompts", {"test_prompts": ("a" * (MAX_PROMPT_CHARS + 1),)}),
    ("test_prompts", {"test_prompts": "{trigger} smiling"}),  # one string, not a list: 17 one-letter prompts
    ("sample_prompts", {"sample_prompts": ("{trigger}",) * (MAX_SAMPLE_PROMPTS + 1)}),
    ("sample_every", {"sample_every": 10**12}),
    ("sample_every", {"steps": 10_000, "sample_every": 1}),  # 20 000 sample images
])
def test_every_image_a_training_draws_is_bounded_and_the_error_names_the_field(field: str,
                                                                              overrides: dict[str, object]) -> None:
    with pytest.raises(SettingsError, match=f"^{field}:"):
        TrainSettings(**overrides).validate()


def test_the_limits_leave_room_for_the_largest_useful_runs() -> None:
    TrainSettings(steps=MAX_STEPS, test_prompts=("{trigger}",) * MAX_TEST_PROMPTS,
                  sample_prompts=("{trigger}",) * MAX_SAMPLE_PROMPTS, sample_every=MAX_STEPS // 100).validate()
    TrainSettings(steps=MAX_STEPS, checkpoint_every=MAX_STEPS // MAX_CHECKPOINTS).validate()
    TrainSettings.quick(steps=2, checkpoint_every=1000, sample_every=1000).validate()  # longer than the run: none


def test_train_settings_defaults_and_the_upper_bound_are_valid() -> None:
    TrainSettings().validate()
    TrainSettings.micro().validate()
    TrainSettings.quick().validate()
    TrainSettings(steps=MAX_STEPS).validate()


@pytest.mark.parametrize(("field", "value"), [("guidance", 1e6), ("lora_scale", 50.0), ("seed", -3)])
def test_generate_settings_out_of_range_name_the_field(field: str, value: object) -> None:
    with pytest.raises(SettingsError, match=f"^{field}:"):
        GenerateSettings(prompt="a portrait", **{field: value}).validate()


def test_loose_values_are_converted_and_bad_ones_name_their_field() -> None:
    from pipeline.settings import coerce

    settings = coerce(TrainSettings, {"name": "anna", "steps": "300", "learning_rate": "1e-3", "rank": 16.0,
                                      "trigger_word": None})
    assert (settings.steps, settings.learning_rate, settings.rank, settings.trigger_word) == (300, 1e-3, 16, "")
    with pytest.raises(SettingsError, match="^steps: must be given"):
        coerce(TrainSettings, {"steps": None})
    with pytest.raises(SettingsError, match="^steps: must be a whole number"):
        coerce(TrainSettings, {"steps": "12.5"})
    with pytest.raises(SettingsError, match="^learning_rate: must be a number"):
        coerce(TrainSettings, {"learning_rate": "fast"})
    with pytest.raises(SettingsError, match="^name: must not be empty"):
        coerce(TrainSettings, {"name": None}).validate()


def test_the_form_keeps_the_base_models_defaults_for_fields_it_does_not_show() -> None:
    from ui.settings import settings_from_values

    micro = TrainSettings.micro()
    settings = settings_from_values(["name", "steps"], ["anna", "200"], micro)
    assert (settings.name, settings.steps) == ("anna", 200)
    # warmup, guidance and the modulation LoRA are the micro model's, not the dataclass's FLUX.1-dev defaults
    assert (settings.warmup_steps, settings.guidance, settings.lora_modulation, settings.lora_outer_layers) == (
        micro.warmup_steps, micro.guidance, True, True)


# --- one declaration per setting (issue 34, item 1) ------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _quoted(name: str, source: str) -> bool:
    return re.search(rf"[\"']{re.escape(name)}[\"']", source) is not None


def test_no_setting_is_named_outside_its_declaration() -> None:
    """The form, the CLI and the card read the fields' declarations: a TrainSettings field name as a string literal
    in the UI or the CLI is a second declaration (an attribute such as ``settings.steps`` is fine). Outside the
    Settings tab, the names other records share (a model's name and trigger word, a generation's steps, seed and
    guidance) are those records' keys there, so only the names that are TrainSettings' alone are looked for."""
    from pipeline.library.catalog import ModelRecord

    names = [f.name for f in dataclasses.fields(TrainSettings)]
    shared = {f.name for cls in (GenerateSettings, VideoSettings, ModelRecord) for f in dataclasses.fields(cls)}
    found = []
    for path in [*sorted((ROOT / "ui").glob("*.py")), ROOT / "pipeline" / "__main__.py"]:
        source = path.read_text()
        strict = path == ROOT / "ui" / "settings.py"
        found += [f"{path.relative_to(ROOT)}: {name!r}" for name in names
                  if (strict or name not in shared) and _quoted(name, source)]
    assert not found, "setting names written out again (declare them in pipeline/settings.py):\n" + "\n".join(found)


def _with_a_new_setting() -> type:
    knob = setting("soft", "Knob", Group.ADVANCED, Widget.DROPDOWN, row=1, choices=("soft", "hard"), estimate=True,
                   info="how the knob turns", card="knob")
    return dataclasses.make_dataclass("WithKnob", [("knob", str, knob)], bases=(TrainSettings,), frozen=True)


def test_a_new_setting_is_one_field_on_the_form_the_cli_and_the_card() -> None:
    from pipeline.__main__ import add_setting_options, setting_overrides
    from pipeline.library.modelcard import _settings_rows
    from ui.settings import form_spec, settings_from_values, size_hints

    with_knob = _with_a_new_setting()
    item = next(item for item in form_spec(with_knob()) if item.name == "knob")
    assert (item.group, item.component.__name__) == (Group.ADVANCED, "Dropdown")
    assert item.kwargs["label"] == "Knob" and item.kwargs["choices"] == [("soft", "soft"), ("hard", "hard")]
    assert size_hints("tiny", with_knob())["knob"] == "how the knob turns"
    assert settings_from_values(["knob"], ["hard"], with_knob()).knob == "hard"

    parser = argparse.ArgumentParser()
    add_setting_options(parser, with_knob)
    args = parser.parse_args(["--name", "anna", "--knob", "hard", "--lr", "0.001"])
    assert setting_overrides(args, with_knob) == {"name": "anna", "knob": "hard", "learning_rate": 0.001}
    with pytest.raises(SystemExit):  # a closed choice: argparse refuses another
        parser.parse_args(["--name", "anna", "--knob", "loud"])
    assert "| knob | soft |" in _settings_rows(with_knob())


def test_the_form_keeps_its_order_groups_and_the_base_models_values() -> None:
    from ui.settings import form_spec, size_hints

    spec = form_spec(TrainSettings.micro(), size_hints("micro", TrainSettings.micro()))
    assert [(item.name, item.group.value, item.row) for item in spec] == [
        ("name", "basic", 0), ("steps", "basic", 0), ("learning_rate", "basic", 0), ("batch_size", "basic", 1),
        ("resolution", "basic", 1), ("finish_resolution", "basic", 1), ("trigger_word", "advanced", 0),
        ("rank", "advanced", 0), ("alpha", "advanced", 0), ("seed", "advanced", 0), ("memory_mode", "advanced", 1),
        ("optimizer", "advanced", 1), ("checkpoint_every", "advanced", 1), ("sample_every", "advanced", 1),
        ("caption_dropout", "advanced", 1), ("test_prompts", "advanced", 2)]
    items = {item.name: item.kwargs for item in spec}
    assert [value for _, value in items["resolution"]["choices"]] == [96, 512, 768, 1024]  # the base's own size too
    assert items["finish_resolution"]["choices"][0] == ("none", 0) and items["finish_resolution"]["value"] == 0
    assert "96 px" in items["resolution"]["info"] and items["steps"]["precision"] == 0
    assert "precision" not in items["learning_rate"] and items["test_prompts"]["value"] == ""


def test_the_cli_keeps_every_train_option_it_had() -> None:
    from pipeline.__main__ import build_parser, setting_overrides

    args = build_parser().parse_args([
        "train", "photos", "--name", "anna", "--steps", "10", "--lr", "0.001", "--resolution", "64",
        "--finish-resolution", "0", "--batch-size", "2", "--rank", "4", "--trigger-word", "zorbl", "--anyway",
        "--test-prompts", "{trigger} smiling", "--test-prompts", "{trigger} at sea"])
    assert setting_overrides(args, TrainSettings) == {
        "name": "anna", "steps": 10, "learning_rate": 0.001, "resolution": 64, "finish_resolution": 0,
        "batch_size": 2, "rank": 4, "trigger_word": "zorbl", "test_prompts": ("{trigger} smiling", "{trigger} at sea")}


@pytest.mark.parametrize("settings_field", [f for f in dataclasses.fields(TrainSettings)
                                            if declaration(f).choices and declaration(f).closed],
                         ids=lambda f: f.name)
def test_validate_accepts_exactly_the_declared_choices(settings_field: dataclasses.Field) -> None:
    for choice in declaration(settings_field).choices:
        TrainSettings(**{settings_field.name: choice}).validate()
    with pytest.raises(SettingsError, match=f"^{settings_field.name}:"):
        TrainSettings(**{settings_field.name: "bogus"}).validate()

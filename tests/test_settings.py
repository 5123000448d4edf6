"""Every numeric setting has a sane range: a request cannot hold the only GPU for weeks or pass nonsense along."""

from __future__ import annotations

import pytest

from pipeline.settings import (
    MAX_CHECKPOINTS,
    MAX_PROMPT_CHARS,
    MAX_SAMPLE_PROMPTS,
    MAX_STEPS,
    MAX_TEST_PROMPTS,
    GenerateSettings,
    SettingsError,
    TrainSettings,
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

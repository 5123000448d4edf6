"""Every numeric setting has a sane range: a request cannot hold the only GPU for weeks or pass nonsense along."""

from __future__ import annotations

import pytest

from pipeline.settings import MAX_STEPS, GenerateSettings, SettingsError, TrainSettings


@pytest.mark.parametrize(("field", "value"), [
    ("steps", 10**12), ("steps", MAX_STEPS + 1), ("steps", 0), ("batch_size", 10_000), ("rank", 100_000),
    ("alpha", 0.0), ("seed", -1), ("seed", 2**40), ("warmup_steps", -5), ("guidance", 1e9), ("keep_checkpoints", 10**6),
    ("max_grad_norm", 0.0), ("sample_every", 0),
])
def test_train_settings_out_of_range_name_the_field(field: str, value: object) -> None:
    with pytest.raises(SettingsError, match=f"^{field}:"):
        TrainSettings(**{field: value}).validate()


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

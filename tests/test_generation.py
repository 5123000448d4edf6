"""The playground's generator on the real (tiny) FLUX pipeline with real LoRAs made by peft."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from lora_factory import make_lora
from PIL import Image

from pipeline.events import Message, Progress
from pipeline.generation.generator import (
    DEFAULT_TEST_PROMPTS,
    GenerationError,
    Generator,
    Variant,
    image_metadata,
    save_png,
)
from pipeline.intake.trigger import insert_trigger
from pipeline.settings import GenerateSettings, SettingsError

SMALL = GenerateSettings(prompt="a portrait photo of ohwx", steps=3, width=64, height=48)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=float)


def differ(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Generator:
    return Generator("tiny", tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def loras(generator: Generator, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("loras")
    return (make_lora(generator.pipeline, root / "a", seed=1), make_lora(generator.pipeline, root / "b", seed=2))


def test_generates_the_asked_size_with_metadata_kept_in_the_png(generator: Generator, tmp_path: Path) -> None:
    settings = dataclasses.replace(SMALL, seed=7, negative_prompt="blurry")
    [image] = generator.generate(settings)
    assert image.size == (64, 48)
    path = save_png(image, tmp_path / "out" / "image.png")
    reopened = Image.open(path)
    assert reopened.format == "PNG" and reopened.size == (64, 48)
    meta = image_metadata(reopened)
    assert meta["prompt"] == settings.prompt
    assert meta["negative_prompt"] == "blurry"
    assert meta["model"] == "tiny" and meta["seed"] == "7" and meta["lora"] == ""
    saved = json.loads(meta["settings"])
    assert saved["steps"] == 3 and saved["width"] == 64 and saved["height"] == 48
    assert "Seed: 7" in meta["parameters"] and "Size: 64x48" in meta["parameters"]


def test_seeds_make_different_images_and_each_is_reproducible_alone(generator: Generator) -> None:
    batch = generator.generate(dataclasses.replace(SMALL, seed=10, num_images=3))
    assert len(batch) == 3
    assert differ(batch[0], batch[1]) > 1 and differ(batch[1], batch[2]) > 1
    # image i of a batch is the single image at seed + i, and says so in its metadata
    [alone] = generator.generate(dataclasses.replace(SMALL, seed=12))
    assert differ(alone, batch[2]) == 0
    assert image_metadata(batch[2])["seed"] == "12"


def test_progress_is_reported_per_denoising_step(generator: Generator) -> None:
    events: list = []
    generator.generate(dataclasses.replace(SMALL, num_images=2), on_event=events.append)
    steps = [e for e in events if isinstance(e, Progress)]
    assert [e.done for e in steps] == list(range(1, 7))
    assert all(e.total == 6 and e.stage == "generate" for e in steps)


def test_stop_returns_the_images_finished_so_far(generator: Generator) -> None:
    events: list = []

    def stop_after_first_image() -> bool:
        return sum(isinstance(e, Progress) for e in events) >= SMALL.steps + 1

    images = generator.generate(dataclasses.replace(SMALL, num_images=3), on_event=events.append,
                                should_stop=stop_after_first_image)
    assert len(images) == 1
    assert any(isinstance(e, Message) and "stopped after 1 of 3" in e.text for e in events)


def test_a_lora_changes_the_output_and_swaps_without_reloading(generator: Generator,
                                                               loras: tuple[Path, Path]) -> None:
    pipe = generator.pipeline
    [base] = generator.generate(SMALL)
    [with_a] = generator.generate(SMALL, lora_path=loras[0])
    [with_b] = generator.generate(SMALL, lora_path=loras[1])
    [base_again] = generator.generate(SMALL)
    [a_again] = generator.generate(SMALL, lora_path=loras[0])
    assert generator.pipeline is pipe
    assert differ(base, with_a) > 5 and differ(with_a, with_b) > 5
    assert differ(base, base_again) == 0 and differ(with_a, a_again) == 0
    assert image_metadata(with_a)["lora"] == str(loras[0])
    # scale 0 turns the LoRA off; a half scale lands in between
    [zero] = generator.generate(dataclasses.replace(SMALL, lora_scale=0.0), lora_path=loras[0])
    [half] = generator.generate(dataclasses.replace(SMALL, lora_scale=0.5), lora_path=loras[0])
    assert differ(zero, base) < 0.5
    assert 0.5 < differ(half, base) < differ(with_a, base)


def test_negative_prompt_changes_the_image(generator: Generator) -> None:
    [plain] = generator.generate(SMALL)
    [negative] = generator.generate(dataclasses.replace(SMALL, negative_prompt="blurry, cartoon"))
    assert differ(plain, negative) > 1


def test_compare_two_scales_side_by_side_with_the_same_seeds(generator: Generator,
                                                            loras: tuple[Path, Path]) -> None:
    settings = dataclasses.replace(SMALL, seed=3, num_images=2)
    events: list = []
    result = generator.compare(settings, Variant("base", None), Variant("LoRA a × 1.0", loras[0], 1.0),
                               on_event=events.append)
    assert len(result.left_images) == len(result.right_images) == 2
    assert result.sheet.size == (2 * 64, 20 + 2 * 48)
    [base_seed_4] = generator.generate(dataclasses.replace(SMALL, seed=4))
    assert differ(result.left_images[1], base_seed_4) == 0
    assert differ(result.left_images[0], result.right_images[0]) > 5
    progress = [e.done for e in events if isinstance(e, Progress)]
    assert progress == list(range(1, 13))


def test_unusable_requests_are_refused_with_the_argument_named(generator: Generator, tmp_path: Path) -> None:
    with pytest.raises(GenerationError, match="lora_path"):
        generator.generate(SMALL, lora_path=tmp_path / "missing.safetensors")
    not_a_lora = tmp_path / "junk.safetensors"
    not_a_lora.write_bytes(b"not safetensors at all")
    with pytest.raises(GenerationError, match="lora_path"):
        generator.generate(SMALL, lora_path=not_a_lora)
    with pytest.raises(SettingsError, match="width"):
        generator.generate(dataclasses.replace(SMALL, width=70))


@pytest.mark.parametrize(
    ("prompt", "trigger", "expected"),
    [
        ("a photo of {trigger} at the beach", "zorvek", "a photo of zorvek at the beach"),
        ("a photo at the beach", "zorvek", "zorvek, a photo at the beach"),
        ("Zorvek smiling", "zorvek", "Zorvek smiling"),
        ("zorveks smiling", "zorvek", "zorvek, zorveks smiling"),
        ("a photo of {trigger}", "", "a photo of a person"),
        ("a photo", "", "a photo"),
    ],
)
def test_insert_trigger(prompt: str, trigger: str, expected: str) -> None:
    assert insert_trigger(prompt, trigger) == expected


def test_default_test_prompts_all_place_the_trigger() -> None:
    assert len(DEFAULT_TEST_PROMPTS) >= 6
    assert all("{trigger}" in p for p in DEFAULT_TEST_PROMPTS)


def test_the_trainers_lora_and_checkpoints_load_and_change_the_output(generator: Generator, tmp_path: Path) -> None:
    import photo_factory as pf

    from pipeline.intake.dataset import Dataset, DatasetItem
    from pipeline.settings import TrainSettings
    from pipeline.training.trainer import train_lora

    photos = pf.write_set(tmp_path / "crops", [p.resize((96, 96)) for p in pf.variants(pf.astronaut(), 3)])
    dataset = Dataset(items=tuple(DatasetItem(p, "a photo of zorvek", p.name) for p in photos),
                      trigger_word="zorvek", resolution=64)
    result = train_lora(dataset, TrainSettings.quick(steps=10, checkpoint_every=5), tmp_path / "lora",
                        base_model="tiny", data_dir=generator.data_dir)
    assert result.status == "completed", result.error
    settings = dataclasses.replace(SMALL, prompt="a photo of zorvek")
    [base] = generator.generate(settings)
    for path in [result.lora_path] + [c.path for c in result.checkpoints]:
        [image] = generator.generate(settings, lora_path=path)
        assert differ(image, base) > 0.01, path

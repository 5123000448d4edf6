"""Video clips from the real (tiny) FLUX pipeline: MP4s that decode back with the asked frame count."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from lora_factory import make_lora
from PIL import Image

from pipeline.events import Message, Progress
from pipeline.generation import Generator
from pipeline.settings import GenerateSettings, SettingsError, VideoSettings
from pipeline.video import make_video, path_positions, slerp, video_frames

SIZE = {"width": 64, "height": 48, "steps": 3}


def differ(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())


def decode(path: Path) -> list[np.ndarray]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return [np.frombuffer(frame, np.uint8).reshape(h, w, 3) for frame in reader]


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Generator:
    return Generator("tiny", tmp_path_factory.mktemp("data"))


def still(generator: Generator, prompt: str, seed: int, lora: Path | None = None) -> Image.Image:
    settings = GenerateSettings(prompt=prompt, seed=seed, **SIZE)
    return generator.generate(settings, lora_path=lora)[0]


def test_mp4_has_the_requested_frames_and_decodes_back(generator: Generator, tmp_path: Path) -> None:
    events: list = []
    clip = VideoSettings(prompt="a portrait photo of ohwx", frames=6, fps=4, seed_a=3, seed_b=9, **SIZE)
    path = make_video(generator, clip, lora_path=None, out_path=tmp_path / "clip.mp4", on_event=events.append)
    assert path == tmp_path / "clip.mp4" and path.stat().st_size > 0
    assert imageio_ffmpeg.count_frames_and_secs(str(path)) == (6, 1.5)
    frames = decode(path)
    assert len(frames) == 6 and frames[0].shape == (48, 64, 3)
    assert float(np.abs(frames[0].astype(float) - frames[-1].astype(float)).mean()) > 5
    assert [(e.stage, e.done, e.total) for e in events if isinstance(e, Progress)] == [("video", i, 6)
                                                                                        for i in range(1, 7)]
    assert list(tmp_path.iterdir()) == [path]  # no partial file left behind


def test_path_runs_from_one_seeds_still_to_the_others(generator: Generator, tmp_path: Path) -> None:
    lora = make_lora(generator.pipeline, tmp_path / "lora")
    prompt = "ohwx smiling outdoors"
    clip = VideoSettings(prompt=prompt, frames=4, seed_a=5, seed_b=6, **SIZE)
    frames = list(video_frames(generator, clip, lora_path=lora))
    assert len(frames) == 4 and frames[0].size == (64, 48)
    assert differ(frames[0], still(generator, prompt, 5, lora)) == 0
    assert differ(frames[-1], still(generator, prompt, 6, lora)) == 0
    assert differ(frames[1], frames[0]) > 1 and differ(frames[2], frames[-1]) > 1
    assert differ(frames[0], still(generator, prompt, 5)) > 5  # the LoRA is in the clip


def test_second_prompt_morphs_between_prompts_at_one_seed(generator: Generator) -> None:
    clip = VideoSettings(prompt="a photo of ohwx", prompt_b="an oil painting of ohwx", frames=3, seed_a=2, seed_b=2,
                         **SIZE)
    frames = list(video_frames(generator, clip, lora_path=None))
    assert differ(frames[0], still(generator, "a photo of ohwx", 2)) == 0
    assert differ(frames[-1], still(generator, "an oil painting of ohwx", 2)) < 1e-6
    assert differ(frames[0], frames[-1]) > 1


def test_stopping_keeps_the_frames_made_so_far(generator: Generator, tmp_path: Path) -> None:
    events: list = []

    def after_two() -> bool:
        return sum(isinstance(e, Progress) for e in events) >= 2

    path = make_video(generator, VideoSettings(prompt="ohwx", frames=8, fps=8, **SIZE), lora_path=None,
                      out_path=tmp_path / "stopped.mp4", on_event=events.append, should_stop=after_two)
    assert len(decode(path)) == 2
    assert any(isinstance(e, Message) and "2 of 8" in e.text for e in events)
    # the generator was released: it can generate again at once
    assert still(generator, "ohwx", 0).size == (64, 48)


def test_bad_requests_name_the_argument(generator: Generator, tmp_path: Path) -> None:
    for bad, field in ((dict(frames=1, **SIZE), "frames"), (dict(fps=0, **SIZE), "fps"),
                       (dict(width=50, height=48, steps=2), "width")):
        with pytest.raises(SettingsError, match=f"^{field}:"):
            make_video(generator, VideoSettings(prompt="ohwx", **bad), lora_path=None, out_path=tmp_path / "x.mp4")
    assert not any(tmp_path.iterdir())


def test_slerp_keeps_the_noise_norm_that_a_straight_line_loses() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4096, generator=gen), torch.randn(4096, generator=gen)
    assert torch.equal(slerp(0.0, a, b), a) and torch.allclose(slerp(1.0, a, b), b, atol=1e-5)
    middle = slerp(0.5, a, b)
    assert abs(float(middle.norm()) / float(a.norm()) - 1) < 0.05
    assert float(torch.lerp(a, b, 0.5).norm()) / float(a.norm()) < 0.8
    assert torch.allclose(slerp(0.3, a, a), a)


def test_path_positions() -> None:
    assert path_positions(5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    looped = path_positions(4, loop=True)
    assert looped == pytest.approx([0.0, 0.5, 1.0, 0.5])

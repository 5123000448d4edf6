"""Video clips from the real (tiny) FLUX pipeline: MP4s that decode back with the asked frame count."""

from __future__ import annotations

import json
from pathlib import Path

import face_probes
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from lora_factory import make_lora
from PIL import Image

from pipeline.assessment.assess import reference_embeddings
from pipeline.events import Message, Progress
from pipeline.generation.generator import Generator
from pipeline.settings import GenerateSettings, SettingsError, VideoSettings
from pipeline.video.clip import (
    make_scored_video,
    make_video,
    path_positions,
    read_metadata,
    slerp,
    video_frames,
    write_metadata,
)
from pipeline.video.clip_likeness import MORPH, PersonReference, likeness_path

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


def test_scored_clip_is_a_tagged_h264_mp4_with_every_frames_likeness_beside_it(generator: Generator,
                                                                               tmp_path: Path) -> None:
    person = PersonReference(reference_embeddings(face_probes.reference_views("astronaut", 4)))
    clip = VideoSettings(prompt="a portrait photo of ohwx", frames=5, fps=5, seed_a=7, seed_b=8, **SIZE)
    events: list = []
    result = make_scored_video(generator, clip, lora_path=None, out_path=tmp_path / "clip.mp4", person=person,
                               model="astro", base_model="tiny", on_event=events.append)
    # Browsers and phones play H.264 in yuv420p only; the asked frames at the asked size come back.
    meta = next(imageio_ffmpeg.read_frames(str(result.video)))
    assert (meta["codec"], meta["pix_fmt"].split("(")[0], meta["size"]) == ("h264", "yuv420p", (64, 48))
    assert imageio_ffmpeg.count_frames_and_secs(str(result.video)) == (5, 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.likeness.json", "clip.mp4"]  # no partial files
    # The tiny model draws noise: no frame shows the person, and the JSON says so frame by frame.
    data = json.loads(likeness_path(result.video).read_text())
    assert result.likeness_json == likeness_path(result.video)
    assert (data["kind"], data["frame_count"], data["seed"], data["model"]) == (MORPH, 5, 7, "astro")
    assert "no image-to-video model" in data["why"]
    assert [f["index"] for f in data["frames"]] == list(range(5))
    assert data["recognised_share"] == 0 and data["first_drop"] == 0
    assert [f["match"] for f in data["frames"]] == ["no_face"] * 5
    assert [e.stage for e in events if isinstance(e, Progress)][-2:] == ["likeness", "likeness"]
    # Prompt, seed, models and likeness travel in the file itself.
    tags = read_metadata(result.video)
    assert tags["title"] == "a portrait photo of ohwx" and tags["description"] == data["summary"]
    comment = json.loads(tags["comment"])
    assert (comment["seed"], comment["model"], comment["base_model"], comment["kind"]) == (7, "astro", "tiny", MORPH)
    assert comment["recognised_share"] == 0 and comment["first_drop"] == 0 and comment["verdict"] == "not_recognised"


def test_base_model_clip_has_no_person_to_score(generator: Generator, tmp_path: Path) -> None:
    clip = VideoSettings(prompt="ohwx", frames=2, fps=2, **SIZE)
    result = make_scored_video(generator, clip, lora_path=None, out_path=tmp_path / "base.mp4", person=None,
                               model="base model", base_model="tiny")
    data = json.loads(result.likeness_json.read_text())
    assert result.likeness is None and data["frames"] == [] and data["recognised_share"] is None
    assert "base model" in data["summary"]


def test_metadata_survives_every_character_ffmetadata_escapes(generator: Generator, tmp_path: Path) -> None:
    path = make_video(generator, VideoSettings(prompt="x", frames=2, fps=2, **SIZE),
                      lora_path=None, out_path=tmp_path / "x.mp4")
    tags = {"title": "a=b; #c \\ d", "comment": json.dumps({"prompt": "x=1;\nnext"})}
    write_metadata(path, tags)
    assert {k: v for k, v in read_metadata(path).items() if k in tags} == tags
    assert imageio_ffmpeg.count_frames_and_secs(str(path))[0] == 2


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


def test_a_klein_morph_runs_between_its_own_stills(tmp_path: Path) -> None:
    """The morph on FLUX.2 [klein] (tiny-klein): its own prompt encoding (the family's render_embeds) and its
    latents given back as the grid it packs itself; frame 0 and the last frame are the two seeds' stills."""
    klein = Generator("tiny-klein", tmp_path / "data")
    clip = VideoSettings(prompt="a photo of ohwx", prompt_b="an oil painting of ohwx", frames=3, seed_a=5, seed_b=6,
                         **SIZE)
    frames = list(video_frames(klein, clip, lora_path=None))
    assert len(frames) == 3 and frames[0].size == (64, 48)
    assert differ(frames[0], still(klein, "a photo of ohwx", 5)) == 0
    assert differ(frames[-1], still(klein, "an oil painting of ohwx", 6)) < 1e-6
    assert differ(frames[1], frames[0]) > 1 and differ(frames[1], frames[-1]) > 1


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

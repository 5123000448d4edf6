"""Image-to-video on the tiny random Wan model (issue 36): a tiny-trained model's still, animated, written as an MP4
that decodes back with the asked frames and size, every frame scored; Stop between steps keeps nothing; the CLI."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import face_probes
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from lora_factory import make_lora

from pipeline.assessment.assess import reference_embeddings
from pipeline.assessment.likeness import save_person
from pipeline.events import Progress
from pipeline.settings import AppSettings
from pipeline.status import Status
from pipeline.video.choice import is_morph
from pipeline.video.clip import read_metadata
from pipeline.video.i2v import IMAGE_TO_VIDEO, ClipStopped, resolve_video_model
from pipeline.workflow import Workflow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workflow, str]]:
    """A workflow on the tiny FLUX model with one ready model: a random LoRA (``make_lora``: seconds, where a
    training takes minutes) and the astronaut as its person."""
    torch.set_num_threads(1)
    workflow = Workflow(AppSettings(data_dir=tmp_path_factory.mktemp("data"), base_model="tiny"),
                        start_worker=False)
    record = workflow.library.create("astro", "tiny", {})
    lora = make_lora(workflow.generator().pipeline, Path(record.folder) / "lora")
    person = reference_embeddings(face_probes.reference_views("astronaut", 3)).mean(axis=0)
    save_person(Path(record.folder), person / np.linalg.norm(person), "astro")
    workflow.library.update(record.id, status=Status.READY, lora_path=lora)
    yield workflow, record.id
    workflow.close()


def decode(path: Path) -> tuple[dict, list[np.ndarray]]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return meta, [np.frombuffer(frame, np.uint8).reshape(h, w, 3).astype(float) for frame in reader]


def test_a_stills_animation_is_an_mp4_scored_frame_by_frame(trained: tuple[Workflow, str]) -> None:
    workflow, model_id = trained
    events: list = []
    result = workflow.video(model_id, prompt="a portrait photo of {trigger}", prompt_b="{trigger} turns head slowly",
                            frames=10, fps=5, seed=2, video_model="tiny", on_event=events.append)
    # H.264 yuv420p at the still's size (64 px on tiny), the asked 10 frames (the model makes 13: 4k+1).
    meta, frames = decode(result.video)
    assert (meta["codec"], meta["pix_fmt"].split("(")[0], tuple(meta["size"])) == ("h264", "yuv420p", (64, 64))
    assert imageio_ffmpeg.count_frames_and_secs(str(result.video)) == (10, 2.0)
    # Motion frames the video model made: each differs from the one before (no frame repeated).
    assert len(frames) == 10 and all(np.abs(a - b).mean() > 1 for a, b in itertools.pairwise(frames))
    # The likeness JSON beside it: one score per frame, the share recognised, the kind and the video model named.
    data = json.loads(result.likeness_json.read_text())
    assert (data["kind"], data["video_model"], data["frame_count"]) == (IMAGE_TO_VIDEO, "tiny", 10)
    assert [f["index"] for f in data["frames"]] == list(range(10)) and data["recognised_share"] == 0
    assert "animated by the image-to-video model 'tiny'" in data["why"] and "noise" in data["why"]
    assert data["prompt_b"] == "a person turns head slowly"  # the motion, without the trigger word
    assert json.loads(read_metadata(result.video)["comment"])["kind"] == IMAGE_TO_VIDEO
    # Progress: the still's steps, then each of the video model's 4 steps, then the likeness.
    steps = [(e.done, e.total) for e in events if isinstance(e, Progress) and e.stage == "video"]
    stages = [e.stage for e in events if isinstance(e, Progress)]
    assert steps == [(i, 4) for i in range(1, 5)] and stages[0] == "generate" and stages[-1] == "likeness"


def test_stop_after_the_first_step_keeps_nothing(trained: tuple[Workflow, str]) -> None:
    workflow, model_id = trained
    videos = workflow.data_dir / "videos"
    before = set(videos.iterdir()) if videos.is_dir() else set()
    steps: list[int] = []

    def count(event: object) -> None:
        if isinstance(event, Progress) and event.stage == "video":
            steps.append(event.done)

    with pytest.raises(ClipStopped, match="stopped after step 1 of 4"):
        workflow.video(model_id, prompt="{trigger}", frames=5, fps=5, video_model="tiny", on_event=count,
                       should_stop=lambda: bool(steps))
    assert steps == [1] and set(videos.iterdir()) == before  # no MP4, no partial file, no JSON


def test_video_model_settings() -> None:
    assert is_morph(None) and is_morph("") and is_morph("morph") and not is_morph("tiny")
    with pytest.raises(ValueError, match="--video-model"):
        resolve_video_model("not a model", Path("."))


def test_cli_prints_every_frames_likeness(trained: tuple[Workflow, str], tmp_path: Path) -> None:
    workflow, _model_id = trained
    clip = tmp_path / "clip.mp4"
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "video", "astro", "--video-model", "tiny", "--prompt", "{trigger} smiling",
         "--prompt-b", "waves hand", "--out", str(clip), "--frames", "9", "--fps", "6", "--json", "--data-dir",
         str(workflow.data_dir), "--base-model", "tiny"],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert (printed["kind"], printed["video_model"], printed["video"]) == (IMAGE_TO_VIDEO, "tiny", str(clip))
    assert len(printed["frames"]) == 9 and printed["recognised_share"] == 0
    assert imageio_ffmpeg.count_frames_and_secs(str(clip)) == (9, 1.5)

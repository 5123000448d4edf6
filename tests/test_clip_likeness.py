"""Likeness in every frame, on a real clip: the astronaut cross-fading into Grace Hopper (package photos).

The judge is the real one (dlib identity, the shipped cohort, the calibrated operating point): the curve must start
recognised, fall where the person changes and name who the face became.
"""

from __future__ import annotations

import json
from pathlib import Path

import face_probes
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from pipeline.assessment.assess import reference_embeddings, score_images
from pipeline.assessment.likeness import Match, save_person
from pipeline.intake.dataset import Dataset, DatasetItem
from pipeline.intake.identity import person_consensus
from pipeline.settings import ClassifySettings
from pipeline.video.clip_likeness import (
    ClipLikeness,
    ClipVerdict,
    FrameLikeness,
    PersonReference,
    read_frames,
    score_clip,
    score_frames,
)

FRAMES = 12


def cross_fade(first: str, second: str, frames: int = FRAMES, side: int = 96) -> list[Image.Image]:
    """``first`` turning into ``second`` pixel by pixel, eyes on eyes: a clip whose person changes half way."""
    a, b = face_probes.aligned_face(first, side), face_probes.aligned_face(second, side)
    return [Image.blend(a, b, i / (frames - 1)) for i in range(frames)]


def encode(frames: list[Image.Image], path: Path, fps: int) -> Path:
    """An H.264 MP4 as ``make_video`` writes it."""
    writer = imageio_ffmpeg.write_frames(str(path), frames[0].size, fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         quality=8, macro_block_size=16, ffmpeg_log_level="error")
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame.convert("RGB")))
    writer.close()
    return path


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """The astronaut's reference, as training crops give it."""
    return reference_embeddings(face_probes.reference_views("astronaut", 6))


@pytest.fixture(scope="module")
def fading(astronaut: np.ndarray) -> ClipLikeness:
    return score_frames(cross_fade("astronaut", "grace_hopper"), astronaut, fps=8)


def test_curve_is_recognised_at_the_start_and_falls_where_the_person_changes(fading: ClipLikeness) -> None:
    matches = [f.match for f in fading.frames]
    assert len(matches) == FRAMES
    drop = fading.first_drop
    # Recognised while the astronaut dominates; lost before the half-way blend (measured: frame 4 of 12, t = 0.36,
    # a generic face: between the two people, nearer neither by the margin; someone else from t = 0.45).
    assert drop is not None and 3 <= drop <= 7, matches
    assert all(m is Match.RECOGNISED for m in matches[:drop])
    # Once lost, lost for good, and to the person the face turned into.
    assert all(m is not Match.RECOGNISED for m in matches[drop:]), matches
    assert fading.frames[-1].match is Match.SOMEONE_ELSE and fading.frames[-1].nearest_other == "grace_hopper"
    assert fading.recognised_share == pytest.approx(drop / FRAMES)
    curve = [likeness for _t, likeness in fading.curve()]
    assert curve[0] > 0.9 and curve[-1] < 0.1
    margins = [f.margin for f in fading.frames]
    assert all(a > b for a, b in zip(margins, margins[1:], strict=False)), margins  # the margin falls all along
    assert fading.frames[drop].time_s == pytest.approx(drop / 8)
    assert fading.verdict is ClipVerdict.DRIFTS
    assert f"drifts away: first lost at frame {drop} ({drop / 8:.2f} s)" in fading.sentence()


def test_each_frame_is_scored_as_the_assessment_scores_an_image(astronaut: np.ndarray,
                                                                  fading: ClipLikeness) -> None:
    frames = cross_fade("astronaut", "grace_hopper")
    for index in (0, fading.first_drop, FRAMES - 1):
        alone = score_images([frames[index]], astronaut).images[0]
        frame = fading.frames[index]
        assert (frame.match, frame.nearest_other) == (alone.match, alone.nearest_other)
        assert frame.likeness == pytest.approx(alone.likeness) and frame.margin == pytest.approx(alone.margin)


def test_the_json_has_one_score_per_frame(fading: ClipLikeness) -> None:
    data = json.loads(json.dumps(fading.to_dict()))
    assert [f["index"] for f in data["frames"]] == list(range(FRAMES))
    assert data["verdict"] == "drifts" and data["first_drop"] == fading.first_drop
    assert data["recognised_share"] == round(fading.recognised_share, 4)
    assert data["frames"][0]["match"] == "recognised" and data["frames"][0]["recognised"] is True
    assert data["frames"][-1]["nearest_other"] == "grace_hopper"


def test_an_mp4_of_the_cross_fade_is_scored_as_a_viewer_sees_it(astronaut: np.ndarray, fading: ClipLikeness,
                                                                 tmp_path: Path) -> None:
    path = encode(cross_fade("astronaut", "grace_hopper"), tmp_path / "fade.mp4", fps=6)
    frames, fps = read_frames(path)
    assert len(frames) == FRAMES and frames[0].size == (96, 96) and fps == 6
    decoded = score_clip(path, astronaut)
    assert decoded.fps == 6 and len(decoded.frames) == FRAMES
    # H.264 at this quality moves a face's distances by hundredths: the person is lost at the same frame, or next.
    assert decoded.first_drop is not None and abs(decoded.first_drop - fading.first_drop) <= 1
    assert decoded.frames[0].recognised and decoded.frames[-1].match is Match.SOMEONE_ELSE


def test_a_clip_that_never_shows_the_person_drops_at_its_first_frame(astronaut: np.ndarray) -> None:
    clip = score_frames(cross_fade("grace_hopper", "grace_hopper", frames=3), astronaut, fps=3)
    assert clip.first_drop == 0 and clip.recognised_share == 0 and clip.verdict is ClipVerdict.NOT_RECOGNISED
    assert "not recognised from the first frame" in clip.sentence()
    blank = score_frames([Image.new("RGB", (64, 64), "grey")] * 2, astronaut, fps=2)
    assert [f.match for f in blank.frames] == [Match.NO_FACE] * 2 and blank.likeness == 0
    held = ClipLikeness(frames=(FrameLikeness(0, 0.0, Match.RECOGNISED, 0.9, "x", 0.2, 0.3),), fps=1,
                        judged_against=14)
    assert held.first_drop is None and held.verdict is ClipVerdict.HOLDS and "holds all through" in held.sentence()


def test_bad_input_names_the_argument(astronaut: np.ndarray) -> None:
    with pytest.raises(ValueError, match="^frames:"):
        score_frames([], astronaut, fps=8)
    with pytest.raises(ValueError, match="^fps:"):
        score_frames([Image.new("RGB", (8, 8))], astronaut, fps=0)


def test_a_models_person_is_its_kept_consensus_or_else_its_crops(astronaut: np.ndarray, tmp_path: Path) -> None:
    models = tmp_path / "models"
    folder = models / "astro"
    crops = []
    for index, view in enumerate(face_probes.reference_views("astronaut", 4)):
        crops.append(tmp_path / "crops" / f"{index}.png")
        crops[-1].parent.mkdir(exist_ok=True)
        view.save(crops[-1])
    Dataset(items=tuple(DatasetItem(c, "ohwx", c.name) for c in crops), trigger_word="ohwx",
            resolution=192).save(folder / "dataset")
    neighbour = models / "grace"
    neighbour.mkdir()
    save_person(neighbour, reference_embeddings([face_probes.aligned_face("grace_hopper", 192)])[0], "grace")

    from_crops = PersonReference.of_model(folder)
    assert from_crops.reference.shape == (4, 128)
    assert [o.name for o in from_crops.others] == ["another model here (grace)"]  # the workspace's other people
    consensus = person_consensus(list(from_crops.reference), ClassifySettings().identity_threshold)
    save_person(folder, consensus, "ohwx")
    kept = PersonReference.of_model(folder)
    assert kept.reference.shape == (128,) and np.allclose(kept.reference, consensus, atol=1e-6)
    # The kept consensus and the crops judge the clip alike, against the cohort and the neighbour too.
    frames = cross_fade("astronaut", "grace_hopper", frames=6)
    by_crops = score_frames(frames, from_crops.reference, fps=6, others=from_crops.others)
    by_kept = score_frames(frames, kept.reference, fps=6, others=kept.others)
    assert [f.match for f in by_kept.frames] == [f.match for f in by_crops.frames]
    assert by_kept.frames[0].recognised and by_kept.frames[-1].match is Match.SOMEONE_ELSE
    assert by_kept.judged_against == score_frames(frames[:1], kept.reference, fps=6).judged_against + 1


def test_a_model_without_crops_says_why(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^model: its training crops"):
        PersonReference.of_model(tmp_path / "models" / "gone")

"""Likeness in every frame of a clip: is the person still the person at second 3?

Each frame is scored exactly as the assessment scores a test image (``pipeline.assessment.assess.score_images``: the
face
most like the person, judged against the person's consensus, the nearest other identity and the average face), so
a frame's "recognised" means what it means on a model card. The clip gets the curve of those scores over time, the
share of frames recognised and the first frame where the person is lost — a clip whose person drifts away says so.

Frames are read back from the MP4 that was written, so what is scored is what a viewer sees (compression
included), and the result is saved as JSON beside the clip (``likeness_path``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pipeline.assessment.cohort import Identity
from pipeline.assessment.likeness import LikenessJudge, Match

if TYPE_CHECKING:  # the assessment brings torch: the pages import this module's names at start, without it
    from pipeline.assessment.assess import ImageScore

logger = logging.getLogger(__name__)

MORPH = "morph"
# Said on the page and in the JSON whenever a morph is made instead of a clip with motion.
MORPH_WHY = ("no image-to-video model on this machine: each frame is a separate still generated along a path "
             "between two seeds (and prompts), so faces change but nothing moves")


class ClipVerdict(StrEnum):
    """What the clip does with the person, in one word."""

    HOLDS = "holds"  # recognised in every frame
    DRIFTS = "drifts"  # recognised at the start, lost later: the person drifts away
    NOT_RECOGNISED = "not_recognised"  # not recognised from the first frame


@dataclass(frozen=True)
class PersonReference:
    """Whom a clip's frames are compared with: the person's training crops (their face embeddings) and the
    workspace's other people, judged against besides the shipped cohort, as the model's assessment did."""

    reference: np.ndarray  # (n, 128) ``reference_embeddings`` of the training crops, or (128,) their consensus
    others: tuple[Identity, ...] = ()

    @classmethod
    def of_model(cls, model_folder: Path, dataset: str = "dataset") -> PersonReference:
        """The person a library model was trained on: the consensus its assessment kept (``person.json``, the same
        face the model card was judged against, read in milliseconds), else its training crops, embedded again
        (~0.4 s a crop on this CPU)."""
        from pipeline.assessment.likeness import PERSON_FILE, workspace_people

        folder = Path(model_folder)
        others = tuple(workspace_people(folder.parent, exclude=folder))
        try:
            vector = np.asarray(json.loads((folder / PERSON_FILE).read_text())["vector"], dtype=np.float64)
            if vector.shape == (128,):
                return cls(vector, others)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a model trained before person.json, or a damaged one: the crops say the same
        return cls(_crop_embeddings(folder / dataset), others)


def _crop_embeddings(folder: Path) -> np.ndarray:
    from pipeline.assessment.assess import reference_embeddings
    from pipeline.intake.dataset import Dataset

    try:
        crops = [item.image for item in Dataset.load(folder).items]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"model: its training crops in {folder} cannot be read ({exc}), so a clip's likeness has "
                         "nothing to compare with; retrain the model") from exc
    return reference_embeddings(crops)


@dataclass(frozen=True)
class FrameLikeness:
    """One frame's face, judged as a test image is."""

    index: int
    time_s: float  # index / fps
    match: Match
    likeness: float | None  # 0–1 calibrated; None where no face was found
    nearest_other: str | None
    margin: float | None  # min(nearest other, generic) − distance to the person: > 0 nearer the person
    distance: float | None  # to the person's consensus

    @property
    def recognised(self) -> bool:
        return self.match is Match.RECOGNISED

    @classmethod
    def from_score(cls, index: int, fps: float, score: ImageScore) -> FrameLikeness:
        return cls(index=index, time_s=round(index / fps, 4), match=score.match, likeness=score.likeness,
                   nearest_other=score.nearest_other, margin=score.margin, distance=score.distance)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "time_s": self.time_s, "match": str(self.match), "recognised": self.recognised,
                "likeness": _rounded(self.likeness), "nearest_other": self.nearest_other,
                "margin": _rounded(self.margin), "distance": _rounded(self.distance)}


@dataclass(frozen=True)
class ClipLikeness:
    """The likeness curve of a clip: every frame's score, the share recognised and where the person is lost."""

    frames: tuple[FrameLikeness, ...]
    fps: float
    judged_against: int  # other identities each face was compared with

    @property
    def recognised_share(self) -> float:
        return sum(f.recognised for f in self.frames) / len(self.frames)

    @property
    def likeness(self) -> float:
        """Mean calibrated likeness; a frame without a face counts 0, as in the assessment."""
        return sum(f.likeness or 0.0 for f in self.frames) / len(self.frames)

    @property
    def first_drop(self) -> int | None:
        """The first frame that is not recognised (0 when the clip never shows the person); None when all are."""
        return next((f.index for f in self.frames if not f.recognised), None)

    @property
    def verdict(self) -> ClipVerdict:
        drop = self.first_drop
        return ClipVerdict.HOLDS if drop is None else ClipVerdict.NOT_RECOGNISED if drop == 0 else ClipVerdict.DRIFTS

    def curve(self) -> list[tuple[float, float]]:
        """(seconds, likeness 0–1) per frame; a frame without a face is 0."""
        return [(f.time_s, f.likeness or 0.0) for f in self.frames]

    def sentence(self) -> str:
        """One line for people: how much of the clip shows the person, and when they are lost."""
        n, seen = len(self.frames), sum(f.recognised for f in self.frames)
        text = f"Recognised in {seen} of {n} frames ({self.recognised_share:.0%}), mean likeness {self.likeness:.0%}"
        drop = self.first_drop
        if drop is None:
            return text + "; the person holds all through the clip."
        lost = self.frames[drop]
        who = {Match.SOMEONE_ELSE: f"someone else ({lost.nearest_other})", Match.GENERIC: "a generic face",
               Match.NO_FACE: "no face"}.get(lost.match, str(lost.match))
        if drop == 0:
            return text + f"; not recognised from the first frame ({who})."
        return text + f"; the person drifts away: first lost at frame {drop} ({lost.time_s:.2f} s), {who}."

    def to_dict(self) -> dict[str, Any]:
        return {"frames": [f.to_dict() for f in self.frames], "recognised_share": round(self.recognised_share, 4),
                "likeness": round(self.likeness, 4), "first_drop": self.first_drop,
                "verdict": str(self.verdict), "fps": self.fps,
                "judged_against": self.judged_against, "summary": self.sentence()}


def score_frames(frames: Sequence[Image.Image], reference: np.ndarray, *, fps: float,
                 others: Sequence[Identity] = (), judge: LikenessJudge | None = None) -> ClipLikeness:
    """Every frame scored by ``score_images`` against the person's ``reference`` embeddings (their training crops,
    ``reference_embeddings``), judged against the cohort plus ``others``."""
    if not frames:
        raise ValueError("frames: the clip has no frames to score")
    if fps <= 0:
        raise ValueError(f"fps: must be above 0, got {fps}")
    from pipeline.assessment.assess import score_images

    result = score_images(list(frames), reference, others=others, judge=judge)
    scored = tuple(FrameLikeness.from_score(i, fps, s) for i, s in enumerate(result.images))
    clip = ClipLikeness(frames=scored, fps=fps, judged_against=result.judged_against)
    logger.info("clip likeness: %s", clip.sentence())
    return clip


def read_frames(path: Path) -> tuple[list[Image.Image], float]:
    """The frames of a video file as RGB images, and its frame rate."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [Image.fromarray(np.frombuffer(raw, np.uint8).reshape(height, width, 3).copy()) for raw in reader]
    return frames, float(meta["fps"])


def score_clip(path: Path, reference: np.ndarray, *, others: Sequence[Identity] = (),
               judge: LikenessJudge | None = None) -> ClipLikeness:
    """``score_frames`` on the frames of the video at ``path``, as a viewer sees them."""
    frames, fps = read_frames(path)
    return score_frames(frames, reference, fps=fps, others=others, judge=judge)


def likeness_path(video: Path) -> Path:
    """Where a clip's likeness JSON lives: beside it, ``clip.mp4`` → ``clip.likeness.json``."""
    return Path(video).with_suffix(".likeness.json")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def save_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` to ``path`` whole or not at all (a reader never sees half a file)."""
    from pipeline.storage.atomic_files import write_atomic

    write_atomic(Path(path), json.dumps(data, indent=2).encode())
    return Path(path)

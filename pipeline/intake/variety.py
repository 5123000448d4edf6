"""Lighting groups and the variety of pose and expression, turned into the advice a photographer would give.

A LoRA learns whatever is constant across its photos: one harsh side light in half the set and soft window light
in the rest teaches two faces; twenty identical frontal smiles teach one expression. These measures are cheap
(face-region statistics and MTCNN's five landmarks) and only need to rank and group, not to be exact.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.intake.faces import Face

# Lighting labels. Harshness is the face's luma spread (90th over 10th percentile): window light ~1.5–2.5,
# direct sun or a bare flash beyond ~3.5.
HARSH_RATIO = 3.5
SOFT_RATIO = 2.5
SIDE_LIGHT = 0.12  # |left − right| / (left + right) of the face halves' luma
# (R − B) / luma of the face: skin is warmer than grey (0.35–0.4 on our daylight portraits, 0 on a grey photo)
WARM, COOL = 0.55, 0.2
DIM, BRIGHT = 85.0, 165.0  # face mean luma
TURNED = 12.0  # |yaw| in degrees beyond which a face counts as "not straight on"
# Mouth width over eye distance: ~0.8–0.9 neutral, above ~1.0 a broad smile.
SMILE_RATIO = 0.98


@dataclass(frozen=True)
class Lighting:
    brightness: float  # face mean luma, 0–255
    warmth: float  # (mean R − mean B) / mean luma on the face
    direction: float  # (left half − right half) / sum, image left/right; 0 frontal
    harshness: float  # 90th / 10th percentile of face luma

    @property
    def quality(self) -> str:
        return "harsh" if self.harshness >= HARSH_RATIO else "soft" if self.harshness <= SOFT_RATIO else "medium"

    @property
    def temperature(self) -> str:
        return "warm" if self.warmth >= WARM else "cool" if self.warmth <= COOL else "neutral"

    @property
    def side(self) -> str:
        if abs(self.direction) < SIDE_LIGHT:
            return "front"
        return "from left" if self.direction > 0 else "from right"

    @property
    def level(self) -> str:
        return "dim" if self.brightness < DIM else "bright" if self.brightness > BRIGHT else "normal"

    @property
    def group(self) -> str:
        """A readable lighting group, e.g. "soft, neutral, front, normal" (quality, colour, direction, level)."""
        return f"{self.quality}, {self.temperature}, {self.side}, {self.level}"


def measure_lighting(image: Image.Image, face: Face | None) -> Lighting:
    """Lighting of the face region (the whole frame without a face)."""
    region = image if face is None else image.crop(tuple(round(v) for v in face.box))
    if region.width < 4 or region.height < 4:
        region = image
    rgb = np.asarray(region.convert("RGB"), dtype=np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    mean = max(float(luma.mean()), 1.0)
    half = luma.shape[1] // 2
    left, right = (float(luma[:, :half].mean()), float(luma[:, half:].mean())) if half else (mean, mean)
    low, high = np.percentile(luma, [10, 90])
    return Lighting(
        brightness=mean,
        warmth=float((rgb[..., 0].mean() - rgb[..., 2].mean()) / mean),
        direction=(left - right) / max(left + right, 1.0),
        harshness=float((high + 1.0) / (low + 1.0)),
    )


def expression_ratio(face: Face) -> float:
    """Mouth width over eye distance from the landmarks: wider when smiling."""
    (lx, ly), (rx, ry) = face.landmarks[0], face.landmarks[1]
    (ml_x, ml_y), (mr_x, mr_y) = face.landmarks[3], face.landmarks[4]
    eyes = float(np.hypot(rx - lx, ry - ly))
    return float(np.hypot(mr_x - ml_x, mr_y - ml_y)) / max(eyes, 1e-6)


def variety_vector(lighting: Lighting, yaw: float, expression: float) -> np.ndarray:
    """Features scaled so that one unit is a visible difference; the selector spreads photos in this space."""
    return np.array([yaw / 15.0, (expression - 0.85) / 0.08, lighting.direction / 0.1,
                     np.log(lighting.harshness) / 0.3, lighting.warmth / 0.08])


def variety_advice(lightings: Sequence[Lighting], yaws: Sequence[float],
                   expressions: Sequence[float]) -> tuple[str, ...]:
    """Advice on the set (the photos that would be trained on); empty when the set is varied and consistent."""
    n = len(lightings)
    if n < 3:
        return ()
    advice = []
    qualities = Counter(light.quality for light in lightings)
    if min(qualities["harsh"], qualities["soft"]) >= max(2, round(0.2 * n)):
        advice.append(f"Avoid mixing harsh and soft lighting: {qualities['harsh']} photos have hard, contrasty "
                      f"light and {qualities['soft']} soft light; keep most in one kind (soft daylight is best).")
    temperatures = Counter(light.temperature for light in lightings)
    if min(temperatures["warm"], temperatures["cool"]) >= max(2, round(0.25 * n)):
        advice.append(f"Lighting colour varies ({temperatures['warm']} warm, {temperatures['cool']} cool): "
                      "similar lighting across photos helps the model learn the face, not the light.")
    turned = sum(abs(y) > TURNED for y in yaws)
    if turned < max(2, round(0.2 * n)):
        advice.append(f"Include different head angles: {n - turned} of {n} photos face the camera straight on; "
                      "add a few three-quarter views (head turned about 20–40°).")
    elif turned > 0.6 * n:
        advice.append(f"Most photos ({turned} of {n}) show a turned head: add some looking straight at the camera.")
    smiles = sum(e >= SMILE_RATIO for e in expressions)
    if smiles >= n - max(1, round(0.15 * n)) or smiles <= max(1, round(0.15 * n)) or np.std(expressions) < 0.03:
        kind = "smiling" if smiles > n / 2 else "with a neutral face"
        advice.append(f"Mix neutral, smiling and serious expressions: nearly all photos are {kind}.")
    return tuple(advice)

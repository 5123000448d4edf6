"""Lighting groups, pose and expression variety on real derived photos, and the advice they give."""

from __future__ import annotations

import numpy as np
import photo_factory
import pytest
from PIL import Image, ImageEnhance

from pipeline.intake.faces import detect_faces
from pipeline.intake.variety import (
    SMILE_RATIO,
    Lighting,
    expression_ratio,
    measure_lighting,
    variety_advice,
    variety_vector,
)


@pytest.fixture(scope="module")
def portrait() -> Image.Image:
    return photo_factory.portrait_variants(photo_factory.astronaut(), photo_factory.ASTRONAUT_FACE, 1)[0]


def _side_lit(image: Image.Image, strength: float) -> Image.Image:
    """Light falling off from image left to right, as from a window on the left."""
    ramp = np.linspace(1.0, 1.0 - strength, image.width)[None, :, None]
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) * ramp, 0, 255).astype(np.uint8))


def test_side_light_and_harsh_light_are_seen(portrait):
    face = detect_faces(portrait)[0]
    plain = measure_lighting(portrait, face)
    assert plain.side == "front"
    left = measure_lighting(_side_lit(portrait, 0.7), face)
    assert left.side == "from left" and left.direction > plain.direction
    harsh = measure_lighting(ImageEnhance.Contrast(_side_lit(portrait, 0.8)).enhance(1.8), face)
    assert harsh.quality == "harsh" and plain.quality != "harsh"
    assert harsh.group != plain.group


def test_warm_and_cool_light(portrait):
    face = detect_faces(portrait)[0]
    array = np.asarray(portrait, dtype=np.float64)
    warm = Image.fromarray(np.clip(array * [1.25, 1.0, 0.75], 0, 255).astype(np.uint8))
    cool = Image.fromarray(np.clip(array * [0.8, 1.0, 1.3], 0, 255).astype(np.uint8))
    assert measure_lighting(warm, face).temperature == "warm"
    assert measure_lighting(cool, face).temperature == "cool"
    assert measure_lighting(portrait, face).temperature == "neutral"


def test_smile_is_wider_than_a_neutral_mouth():
    smiling = detect_faces(photo_factory.astronaut())[0]  # Eileen Collins smiles
    neutral = detect_faces(photo_factory.grace_hopper())[0]  # Grace Hopper does not
    assert expression_ratio(neutral) < SMILE_RATIO < expression_ratio(smiling)


def _lights(*qualities: str) -> list[Lighting]:
    spread = {"soft": 2.0, "medium": 3.0, "harsh": 5.0}
    return [Lighting(brightness=130, warmth=0.35, direction=0.0, harshness=spread[q]) for q in qualities]


def test_advice_on_a_uniform_set():
    advice = variety_advice(_lights(*["soft"] * 10), [0.0] * 10, [1.05] * 10)
    assert any("head angles" in tip for tip in advice)
    assert any("expressions" in tip and "smiling" in tip for tip in advice)
    assert not any("lighting" in tip for tip in advice)


def test_advice_on_mixed_light_and_no_advice_on_a_varied_set():
    mixed = variety_advice(_lights(*["soft"] * 5, *["harsh"] * 5), [0.0, 25.0] * 5, [0.8, 1.05] * 5)
    assert [tip for tip in mixed if "harsh and soft" in tip]
    varied = variety_advice(_lights(*["soft"] * 10), [0, 25, -30, 5, 20, -22, 0, 3, 35, -5],
                            [0.8, 1.05, 0.85, 1.1, 0.9, 1.0, 0.82, 1.04, 0.86, 0.95])
    assert varied == ()
    assert variety_advice(_lights("soft", "harsh"), [0.0, 0.0], [1.0, 1.0]) == ()  # too few to judge


def test_variety_vector_separates_poses():
    light = _lights("soft")[0]
    front, turned = variety_vector(light, 0.0, 0.9), variety_vector(light, 30.0, 0.9)
    assert np.linalg.norm(front - turned) > np.linalg.norm(front - variety_vector(light, 3.0, 0.9))

"""Quality metrics on real derived photos: blur, darkness, over-exposure, JPEG blocks and face resolution."""

from __future__ import annotations

import io

import photo_factory
import pytest
from PIL import Image

from pipeline.intake.faces import detect_faces
from pipeline.intake.quality import measure_quality, quality_issues, quality_score
from pipeline.settings import ClassifySettings

SETTINGS = ClassifySettings()


@pytest.fixture(scope="module")
def portrait() -> Image.Image:
    return photo_factory.portrait_variants(photo_factory.astronaut(), photo_factory.ASTRONAUT_FACE, 1)[0]


def _measure(image: Image.Image, **kwargs):
    faces = detect_faces(image)
    return measure_quality(image, faces[0] if faces else None, **kwargs)


def test_clean_portrait_has_no_issues_and_a_high_score(portrait):
    metrics = _measure(portrait)
    assert quality_issues(metrics, SETTINGS) == ()
    assert quality_score(metrics, SETTINGS) > 80
    assert metrics.face_pixels > SETTINGS.min_face_pixels
    assert SETTINGS.min_mean_luma < metrics.mean_luma < SETTINGS.max_mean_luma


def test_blur_is_caught_and_a_little_softness_only_lowers_the_score(portrait):
    sharp = _measure(portrait)
    soft = _measure(photo_factory.blurred(portrait, 1))
    blurred = _measure(photo_factory.blurred(portrait, 6))
    assert sharp.edge_blur < soft.edge_blur < blurred.edge_blur
    assert "blurry" not in quality_issues(soft, SETTINGS)
    assert "blurry" in quality_issues(blurred, SETTINGS)
    assert quality_score(sharp, SETTINGS) > quality_score(soft, SETTINGS) > quality_score(blurred, SETTINGS)


def test_dark_photo_is_underexposed_not_blurry(portrait):
    dark = _measure(photo_factory.darkened(portrait))
    issues = quality_issues(dark, SETTINGS)
    assert "underexposed" in issues and "blurry" not in issues
    slightly = _measure(photo_factory.darkened(portrait, 0.55))
    assert quality_issues(slightly, SETTINGS) == ()
    assert quality_score(slightly, SETTINGS) < quality_score(_measure(portrait), SETTINGS)


def test_overexposed_photo(portrait):
    over = photo_factory.overexposed(portrait)
    metrics = _measure(over)  # the face may be lost in the glare: then the whole frame is judged
    assert "overexposed" in quality_issues(metrics, SETTINGS)
    assert metrics.highlights_clipped > SETTINGS.max_clipped_fraction


def test_jpeg_blocks_are_seen_on_a_full_size_jpeg(portrait):
    clean = _measure(portrait, grid_aligned=True)
    blocky_image = Image.open(io.BytesIO(photo_factory.jpeg_bytes(portrait, quality=8))).convert("RGB")
    blocky = _measure(blocky_image, grid_aligned=True)
    assert blocky.blockiness > clean.blockiness + 0.3
    assert quality_score(blocky, SETTINGS) < quality_score(clean, SETTINGS)
    assert _measure(portrait).blockiness is None  # not asked: reduced images have no 8-pixel grid


def test_small_face_is_low_resolution():
    metrics = _measure(photo_factory.astronaut())  # her face is ~100 px: too few for a 512 px crop
    assert "low_resolution" in quality_issues(metrics, SETTINGS)
    assert metrics.crop_side < SETTINGS.training_resolution


def test_reduced_image_reports_original_pixels(portrait):
    half = portrait.resize((portrait.width // 2, portrait.height // 2))
    full = _measure(portrait)
    reduced = _measure(half, scale=0.5)
    assert reduced.face_pixels == pytest.approx(full.face_pixels, rel=0.08)

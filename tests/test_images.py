"""Decoding: every format and mode a phone or camera produces becomes an upright RGB image; bad files are refused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import photo_factory
import pytest
from PIL import Image

from pipeline.intake.images import ImageError, image_size, open_image


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return photo_factory.astronaut()


def _close_to(decoded: Image.Image, reference: Image.Image, tolerance: float) -> bool:
    a = np.asarray(decoded.convert("L"), dtype=np.float64)
    b = np.asarray(reference.convert("L").resize(decoded.size), dtype=np.float64)
    return float(np.abs(a - b).mean()) < tolerance


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_common_formats_decode_to_rgb(astronaut, fmt):
    decoded = open_image(_encode(astronaut, fmt))
    assert decoded.image.mode == "RGB"
    assert decoded.format == fmt
    assert decoded.original_size == astronaut.size
    assert _close_to(decoded.image, astronaut, 6)


def test_exif_rotation_is_applied(astronaut):
    data = photo_factory.with_exif_rotation(astronaut, orientation=6)
    assert Image.open(io.BytesIO(data)).size == (astronaut.height, astronaut.width)  # stored turned
    decoded = open_image(data)
    assert decoded.image.size == astronaut.size
    assert decoded.original_size == astronaut.size
    assert image_size(data) == astronaut.size
    assert _close_to(decoded.image, astronaut, 8)
    # and not left as stored: the rotated pixels would differ a lot
    assert not _close_to(decoded.image, astronaut.rotate(90), 30)


def test_exif_rotation_with_reduced_decode(astronaut):
    big = astronaut.resize((1600, 1200))
    decoded = open_image(photo_factory.with_exif_rotation(big, orientation=6), max_side=400)
    assert decoded.original_size == (1600, 1200)
    assert max(decoded.image.size) == 400
    assert decoded.image.width > decoded.image.height  # upright: landscape as the original
    assert decoded.scale == pytest.approx(0.25, abs=0.01)


def test_cmyk_palette_gray_16bit_become_rgb(astronaut):
    cmyk = open_image(_encode(astronaut.convert("CMYK"), "JPEG"))
    assert cmyk.image.mode == "RGB" and _close_to(cmyk.image, astronaut, 12)

    palette = open_image(_encode(astronaut.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"))
    assert palette.image.mode == "RGB" and _close_to(palette.image, astronaut, 8)

    gray = open_image(_encode(astronaut.convert("L"), "PNG"))
    assert gray.image.mode == "RGB" and _close_to(gray.image, astronaut, 2)

    values16 = (np.asarray(astronaut.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    sixteen = open_image(_encode(Image.fromarray(values16), "PNG"))
    assert sixteen.image.mode == "RGB"
    # scaled, not clipped to white as a plain convert would do
    assert _close_to(sixteen.image, astronaut, 2)


def test_transparent_png_is_flattened_on_white(astronaut):
    rgba = astronaut.convert("RGBA")
    rgba.putalpha(0)
    decoded = open_image(_encode(rgba, "PNG"))
    assert decoded.image.mode == "RGB"
    assert np.asarray(decoded.image).min() == 255


def test_animation_uses_first_frame(astronaut):
    frames = [astronaut, Image.new("RGB", astronaut.size, (0, 0, 0))]
    for fmt in ("GIF", "WEBP"):
        data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)
        decoded = open_image(data)
        assert decoded.image.mode == "RGB"
        assert np.asarray(decoded.image).mean() > 60, fmt  # the photo, not the black second frame


def test_reduced_jpeg_decode_keeps_original_size(astronaut):
    big = astronaut.resize((4000, 3000))
    data = photo_factory.jpeg_bytes(big)
    decoded = open_image(data, max_side=640)
    assert decoded.original_size == (4000, 3000)
    assert decoded.image.size == (640, 480)
    assert _close_to(decoded.image, big, 6)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (photo_factory.truncated_jpeg(), "unreadable"),
        (photo_factory.text_named_jpg(), "unreadable"),
        (b"", "unreadable"),
        (photo_factory.decompression_bomb_png(), "too_large"),
    ],
    ids=["truncated", "text", "empty", "bomb"],
)
def test_bad_files_are_refused_with_a_code(data, code):
    with pytest.raises(ImageError) as info:
        open_image(data)
    assert info.value.code == code
    assert str(info.value)


def test_pixel_limit_is_ours(astronaut):
    with pytest.raises(ImageError) as info:
        open_image(photo_factory.jpeg_bytes(astronaut), max_pixels=100_000)
    assert info.value.code == "too_large"
    assert "MP" in str(info.value)


def test_paths_work_like_bytes(tmp_path: Path, astronaut):
    path = tmp_path / "a.jpg"
    path.write_bytes(photo_factory.jpeg_bytes(astronaut))
    assert open_image(path).original_size == astronaut.size
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        open_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageError):
        open_image(tmp_path / "missing.jpg")


def test_heic_where_pillow_heif_is_installed(astronaut):
    pytest.importorskip("pillow_heif")  # optional: HEIC support comes with pillow-heif
    from pipeline.intake.images import heif_available

    assert heif_available()
    decoded = open_image(_encode(astronaut, "HEIF"))
    assert decoded.format == "HEIF" and decoded.image.mode == "RGB"
    assert _close_to(decoded.image, astronaut, 8)

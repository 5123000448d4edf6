"""Decoding uploaded photos robustly into upright 8-bit RGB, with clear refusals.

Every photo in the app enters through :func:`open_image`: it applies the EXIF orientation, takes the first frame
of an animation, converts CMYK, palette, 16-bit, grayscale and transparent images to RGB, refuses pixel bombs
from the header alone (before any pixel is decoded), and can decode JPEGs at reduced size with ``draft()`` so a
12 MP photo is analysed without paying for a full decode.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

UNREADABLE = "unreadable"
TOO_LARGE = "too_large"

# EXIF orientations 5–8 swap width and height when applied.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


class ImageError(ValueError):
    """A file that cannot be used as a photo. ``code`` is ``"unreadable"`` or ``"too_large"``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB image, possibly decoded at reduced size, and the size of the full-resolution photo."""

    image: Image.Image
    original_size: tuple[int, int]  # (width, height) of the upright full-resolution photo
    format: str  # "JPEG", "PNG", "WEBP", "HEIF", ...

    @property
    def scale(self) -> float:
        """Pixels of ``image`` per pixel of the original (1.0 when decoded at full size)."""
        return self.image.width / self.original_size[0]


@functools.cache
def heif_available() -> bool:
    """Register the HEIC/HEIF opener once, where pillow-heif is installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _open(source: Path | bytes) -> Image.Image:
    heif_available()
    try:
        with warnings.catch_warnings():
            # We check the pixel count against our own limit; Pillow's global bomb check stays as it is.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(source) if isinstance(source, bytes | bytearray) else source)
    except Image.DecompressionBombError as exc:
        # Pillow's own words ("…DOS attack") alarm more than they explain; say what it is and what to do.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "far too many pixels"
        raise ImageError(TOO_LARGE, f"{size} is far more than a photo needs (a decompression bomb or a huge "
                                    "scan): resize it to about 12 MP") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(UNREADABLE, "not an image format we can read (JPEG, PNG, WebP, HEIC)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(UNREADABLE, f"the file is damaged or not an image: {exc}") from exc


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except (OSError, ValueError, TypeError):
        return 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is flattened onto white (what a viewer shows)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Pillow's own convert clips 16-bit values at 255 (a white image); scale them instead.
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def image_size(source: Path | bytes) -> tuple[int, int]:
    """The upright (width, height) from the header alone, without decoding pixels."""
    with _open(source) as img:
        w, h = img.size
        return (h, w) if _orientation(img) in _SWAPPING_ORIENTATIONS else (w, h)


def open_image(source: Path | bytes, *, max_pixels: int = 90_000_000, max_side: int | None = None) -> DecodedImage:
    """Decode ``source`` (a path or the file's bytes) to an upright RGB image.

    ``max_pixels`` refuses pixel bombs from the header (code ``too_large``). ``max_side`` asks for an image no
    larger than that on its long side: JPEGs are decoded at 1/2, 1/4 or 1/8 scale by the decoder itself (much
    faster than a full decode), then resized. Raises :class:`ImageError` with code ``unreadable`` for truncated,
    empty or non-image files.
    """
    if isinstance(source, bytes | bytearray) and not source:
        raise ImageError(UNREADABLE, "the file is empty (0 bytes)")
    if isinstance(source, Path):
        try:
            empty = source.stat().st_size == 0
        except OSError as exc:
            raise ImageError(UNREADABLE, f"cannot read the file: {exc}") from exc
        if empty:
            raise ImageError(UNREADABLE, "the file is empty (0 bytes)")
    with _open(source) as img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError(
                TOO_LARGE,
                f"{width}×{height} is {width * height / 1e6:.0f} MP, over the {max_pixels / 1e6:.0f} MP limit "
                "(a decompression bomb or a needlessly large photo): resize it below the limit",
            )
        fmt = img.format or "unknown"
        orientation = _orientation(img)
        original = (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)
        try:
            img.seek(0)  # animated GIF/WebP/APNG: the first frame
            if max_side is not None and fmt == "JPEG":
                # draft() picks the smallest DCT scale that is still >= the requested size.
                ratio = max_side / max(width, height)
                if ratio < 1:
                    img.draft("RGB", (max(1, int(width * ratio)), max(1, int(height * ratio))))
            frame = ImageOps.exif_transpose(img)  # decodes the pixels, then turns them upright
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(UNREADABLE, f"the file is damaged (truncated or corrupt): {exc}") from exc
    frame = _to_rgb(frame)
    if max_side is not None and max(frame.size) > max_side:
        ratio = max_side / max(frame.size)
        frame = frame.resize((max(1, round(frame.width * ratio)), max(1, round(frame.height * ratio))),
                             Image.Resampling.BILINEAR, reducing_gap=2.0)
    return DecodedImage(image=frame, original_size=original, format=fmt)


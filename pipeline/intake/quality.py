"""Photo quality as numbers and a 0–100 score: sharpness, exposure, contrast, face resolution, noise, JPEG blocks.

Everything is measured on the face region (the part the LoRA learns from), or on the whole frame when no face was
found. Hard limits (in ClassifySettings) reject a photo; between a limit and a comfortable value the score drops
smoothly, so a slightly soft or slightly dark photo is ranked lower rather than thrown away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.intake.faces import Face
from pipeline.settings import ClassifySettings

# Blur is judged on the face brought to this side (shrunk or enlarged), so it is measured relative to the face:
# an upscaled photo is not blurrier than its source, and a big face is not sharper for its pixel count.
BLUR_FACE_SIDE = 128
REBLUR_SIGMA = 1.0  # the known blur added to compare with (px at BLUR_FACE_SIDE)
MAX_EDGE_BLUR = 99.0  # reported for a region without edges (finite, so it stays valid JSON)
MIN_EDGE_GRADIENT = 4.0  # Sobel response (luma levels × 4): below it a pixel is flat, not an edge
MIN_EDGE_PIXELS = 16
EDGE_SHARE = 0.10  # the strongest tenth of the gradients: the face's edges (eyes, brows, mouth, outline)
SHADOW_LEVEL, HIGHLIGHT_LEVEL = 8, 247  # luma at or beyond these counts as clipped
# Comfortable values: at or beyond them a component scores full marks.
CRISP_EDGE_BLUR = 0.8  # px at BLUR_FACE_SIDE: a well-focused face (clean photos of the eval set: 0.71–1.72)
GOOD_CONTRAST = 40.0  # luma standard deviation of a well-lit face
GOOD_LUMA = (90.0, 170.0)  # face mean luma range that needs no correction
# Weights of the score's components (sum 1): sharpness matters most for a LoRA, then light and resolution.
WEIGHTS = {"sharpness": 0.35, "exposure": 0.25, "resolution": 0.2, "contrast": 0.1, "artefacts": 0.1}


@dataclass(frozen=True)
class QualityMetrics:
    edge_blur: float  # how wide the face's edges are: Gaussian sigma in px with the face at 128 px (see edge_blur)
    mean_luma: float  # 0–255, face region
    shadows_clipped: float  # fraction of face pixels at luma ≤ 8
    highlights_clipped: float  # fraction of face pixels at luma ≥ 247
    contrast: float  # luma standard deviation of the face region
    noise: float  # estimated noise sigma in luma levels (median absolute deviation of the fine detail)
    blockiness: float | None  # JPEG 8×8 block edge strength relative to other edges (1.0: none); None if unknown
    face_pixels: float | None  # face size (box side) in original pixels
    crop_side: float | None  # side of the square face crop the original can give, in pixels

    def resolution_ratio(self, training_resolution: int) -> float | None:
        return None if self.crop_side is None else self.crop_side / training_resolution


def _region(image: Image.Image, face: Face | None, pad: float = 0.1) -> tuple[Image.Image, bool]:
    """The face with a margin, and True; or the whole frame and False (no face, or a box too small to crop)."""
    if face is None:
        return image, False
    x0, y0, x1, y1 = face.box
    dx, dy = pad * (x1 - x0), pad * (y1 - y0)
    box = (max(0, round(x0 - dx)), max(0, round(y0 - dy)),
           min(image.width, round(x1 + dx)), min(image.height, round(y1 + dy)))
    if box[2] - box[0] < 4 or box[3] - box[1] < 4:
        return image, False
    return image.crop(box), True


def _blockiness(luma: np.ndarray) -> float | None:
    """Mean jump across 8-pixel block borders over the mean jump elsewhere (≈1 for clean images)."""
    if min(luma.shape) < 32:
        return None
    diff = np.abs(np.diff(luma, axis=1))
    cols = np.arange(diff.shape[1])
    at_border = diff[:, cols % 8 == 7].mean()
    inside = diff[:, cols % 8 != 7].mean()
    return float(at_border / max(inside, 1e-3))


def edge_blur(region: Image.Image, face_side: float | None) -> float:
    """The blur of ``region``'s edges as a Gaussian sigma in pixels, with the face scaled to BLUR_FACE_SIDE.

    Re-blur estimation: blurring an edge of width s by a known sigma a shrinks its gradient by the factor
    sqrt(s² + a²) / s, so the ratio of the gradients before and after gives s back. Taken on the strongest edges and
    as a median, it depends neither on contrast (a dark face is not "blurry") nor on how many pixels the photo has.
    """
    grey = region.convert("L")
    # a face-less region is judged at 256 px; never enlarged past 4x (a wrong face size must not cost a gigabyte)
    ratio = min(4.0, BLUR_FACE_SIDE / (face_side or max(grey.size) / 2))
    size = (max(8, round(grey.width * ratio)), max(8, round(grey.height * ratio)))
    resample = Image.Resampling.BICUBIC if ratio > 1 else Image.Resampling.BOX
    luma = np.asarray(grey.resize(size, resample), dtype=np.float64)

    blurred = ndimage.gaussian_filter(luma, REBLUR_SIGMA)
    widths = []
    for axis in (0, 1):  # each direction alone, so a motion blur (one direction) is seen too
        before = np.abs(ndimage.sobel(luma, axis))
        after = np.abs(ndimage.sobel(blurred, axis))
        # the strongest tenth, but never flat pixels: a face mostly blown out still has its few real edges
        edges = before >= max(float(np.quantile(before, 1.0 - EDGE_SHARE)), MIN_EDGE_GRADIENT)
        if edges.sum() < MIN_EDGE_PIXELS:  # no edges to judge: as blurred as can be
            return MAX_EDGE_BLUR
        shrink = np.clip(before[edges] / np.maximum(after[edges], 1e-6), 1.0 + 1e-4, None)
        widths.append(float(np.median(REBLUR_SIGMA / np.sqrt(shrink**2 - 1.0))))
    return min(max(widths), MAX_EDGE_BLUR)


def measure_quality(image: Image.Image, face: Face | None, *, scale: float = 1.0, crop_factor: float = 2.2,
                    original_size: tuple[int, int] | None = None, grid_aligned: bool = False) -> QualityMetrics:
    """Measure ``image`` (RGB, possibly reduced by ``scale`` from the original) around ``face`` (in its pixels).

    ``crop_factor`` is the crop side over the face side used by the crops (so the achievable crop resolution
    can be judged now); ``grid_aligned`` says the image is the full-resolution JPEG, so 8×8 blocks are visible.
    """
    original_size = original_size or (round(image.width / scale), round(image.height / scale))
    region, is_face = _region(image, face)
    region = region.convert("L")
    luma = np.asarray(region, dtype=np.float64)
    blur = edge_blur(region, face.side if is_face else None)
    small = region
    if max(region.size) > 256:  # noise is judged at a common size too, so a 12 MP face is not "noisier"
        ratio = 256 / max(region.size)
        small = region.resize((max(1, round(region.width * ratio)), max(1, round(region.height * ratio))),
                              Image.Resampling.BILINEAR, reducing_gap=2.0)
    laplacian = ndimage.laplace(np.asarray(small, dtype=np.float64))
    contrast = float(luma.std())
    # noise: robust sigma of the Laplacian (MAD) in luma levels; edges are a minority, so the median ignores them
    noise = float(np.median(np.abs(laplacian - np.median(laplacian))) * 1.4826 / math.sqrt(20))
    # blocks sit on the original's 8-pixel grid, so only the whole, unreduced image shows them
    blockiness = _blockiness(np.asarray(image.convert("L"), dtype=np.float64)) if grid_aligned else None
    face_pixels = crop_side = None
    if face is not None:
        face_pixels = face.side / scale
        crop_side = min(face_pixels * crop_factor, float(min(original_size)))
    return QualityMetrics(
        edge_blur=blur,
        mean_luma=float(luma.mean()),
        shadows_clipped=float((luma <= SHADOW_LEVEL).mean()),
        highlights_clipped=float((luma >= HIGHLIGHT_LEVEL).mean()),
        contrast=contrast,
        noise=noise,
        blockiness=blockiness,
        face_pixels=face_pixels,
        crop_side=crop_side,
    )


def quality_issues(metrics: QualityMetrics, settings: ClassifySettings) -> tuple[str, ...]:
    """Hard quality reasons: ``blurry``, ``underexposed``, ``overexposed``, ``low_resolution``."""
    reasons = []
    if metrics.edge_blur > settings.max_edge_blur:
        reasons.append("blurry")
    if metrics.mean_luma < settings.min_mean_luma or metrics.shadows_clipped > settings.max_clipped_fraction:
        reasons.append("underexposed")
    if metrics.mean_luma > settings.max_mean_luma or metrics.highlights_clipped > settings.max_clipped_fraction:
        reasons.append("overexposed")
    if metrics.face_pixels is not None and metrics.face_pixels < settings.min_face_pixels:
        reasons.append("low_resolution")
    return tuple(reasons)


def _ramp(value: float, low: float, high: float) -> float:
    """0 at ``low``, 1 at ``high``, linear between (either order)."""
    if high == low:
        return 1.0 if value >= high else 0.0
    return float(np.clip((value - low) / (high - low), 0.0, 1.0))


def quality_components(metrics: QualityMetrics, settings: ClassifySettings) -> dict[str, float]:
    """Each component in [0, 1]; see WEIGHTS."""
    # full marks for a crisp face, about half at the limit (a little soft: kept, ranked lower), none at 1.5× it
    sharp = _ramp(metrics.edge_blur, settings.max_edge_blur * 1.5, CRISP_EDGE_BLUR)
    luma = metrics.mean_luma
    if luma < GOOD_LUMA[0]:
        exposure = _ramp(luma, settings.min_mean_luma * 0.6, GOOD_LUMA[0])
    else:
        exposure = _ramp(luma, min(255.0, settings.max_mean_luma * 1.15), GOOD_LUMA[1])
    clipped = metrics.shadows_clipped + metrics.highlights_clipped
    exposure *= 1.0 - _ramp(clipped, 0.02, settings.max_clipped_fraction * 1.5)
    contrast = _ramp(metrics.contrast, 8.0, GOOD_CONTRAST)
    ratio = metrics.resolution_ratio(settings.training_resolution)
    if ratio is None:
        resolution = 0.0
    else:
        resolution = _ramp(ratio, 0.4, 1.0)
    artefacts = 1.0 - _ramp(metrics.noise, 3.0, 12.0)
    if metrics.blockiness is not None:
        artefacts *= 1.0 - _ramp(metrics.blockiness, 1.3, 2.5)
    return {"sharpness": sharp, "exposure": exposure, "resolution": resolution, "contrast": contrast,
            "artefacts": artefacts}


def quality_score(metrics: QualityMetrics, settings: ClassifySettings) -> float:
    """0–100: the weighted geometric mean of the components, so one very poor aspect pulls the whole score down
    (a blurred photo cannot score well on its good exposure); each component is floored at 0.05."""
    parts = quality_components(metrics, settings)
    log_score = sum(WEIGHTS[name] * math.log(max(value, 0.05)) for name, value in parts.items())
    return round(100.0 * math.exp(log_score), 1)

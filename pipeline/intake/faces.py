"""Face detection with MTCNN (facenet-pytorch): boxes, probabilities, 5-point landmarks and a yaw estimate.

MTCNN runs on a downscaled copy (640 px: ~0.07 s instead of ~2 s on 12 MP); only when it finds nothing there does
it take a second, finer look (1600 px, smaller minimum face), so a tiny face in a big frame is reported as too
small rather than missing. The detector is loaded once, on first use, and reused.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.weights_lock import WEIGHTS_LOCK

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
Point = tuple[float, float]

# Depth of the nose tip in front of the eyes over half the distance between the eyes (adult faces: ~22 mm / 32 mm).
# It turns the nose's sideways shift into an angle; see estimate_yaw.
_NOSE_DEPTH_RATIO = 0.7


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixel coordinates of the image it was found in."""

    box: Box
    probability: float
    # left eye, right eye, nose, left mouth corner, right mouth corner ("left" = image left)
    landmarks: tuple[Point, ...]

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def side(self) -> float:
        """The face's size as one length: the geometric mean of box width and height."""
        return math.sqrt(self.area)

    @property
    def center(self) -> Point:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    @property
    def yaw(self) -> float:
        """Head turn in degrees, estimated from the landmarks: 0 facing the camera, positive turned to image right."""
        return estimate_yaw(self.landmarks)

    @property
    def roll(self) -> float:
        """Head tilt in degrees (the angle of the line between the eyes)."""
        (lx, ly), (rx, ry) = self.landmarks[0], self.landmarks[1]
        return math.degrees(math.atan2(ry - ly, rx - lx))

    def scaled(self, factor: float) -> Face:
        """The same face in an image ``factor`` times the size (e.g. back to the original photo)."""
        return Face(box=tuple(v * factor for v in self.box), probability=self.probability,  # type: ignore[arg-type]
                    landmarks=tuple((x * factor, y * factor) for x, y in self.landmarks))

    def border_margin(self, size: tuple[int, int]) -> float:
        """Smallest gap between the box and the image border, as a fraction of the face size (negative: cut)."""
        w, h = size
        gaps = (self.box[0], self.box[1], w - self.box[2], h - self.box[3])
        return min(gaps) / max(self.side, 1.0)


def eye_brightness(image: Image.Image, face: Face) -> float:
    """Mean luma around both eyes over the face's mean luma: ~1 for bare eyes, far lower behind sunglasses.

    A ratio, not a level, so a dark photo or a dark skin tone does not read as hidden eyes. The patches are
    squares of a quarter face width centred on MTCNN's eye landmarks.
    """
    luma = np.asarray(image.convert("L"), dtype=np.float32)
    x0, y0, x1, y1 = (int(round(v)) for v in face.box)
    face_region = luma[max(0, y0):max(0, y1), max(0, x0):max(0, x1)]
    if face_region.size == 0 or face_region.mean() < 1:
        return 1.0  # nothing to compare against: exposure checks speak for such a photo
    half = max(1, int(0.13 * face.width))
    patches = [luma[max(0, int(ey) - half):int(ey) + half, max(0, int(ex) - half):int(ex) + half]
               for ex, ey in face.landmarks[:2]]
    patches = [patch for patch in patches if patch.size]
    if not patches:
        return 1.0
    return float(np.mean([patch.mean() for patch in patches]) / face_region.mean())


def estimate_yaw(landmarks: tuple[Point, ...]) -> float:
    """Yaw in degrees from MTCNN's five points.

    Seen from the front, the nose tip sits midway between the eyes; as the head turns by θ it moves sideways by
    depth·sinθ while the eyes close up to width·cosθ, so the nose's offset over half the eye distance is
    (depth / half-width)·tanθ. Measured along the eye line, so a tilted (rolled) head gives the same yaw.
    """
    (lx, ly), (rx, ry), (nx, ny) = landmarks[0], landmarks[1], landmarks[2]
    ex, ey = rx - lx, ry - ly
    half = math.hypot(ex, ey) / 2
    if half < 1e-6:
        return 90.0  # both eyes on one point: a profile
    mx, my = (lx + rx) / 2, (ly + ry) / 2
    offset = ((nx - mx) * ex + (ny - my) * ey) / (2 * half) / half  # projection on the eye line, in half-widths
    return math.degrees(math.atan(offset / _NOSE_DEPTH_RATIO))


@functools.cache
def _mtcnn(min_face_size: int):  # facenet_pytorch.MTCNN, imported lazily: torch is slow to import
    from facenet_pytorch import MTCNN

    logger.info("loading MTCNN (min face %d px)", min_face_size)
    with WEIGHTS_LOCK:  # a load in another thread must not turn its new weights into meta tensors
        return MTCNN(keep_all=True, min_face_size=min_face_size, device="cpu").eval()


_lock = threading.Lock()  # one MTCNN forward at a time: the CPU has few cores
# MTCNN's small convolutions gain little from more threads (0.067 s with 2, 0.1 s with 1 on 640 px), but when
# the cores are busy (training, tests) torch's thread team stalls: 0.5–3 s per photo measured with 2 threads,
# 0.1–0.13 s with 1. One thread is the robust choice.
DETECT_THREADS = 1


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run torch on at most ``count`` threads inside the block (OpenMP's setting is per calling thread)."""
    import torch

    previous = torch.get_num_threads()
    if previous <= count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _detect_at(image: Image.Image, max_side: int, min_face_size: int, min_confidence: float) -> list[Face]:
    ratio = min(1.0, max_side / max(image.size))
    if min(image.size) * ratio < min_face_size:
        return []  # smaller than the smallest face MTCNN looks for (it fails on an empty image pyramid)
    small = image if ratio >= 1.0 else image.resize(
        (max(1, round(image.width * ratio)), max(1, round(image.height * ratio))), Image.Resampling.BILINEAR,
        reducing_gap=2.0)
    scale = image.width / small.width
    with _lock, _torch_threads(DETECT_THREADS):
        boxes, probs, points = _mtcnn(min_face_size).detect(small, landmarks=True)
    if boxes is None:
        return []
    # facenet-pytorch returns object arrays; make them plain floats
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
    faces = [
        Face(box=tuple(float(v) * scale for v in box), probability=float(prob),  # type: ignore[arg-type]
             landmarks=tuple((float(x) * scale, float(y) * scale) for x, y in pts))
        for box, prob, pts in zip(boxes, probs, points, strict=True)
        if prob >= min_confidence
    ]
    return sorted(faces, key=lambda f: f.area, reverse=True)


def detect_faces(image: Image.Image, *, max_side: int = 640, min_confidence: float = 0.90,
                 fallback_side: int = 1600, fallback_min_face: int = 12) -> list[Face]:
    """Faces in ``image`` (RGB), largest first, in ``image``'s pixel coordinates.

    Detection runs on a copy at most ``max_side`` on its long side; if it finds nothing, a second look at
    ``fallback_side`` with a ``fallback_min_face``-pixel minimum face catches faces too small to see at first.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    faces = _detect_at(image, max_side, 20, min_confidence)
    if not faces and fallback_side > 0:
        faces = _detect_at(image, fallback_side, fallback_min_face, min_confidence)
        if faces:
            logger.debug("found %d small face(s) only on the second look", len(faces))
    return faces

"""Face-centred training crops of the selected photos, with captions: the hand-off to training as a ``Dataset``.

Each selected photo gives a square crop at the training resolution, centred a little above the face's centre (the
detector's box runs from the brows to the chin; hair belongs in the picture), and a crop with the photo's own
aspect ratio for aspect-ratio bucketing. Crops are taken from the full-resolution original.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from PIL import Image

from pipeline import events as ev
from pipeline.intake.captions import Captioner, CaptionHints
from pipeline.intake.classify import ClassificationResult, PhotoRecord
from pipeline.intake.dataset import Dataset, DatasetItem
from pipeline.intake.images import ImageError, open_image
from pipeline.intake.variety import SMILE_RATIO
from pipeline.settings import ClassifySettings

logger = logging.getLogger(__name__)

HEAD_LIFT = 0.15  # crop centre above the face box centre, in face heights: room for hair, less neck
MIN_CONTEXT = 1.5  # the square crop is never tighter than this many face sizes
ASPECT_CONTEXT = 1.6  # the aspect crop is this much larger than the square one (more shoulders and setting)


def _fit(center: float, side: float, limit: float) -> tuple[float, float]:
    """An interval of length ``side`` (at most ``limit``) around ``center``, moved inside [0, limit]."""
    side = min(side, limit)
    start = min(max(0.0, center - side / 2), limit - side)
    return start, start + side


def square_crop_box(face_box: tuple[float, float, float, float], size: tuple[int, int],
                    crop_factor: float) -> tuple[int, int, int, int]:
    """A square around the face, ``crop_factor`` face sizes wide, kept inside the image (smaller if it must)."""
    x0, y0, x1, y1 = face_box
    face = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - HEAD_LIFT * (y1 - y0)
    # Near an edge, take a tighter square (down to MIN_CONTEXT face sizes) rather than an off-centre face.
    room = 2 * min(cx, size[0] - cx, cy, size[1] - cy)
    side = min(face * crop_factor, *size)
    side = min(side, max(room, face * MIN_CONTEXT))
    left, right = _fit(cx, side, size[0])
    top, bottom = _fit(cy, side, size[1])
    return round(left), round(top), round(right), round(bottom)


def aspect_crop_box(face_box: tuple[float, float, float, float], size: tuple[int, int],
                    crop_factor: float) -> tuple[int, int, int, int]:
    """A crop with the photo's aspect ratio around the face, with more context than the square one."""
    x0, y0, x1, y1 = face_box
    w, h = size
    face = max(x1 - x0, y1 - y0)
    scale = min(1.0, face * crop_factor * ASPECT_CONTEXT / min(w, h))
    cw, ch = w * scale, h * scale
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - HEAD_LIFT * (y1 - y0)
    left, right = _fit(cx, cw, w)
    top, bottom = _fit(cy, ch, h)
    return round(left), round(top), round(right), round(bottom)


def _stem(file: str, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(file).stem).strip("._") or "photo"
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}"
    used.add(candidate)
    return candidate


def _hints(record: PhotoRecord) -> CaptionHints:
    return CaptionHints(smiling=None if record.expression is None else record.expression >= SMILE_RATIO,
                        yaw=record.yaw, lighting=record.lighting_group)


def build_dataset(result: ClassificationResult, folder: Path, trigger_word: str, resolution: int, *,
                  captions: Mapping[str, str] | None = None, on_event: ev.EventCallback = ev.ignore,
                  settings: ClassifySettings = ClassifySettings(),  # noqa: B008 (frozen)
                  use_blip: bool = True) -> Dataset:
    """Crops of the selected photos in ``folder`` (square PNGs, plus ``aspect/`` crops) with captions.

    ``captions`` (file name → text) are the user's edits and win; the trigger word is added where they omit it.
    """
    if resolution < 16:
        raise ValueError(f"resolution: must be at least 16 pixels, got {resolution}")
    selected = result.selected_records
    if not selected:
        raise ValueError(f"result: no photos are selected for training ({result.report.summary})")
    folder = Path(folder)
    (folder / "aspect").mkdir(parents=True, exist_ok=True)
    captions = dict(captions or {})
    captioner = Captioner(trigger_word, use_blip=use_blip and len(captions) < len(selected))
    used: set[str] = set()
    items = []
    total = len(selected)
    on_event(ev.Progress(stage="dataset", done=0, total=total, message="cropping faces"))
    for i, record in enumerate(selected):
        if record.path is None or record.face_box is None:
            logger.warning("%s has no face box; left out of the dataset", record.file)
            continue
        try:
            image = open_image(record.path).image
        except ImageError as exc:  # the original was removed or damaged since classification
            logger.warning("%s cannot be read any more (%s); left out of the dataset", record.file, exc)
            on_event(ev.Message(text=f"{record.file} left out of the dataset: {exc}", level="warning"))
            continue
        box = square_crop_box(record.face_box, image.size, settings.crop_factor)
        crop = image.crop(box)
        if crop.width < resolution:
            logger.info("%s: face crop is %d px, upscaled to %d", record.file, crop.width, resolution)
        crop = crop.resize((resolution, resolution), Image.Resampling.LANCZOS)
        stem = _stem(record.file, used)
        path = folder / f"{stem}.png"
        crop.save(path)
        aspect = image.crop(aspect_crop_box(record.face_box, image.size, settings.crop_factor))
        ratio = resolution / min(aspect.size)
        if ratio < 1:  # only ever shrink: bucketing takes it from here
            aspect = aspect.resize((round(aspect.width * ratio), round(aspect.height * ratio)),
                                   Image.Resampling.LANCZOS)
        aspect_path = folder / "aspect" / f"{stem}.png"
        aspect.save(aspect_path)
        text = captions.get(record.file, "").strip()
        if text:
            if trigger_word not in text:
                text = f"{trigger_word}, {text}"
        else:
            text = captioner.caption(crop, _hints(record))
        items.append(DatasetItem(image=path, caption=text, source=record.file, aspect_image=aspect_path))
        on_event(ev.Progress(stage="dataset", done=i + 1, total=total, message=f"{record.file}: cropped"))
    if not items:
        raise ValueError("result: none of the selected photos could be cropped (originals missing?); classify again")
    return Dataset(items=tuple(items), trigger_word=trigger_word, resolution=resolution, captioner=captioner.name)


def face_preview(record: PhotoRecord, crop_factor: float = 2.2, side: int = 256) -> Image.Image | None:
    """What training will use from this photo: its square crop, with the detected face boxed (None when no face
    was found or the file cannot be read). For the Review tab's cards."""
    from PIL import ImageDraw

    if record.face_box is None or record.path is None or record.size is None:
        return None
    try:
        decoded = open_image(record.path, max_side=1024)
    except ImageError:
        return None
    scale = decoded.scale
    box = square_crop_box(record.face_box, record.size, crop_factor)
    crop = decoded.image.crop(tuple(round(v * scale) for v in box)).resize((side, side))
    zoom = side / max(1, box[2] - box[0])
    x0, y0, x1, y1 = record.face_box
    ImageDraw.Draw(crop).rectangle([(x0 - box[0]) * zoom, (y0 - box[1]) * zoom, (x1 - box[0]) * zoom,
                                    (y1 - box[1]) * zoom], outline=(255, 170, 0), width=3)
    return crop

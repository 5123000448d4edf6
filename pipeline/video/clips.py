"""The clips a person made of a model, as the Models tab lists them: read from the likeness JSON beside each MP4.

A clip is listed when its JSON names the model (``model_id``, recorded since issue 36's listing) and its MP4 is
still there; a JSON that cannot be read (half a file is never written, but a hand-edited one may be) is skipped.
Nothing is kept anywhere else: deleting a clip's MP4 takes it off the list.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_JSON_SUFFIX = ".likeness.json"


@dataclass(frozen=True)
class ClipRecord:
    """One saved clip of a model: its files, what made it and how like the person it stays."""

    video: Path
    likeness_json: Path
    model_id: str
    kind: str  # "morph" or "image-to-video"
    recognised_share: float | None  # None when no likeness was measured
    verdict: str | None
    prompt: str
    video_model: str  # "" for a morph
    frame_count: int
    made: str  # "2026-12-07 14:03:59", from the file name (``Workflow._new_output_path``)


def video_of(likeness_json: Path) -> Path:
    """The MP4 a likeness JSON belongs to (``likeness_path``'s inverse): ``clip.likeness.json`` → ``clip.mp4``."""
    return likeness_json.with_name(likeness_json.name.removesuffix(_JSON_SUFFIX) + ".mp4")


def _made(stem: str) -> str:
    day, _, time = stem.partition("-")
    if len(day) == 8 and len(time) >= 6 and (day + time[:6]).isdigit():
        return f"{day[:4]}-{day[4:6]}-{day[6:]} {time[:2]}:{time[2:4]}:{time[4:6]}"
    return ""


def _record(path: Path, data: dict) -> ClipRecord:
    share = data.get("recognised_share")
    return ClipRecord(video=video_of(path), likeness_json=path, model_id=str(data.get("model_id", "")),
                      kind=str(data.get("kind", "")), recognised_share=None if share is None else float(share),
                      verdict=data.get("verdict"), prompt=str(data.get("prompt", "")),
                      video_model=str(data.get("video_model", "")), frame_count=int(data.get("frame_count", 0)),
                      made=_made(path.name.removesuffix(_JSON_SUFFIX)))


def _newest_first(folder: Path) -> list[Path]:
    """The likeness JSONs in ``folder``, the latest written first (names start with the second, and two clips can
    share one)."""
    found = []
    for path in folder.glob(f"*{_JSON_SUFFIX}"):
        with contextlib.suppress(OSError):  # deleted meanwhile
            found.append((path.stat().st_mtime_ns, path.name, path))
    return [path for *_, path in sorted(found, reverse=True)]


def list_clips(folder: Path, model_id: str) -> list[ClipRecord]:
    """The clips of ``model_id`` saved in ``folder`` (a workspace's ``videos``), newest first."""
    clips = []
    for path in _newest_first(Path(folder)):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("clip list: skipped %s (%s)", path.name, exc)
            continue
        if isinstance(data, dict) and data.get("model_id") == model_id and video_of(path).is_file():
            clips.append(_record(path, data))
    return clips

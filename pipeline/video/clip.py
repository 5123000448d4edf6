"""A short clip of the person: frames generated with the LoRA along a smooth path, encoded to MP4.

The path runs between two seeds' starting noise (spherical interpolation, which keeps the noise's statistics that
a straight line would shrink in the middle) and, when a second prompt is given, between the two prompts'
embeddings. Every frame is a full generation from its own point on the path, so neighbouring frames are similar
images rather than motion: a "morph" clip. imageio-ffmpeg ships the ffmpeg binary that encodes it.

``make_scored_video`` is the whole product: the clip, every frame's likeness to the person
(``pipeline.video.clip_likeness``) in a JSON beside it, and the prompt, seed, models and likeness in the MP4's metadata.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.events import EventCallback, Message, Progress, StopCheck, ignore, never
from pipeline.generation.generator import Generator
from pipeline.settings import VideoSettings
from pipeline.video.clip_likeness import MORPH, MORPH_WHY, ClipLikeness, PersonReference, likeness_path, save_json

logger = logging.getLogger(__name__)


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1), along the great circle between them."""
    a64, b64 = a.double(), b.double()
    cos = torch.sum(a64 * b64) / (a64.norm() * b64.norm())
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if float(omega) < 1e-4:  # (nearly) the same direction: a straight line is the same path
        return torch.lerp(a64, b64, t).to(a.dtype)
    sin = torch.sin(omega)
    mixed = (torch.sin((1 - t) * omega) / sin) * a64 + (torch.sin(t * omega) / sin) * b64
    return mixed.to(a.dtype)


def path_positions(frames: int, *, loop: bool = False) -> list[float]:
    """Where each frame sits on the path: 0 → 1 evenly, or 0 → 1 → back to 0 (eased) for a seamless loop."""
    if loop:
        return [(1 - math.cos(2 * math.pi * i / frames)) / 2 for i in range(frames)]
    return [i / (frames - 1) for i in range(frames)]


def video_frames(generator: Generator, clip: VideoSettings, *, lora_path: Path | None) -> Iterator[Image.Image]:
    """The frames one by one. Frame 0 is exactly the still image ``generate`` makes for ``clip.prompt`` at
    ``clip.seed_a``.

    The generator stays locked while frames are made, so a clip is not mixed with another request's LoRA.
    """
    from pipeline.models.families import family_of_pipeline

    settings = clip.validate().still()
    with generator.activated(lora_path, clip.lora_scale) as pipe:
        family = family_of_pipeline(pipe)  # FLUX.1 or FLUX.2 [klein]: each encodes prompts its own way
        noise_a, noise_b = (_noise(pipe, seed, clip.width, clip.height) for seed in (clip.seed_a, clip.seed_b))
        embeds_a = family.render_embeds(pipe, clip.prompt)
        embeds_b = family.render_embeds(pipe, clip.prompt_b) if clip.prompt_b.strip() else embeds_a
        for t in path_positions(clip.frames, loop=clip.loop):
            # Walked packed: slerp needs only norms and a dot product, which the layout does not change.
            latents = family.render_latents(pipe, slerp(t, noise_a, noise_b), clip.width, clip.height)
            embeds = tuple(torch.lerp(a, b, t) for a, b in zip(embeds_a, embeds_b, strict=True))
            yield generator.render(pipe, settings, seed=clip.seed_a, latents=latents, embeds=embeds)


def make_video(generator: Generator, clip: VideoSettings, *, lora_path: Path | None, out_path: Path,
               on_event: EventCallback = ignore, should_stop: StopCheck = never) -> Path:
    """Generate the clip's frames and encode them to an H.264 MP4 at ``clip.fps``.

    Reports ``Progress(stage="video")`` per frame. Stopping early keeps the frames made so far in the file.
    """
    clip.validate()  # before ffmpeg starts: a bad request must not leave a file or a process behind
    frames = clip.frames

    def after_frame(done: int) -> bool:
        on_event(Progress("video", done, frames, f"frame {done} of {frames}"))
        if should_stop() and done < frames:
            on_event(Message(f"video stopped after {done} of {frames} frames", level="warning"))
            return True
        return False

    frame_iter = video_frames(generator, clip, lora_path=lora_path)
    try:
        path, done = encode_mp4(frame_iter, out_path, width=clip.width, height=clip.height, fps=clip.fps,
                                after_frame=after_frame)
    finally:
        frame_iter.close()  # releases the generator's lock if we stopped early
    logger.info("wrote %d frames at %d fps to %s", done, clip.fps, path)
    return path


def encode_mp4(frames: Iterable[Image.Image], out_path: Path, *, width: int, height: int, fps: int,
               after_frame: Callable[[int], bool] = lambda _done: False) -> tuple[Path, int]:
    """Encode ``frames`` as they come to an H.264 (yuv420p: every browser and phone plays it) MP4 at ``fps``;
    ``after_frame(frames written)`` returning True ends it there. Returns the path and the frames written."""
    import imageio_ffmpeg

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed at the end, so a crash never leaves a half file under the real name.
    partial = out_path.with_name(f".{out_path.stem}.partial.mp4")
    writer = imageio_ffmpeg.write_frames(
        str(partial), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=8,
        macro_block_size=16, output_params=["-movflags", "+faststart"], ffmpeg_log_level="error",
    )
    writer.send(None)  # start ffmpeg
    done = 0
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame.convert("RGB")))
            done += 1
            if after_frame(done):
                break
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(partial, out_path)
    return out_path, done


@dataclass(frozen=True)
class VideoResult:
    """A finished clip: the MP4, its likeness JSON beside it, what made it and how like the person it stays."""

    video: Path
    likeness_json: Path
    kind: str  # "morph": stills along a path (no video model); "image-to-video": a still animated by a video model
    why: str  # why this kind was made, said on the page
    prompt: str
    prompt_b: str
    seed: int
    model: str  # the library model's name, or "base model"
    base_model: str
    frames: int  # written (fewer than asked when stopped)
    fps: int
    width: int
    height: int
    likeness: ClipLikeness | None  # None without a person to compare with (the bare base model)
    video_model: str = ""  # the image-to-video model that animated it; "" for a morph
    model_id: str = ""  # the library model's id ("" for the base model): the Models tab lists a model's clips by it
    still: str = ""  # the person's own generation it started from (relative to their workspace); "" for a new still

    def to_dict(self) -> dict[str, Any]:
        """What the JSON beside the clip holds: the clip's facts and, per frame, its likeness (``frames``)."""
        unscored = {"frames": [], "recognised_share": None, "likeness": None, "first_drop": None, "verdict": None,
                    "summary": "no likeness measured: made with the base model, which has no person"}
        scores: dict[str, Any] = unscored if self.likeness is None else self.likeness.to_dict()
        return {"video": str(self.video), "kind": self.kind, "why": self.why, "prompt": self.prompt,
                "prompt_b": self.prompt_b, "seed": self.seed, "model": self.model, "model_id": self.model_id,
                "base_model": self.base_model, "video_model": self.video_model, "still": self.still,
                "frame_count": self.frames,
                "width": self.width, "height": self.height, **scores, "fps": self.fps}

    def tags(self) -> dict[str, str]:
        """The MP4's metadata: the prompt as its title, the rest as JSON in its comment (tags every player keeps)."""
        data = self.to_dict()
        summary = {k: data[k] for k in ("kind", "prompt", "prompt_b", "seed", "model", "base_model", "video_model",
                                         "recognised_share", "likeness", "first_drop", "verdict")}
        return {"title": self.prompt, "comment": json.dumps(summary), "description": data["summary"]}


def make_scored_video(generator: Generator, clip: VideoSettings, *, lora_path: Path | None, out_path: Path,
                      person: PersonReference | None, model: str, base_model: str, model_id: str = "",
                      on_event: EventCallback = ignore, should_stop: StopCheck = never) -> VideoResult:
    """The morph clip, scored: 1. frames → MP4; 2.–4. ``score_and_tag``."""
    path = make_video(generator, clip, lora_path=lora_path, out_path=out_path, on_event=on_event,
                      should_stop=should_stop)
    made = VideoResult(video=path, likeness_json=likeness_path(path), kind=MORPH, why=MORPH_WHY,
                       prompt=clip.prompt, prompt_b=clip.prompt_b, seed=clip.seed_a, model=model,
                       base_model=base_model, frames=clip.frames, fps=clip.fps, width=clip.width,
                       height=clip.height, likeness=None, model_id=model_id)
    return score_and_tag(made, person, on_event=on_event)


def score_and_tag(made: VideoResult, person: PersonReference | None, *,
                  on_event: EventCallback = ignore) -> VideoResult:
    """The clip at ``made.video``, whatever made it: 2. every frame's likeness to ``person``; 3. the JSON beside it;
    4. prompt, seed, models and likeness into the MP4's metadata. Frame count and size are what was written."""
    from pipeline.video.clip_likeness import read_frames, score_frames

    frames, _fps = read_frames(made.video)  # what was written, as a viewer sees it (a stopped clip has fewer frames)
    likeness = None
    if person is not None:
        on_event(Progress("likeness", 0, 1, f"likeness of {len(frames)} frames"))
        likeness = score_frames(frames, person.reference, fps=made.fps, others=person.others)
        on_event(Progress("likeness", 1, 1, likeness.sentence()))
    width, height = frames[0].size
    result = dataclasses.replace(made, frames=len(frames), width=width, height=height, likeness=likeness)
    save_json(result.likeness_json, result.to_dict())
    write_metadata(result.video, result.tags())
    return result


def write_metadata(path: Path, tags: Mapping[str, str]) -> Path:
    """Put ``tags`` into the MP4 at ``path`` (streams copied, not re-encoded; replaced whole when done)."""
    import imageio_ffmpeg

    tagged = path.with_name(f".{path.stem}.tagged.mp4")
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(path), "-map", "0", "-c",
               "copy", "-movflags", "+faststart"]
    for key, value in tags.items():
        command += ["-metadata", f"{key}={value}"]
    try:
        subprocess.run([*command, str(tagged)], check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        tagged.unlink(missing_ok=True)
        detail = getattr(exc, "stderr", b"") or b""
        raise OSError(f"video: ffmpeg could not write the metadata of {path.name}: {detail.decode(errors='replace')}"
                      ) from exc
    os.replace(tagged, path)
    return path


def read_metadata(path: Path) -> dict[str, str]:
    """The container's metadata tags of a video file (ffmpeg's ffmetadata dump, unescaped)."""
    import imageio_ffmpeg

    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(path), "-f",
                          "ffmetadata", "-"], check=True, capture_output=True, timeout=60).stdout.decode()
    tags: dict[str, str] = {}
    # ffmetadata escapes '=', ';', '#', '\\' and newlines with a backslash: split on the unescaped ones only.
    key: str | None = None
    text, escaped = "", False
    for char in out.removeprefix(";FFMETADATA1\n") + "\n":
        if escaped:
            text, escaped = text + char, False
        elif char == "\\":
            escaped = True
        elif char == "=" and key is None:
            key, text = text, ""
        elif char == "\n":
            if key:
                tags[key] = text
            key, text = None, ""
        else:
            text += char
    return tags


def _noise(pipe: Any, seed: int, width: int, height: int) -> torch.Tensor:
    """The packed starting latents ``pipe`` itself draws for ``seed`` (same CPU generator as Generator uses)."""
    channels = pipe.transformer.config.in_channels // 4
    latents, _ids = pipe.prepare_latents(1, channels, height, width, pipe.transformer.dtype, pipe.device,
                                         torch.Generator("cpu").manual_seed(seed))
    return latents

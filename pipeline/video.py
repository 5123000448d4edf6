"""A short clip of the person: frames generated with the LoRA along a smooth path, encoded to MP4.

The path runs between two seeds' starting noise (spherical interpolation, which keeps the noise's statistics that
a straight line would shrink in the middle) and, when a second prompt is given, between the two prompts'
embeddings. Every frame is a full generation from its own point on the path, so neighbouring frames are similar
images rather than motion: a "morph" clip. imageio-ffmpeg ships the ffmpeg binary that encodes it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.base_model import max_text_tokens
from pipeline.events import EventCallback, Message, Progress, StopCheck, ignore, never
from pipeline.generation import Generator
from pipeline.settings import VideoSettings

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
    settings = clip.validate().still()
    with generator.activated(lora_path, clip.lora_scale) as pipe:
        noise_a, noise_b = (_noise(pipe, seed, clip.width, clip.height) for seed in (clip.seed_a, clip.seed_b))
        embeds_a = _embed(pipe, clip.prompt)
        embeds_b = _embed(pipe, clip.prompt_b) if clip.prompt_b.strip() else embeds_a
        for t in path_positions(clip.frames, loop=clip.loop):
            latents = slerp(t, noise_a, noise_b)
            embeds = tuple(torch.lerp(a, b, t) for a, b in zip(embeds_a, embeds_b, strict=True))
            yield generator.render(pipe, settings, seed=clip.seed_a, latents=latents, embeds=embeds)


def make_video(generator: Generator, clip: VideoSettings, *, lora_path: Path | None, out_path: Path,
               on_event: EventCallback = ignore, should_stop: StopCheck = never) -> Path:
    """Generate the clip's frames and encode them to an H.264 MP4 at ``clip.fps``.

    Reports ``Progress(stage="video")`` per frame. Stopping early keeps the frames made so far in the file.
    """
    import imageio_ffmpeg

    clip.validate()  # before ffmpeg starts: a bad request must not leave a file or a process behind
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed at the end, so a crash never leaves a half file under the real name.
    partial = out_path.with_name(f".{out_path.stem}.partial.mp4")
    frame_iter = video_frames(generator, clip, lora_path=lora_path)
    writer = imageio_ffmpeg.write_frames(
        str(partial), (clip.width, clip.height), fps=clip.fps, codec="libx264", pix_fmt_out="yuv420p", quality=8,
        macro_block_size=16, output_params=["-movflags", "+faststart"], ffmpeg_log_level="error",
    )
    writer.send(None)  # start ffmpeg
    frames, done = clip.frames, 0
    try:
        for frame in frame_iter:
            writer.send(np.ascontiguousarray(frame.convert("RGB")))
            done += 1
            on_event(Progress("video", done, frames, f"frame {done} of {frames}"))
            if should_stop() and done < frames:
                on_event(Message(f"video stopped after {done} of {frames} frames", level="warning"))
                break
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    finally:
        frame_iter.close()  # releases the generator's lock if we stopped early
    writer.close()
    os.replace(partial, out_path)
    logger.info("wrote %d frames at %d fps to %s", done, clip.fps, out_path)
    return out_path


def _noise(pipe: Any, seed: int, width: int, height: int) -> torch.Tensor:
    """The packed starting latents ``pipe`` itself draws for ``seed`` (same CPU generator as Generator uses)."""
    channels = pipe.transformer.config.in_channels // 4
    latents, _ids = pipe.prepare_latents(1, channels, height, width, pipe.transformer.dtype, pipe.device,
                                         torch.Generator("cpu").manual_seed(seed))
    return latents


def _embed(pipe: Any, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        prompt_embeds, pooled, _text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=pipe.device,
                                                              num_images_per_prompt=1,
                                                              max_sequence_length=max_text_tokens(pipe.tokenizer_2))
    return prompt_embeds, pooled

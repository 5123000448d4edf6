"""Which video model makes the clips: ``auto`` (the default) chooses by the GPU's free memory (issue 36).

The needs are the meta-device counts of ``python -m bench.video_memory`` (``bench/results/video_memory_meta.json``,
decimal GB with 1 GB of CUDA context; ``tests/test_video_choice.py`` fails when they drift apart): GPU memory with
model CPU offload, as ``pipeline.video.i2v`` loads a real model, for a 2-second 480p clip, plus a margin for what the
counts leave out (the tiled VAE decode's activations). No GPU has measured them yet: ``--video-model`` overrides.

Auto chooses between Wan 2.2 TI2V-5B and LTX-Video 2B. Wan 2.1 I2V-14B also fits from 40 GB, but a step costs ten
times Wan 2.2 5B's (1,261 against 122 TFLOP), so a clip takes tens of minutes: it is there for those who ask for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

AUTO_VIDEO_MODEL = "auto"
NO_VIDEO_MODEL = ("", "morph", "none")
DECODE_MARGIN_GB = 1.0  # the tiled VAE decode's activations, which the counts leave out


@dataclass(frozen=True)
class VideoModelNeed:
    """A real video model auto may choose, and the GPU memory it needs (decimal GB)."""

    key: str  # its name in bench/video_memory.py and its results
    name: str
    hub_id: str
    offload_gb: float  # counted: the largest part on the GPU at once with model CPU offload

    @property
    def needs_gb(self) -> float:
        return self.offload_gb + DECODE_MARGIN_GB


# Largest first: the first that fits is chosen.
AUTO_CANDIDATES = (
    VideoModelNeed("wan22-5b", "Wan 2.2 TI2V-5B", "Wan-AI/Wan2.2-TI2V-5B-Diffusers", 12.4),
    VideoModelNeed("ltx-2b", "LTX-Video 2B (0.9.1)", "Lightricks/LTX-Video-0.9.1", 10.5),
)


@dataclass(frozen=True)
class VideoModelChoice:
    """The video model clips are made with ("" for none: a morph between stills) and why, as the page says it."""

    spec: str
    why: str

    @property
    def is_morph(self) -> bool:
        return not self.spec


def choose_video_model(free_gb: float | None) -> VideoModelChoice:
    """The largest video model that fits ``free_gb`` of free GPU memory (decimal GB; None: no GPU), else a morph."""
    smallest = AUTO_CANDIDATES[-1]
    if free_gb is None:
        return VideoModelChoice("", f"no GPU here, and a video model needs one (the smallest, {smallest.name}, "
                                    f"{smallest.needs_gb:g} GB): clips are morphs between stills")
    for need in AUTO_CANDIDATES:
        if free_gb >= need.needs_gb:
            return VideoModelChoice(need.hub_id, (
                f"chosen for {free_gb:.1f} GB of free GPU memory: {need.name} needs {need.needs_gb:g} GB with model "
                f"CPU offload ({need.offload_gb:g} GB counted on the meta device, {DECODE_MARGIN_GB:g} GB for the "
                "tiled decode; not measured on a GPU yet)"))
    return VideoModelChoice("", f"only {free_gb:.1f} GB of GPU memory free, less than the {smallest.needs_gb:g} GB "
                                f"the smallest video model ({smallest.name}) needs: clips are morphs between stills")


def is_morph(spec: str | None) -> bool:
    """True when no video model is asked for: the clip is a morph between stills."""
    return spec is None or spec.strip().lower() in NO_VIDEO_MODEL


def video_model_choice(setting: str | None, free_gb: Callable[[], float | None]) -> VideoModelChoice:
    """The setting (``--video-model``) as a choice: ``auto`` asks ``free_gb()``; anything else is taken as set."""
    spec = (setting or "").strip()
    if spec.lower() == AUTO_VIDEO_MODEL:
        return choose_video_model(free_gb())
    if is_morph(spec):
        return VideoModelChoice("", "no video model (--video-model morph): clips are morphs between stills")
    return VideoModelChoice(spec, "set with --video-model")


def free_gpu_gb() -> float | None:
    """Free memory of the first CUDA GPU in decimal GB, as the counts are; None without one."""
    from pipeline.models.hardware import gpu_may_be_present

    if not gpu_may_be_present():
        return None  # no torch import where no GPU can be
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(0)
    return free / 1e9

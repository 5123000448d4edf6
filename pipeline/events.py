"""Events that long jobs report while they run.

The pipeline knows no UI: classification, training, assessment and generation take an
``on_event`` callback and call it with these. The Gradio tabs, the CLI and the tests are three
renderers of the same events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Progress:
    """Generic progress of a stage: ``done`` of ``total`` units, with a human message."""

    stage: str  # "classify", "dataset", "train", "assess", "generate", "video"
    done: int
    total: int
    message: str = ""


@dataclass(frozen=True)
class TrainStep:
    """One optimisation step finished."""

    step: int
    total_steps: int
    loss: float
    loss_smooth: float
    learning_rate: float
    seconds_per_step: float
    eta_seconds: float  # to a ready model: the steps, samples, checkpoints' tests and final assessment left (smoothed)
    phase: str  # "initial learning", "feature refinement", "style adaptation", "final optimisation"
    gpu_memory_gb: float = 0.0
    host_memory_gb: float = 0.0
    resolution: int = 0  # the px this step trained at (0: not reported)


@dataclass(frozen=True)
class SampleImages:
    """Sample images generated for the fixed prompts at a step."""

    step: int
    images: tuple[Path, ...]
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: Path


@dataclass(frozen=True)
class AssessmentStarted:
    """Training ended: its LoRA is saved and every checkpoint is measured now (the model turns "assessing")."""

    lora_path: Path
    kohya_path: Path | None
    checkpoints: tuple[CheckpointSaved, ...]


@dataclass(frozen=True)
class CheckpointAssessed:
    """A checkpoint's test generations were measured: the likeness curve's next point."""

    step: int
    likeness: float  # 0–1
    overall: float  # 0–100


@dataclass(frozen=True)
class Message:
    """A log line worth showing to the user (phase changes, warnings, fallbacks)."""

    text: str
    level: str = "info"  # "info", "warning", "error"
    extra: dict = field(default_factory=dict)


Event = Progress | TrainStep | SampleImages | CheckpointSaved | AssessmentStarted | CheckpointAssessed | Message
EventCallback = Callable[[Event], None]
StopCheck = Callable[[], bool]


def ignore(_event: Event) -> None:
    """The default callback: report nothing."""


def never() -> bool:
    """The default stop check: never stop."""
    return False


def duration_text(seconds: float) -> str:
    """A duration as people read it: "45 s", "4 min 10 s", "1 h 05 min"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"

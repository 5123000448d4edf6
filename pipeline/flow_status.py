"""Where a person stands on the way from photos to a model, and what is missing: the step indicator's content.

Computed from what the workspace holds (photos, the classification of exactly those photos, the user's decisions,
models), never from what the page remembers, so a reload or a second browser shows the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from pipeline.classify import ClassificationResult, Readiness
from pipeline.library import ModelRecord
from pipeline.status import MODEL_BUSY, Status


class Step(Enum):
    PHOTOS = "Photos"
    REVIEW = "Review"
    TRAIN = "Train"
    MODEL = "Model"


@dataclass(frozen=True)
class StepState:
    step: Step
    done: bool
    note: str  # what is there or what is missing, in words


@dataclass(frozen=True)
class FlowStatus:
    steps: tuple[StepState, ...]

    @property
    def current(self) -> Step:
        """The first step not done yet (the last one when all are)."""
        return next((s.step for s in self.steps if not s.done), self.steps[-1].step)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def flow_status(photo_names: Sequence[str], classification: ClassificationResult | None,
                models: Sequence[ModelRecord], *, target_min: int = 15, target_max: int = 20) -> FlowStatus:
    """The four steps' states. ``classification`` counts only if it judged exactly ``photo_names``."""
    count = len(photo_names)
    if count == 0:
        photos = StepState(Step.PHOTOS, False, f"add {target_min}–{target_max} photos of one person")
    elif count < target_min:
        photos = StepState(Step.PHOTOS, False, f"{_plural(count, 'photo')}: {target_min - count} more recommended")
    else:
        photos = StepState(Step.PHOTOS, True, _plural(count, "photo"))

    current = classification is not None and {r.file for r in classification.records} == set(photo_names)
    if not count:
        review = StepState(Step.REVIEW, False, "after the photos")
    elif not current:
        review = StepState(Step.REVIEW, False, "check the photos")
    else:
        undecided = [r for r in classification.records if r.verdict == "reject" and r.override is None]
        readiness = classification.report.readiness
        selected = _plural(len(classification.selected), "photo")
        if undecided:
            review = StepState(Step.REVIEW, False,
                               f"{_plural(len(undecided), 'photo')} need{'s' if len(undecided) == 1 else ''} "
                               f"your decision · {selected} selected")
        elif readiness == Readiness.NOT_READY:
            review = StepState(Step.REVIEW, False, f"not ready: {selected} selected")
        else:
            review = StepState(Step.REVIEW, True, f"{selected} selected")

    busy = [m for m in models if m.status in MODEL_BUSY]
    queued = [m for m in models if m.status == Status.QUEUED]
    ready = [m for m in models if m.status == Status.READY]
    latest = max(models, key=lambda m: m.created_at, default=None)
    if busy:
        train = StepState(Step.TRAIN, False, f"{busy[0].status}…")
    elif queued:
        train = StepState(Step.TRAIN, False, "waiting for the GPU")
    elif latest is not None and latest.status == Status.CANCELLED:
        train = StepState(Step.TRAIN, bool(ready), "stopped: Resume continues it")
    elif latest is not None and latest.status == Status.FAILED:
        train = StepState(Step.TRAIN, bool(ready), "the last run failed: see the Training tab")
    elif ready:
        train = StepState(Step.TRAIN, True, "done")
    else:
        train = StepState(Step.TRAIN, False, "not started")
    model = StepState(Step.MODEL, bool(ready), f"{_plural(len(ready), 'model')} ready" if ready else "none yet")
    return FlowStatus((photos, review, train, model))

"""Where a person stands on the way from photos to a model, and what is missing: the step guide's content.

Computed from what the workspace holds (photos, the classification of exactly those photos, the models and the
photos each was trained on, the devices the queue trains on), never from what the page remembers, so a reload or a
second browser shows the same. The numbers are the tabs' own: the photos still to add come from the same function
as the readiness summary the Upload and Review tabs show (``classify.photos_to_add``), and each step names the tab
it happens on (``Step`` values are the tabs' ids; the page labels them as the tabs are labelled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from pipeline.intake.classify import ClassificationResult, Readiness, photos_to_add
from pipeline.jobs.queue import default_devices
from pipeline.library.catalog import ModelRecord
from pipeline.settings import ClassifySettings
from pipeline.status import MODEL_BUSY, Status

if TYPE_CHECKING:
    from pipeline.workflow import Workflow


class Step(Enum):
    """The guide's steps, valued by the id of the tab each happens on."""

    UPLOAD = "upload"
    REVIEW = "review"
    TRAINING = "training"
    MODELS = "models"


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

    def state(self, step: Step) -> StepState:
        return next(s for s in self.steps if s.step is step)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def where_trainings_run(devices: Sequence[str]) -> str:
    """The queue's devices in words: "the CPU", "the GPU", "2 GPUs", "the Ray cluster" (the guide used to say
    "waiting for the GPU" on machines that have none)."""
    gpus = [d for d in devices if d.startswith("cuda")]
    if any(d.startswith("ray") for d in devices):
        return "the Ray cluster"
    if gpus:
        return "the GPU" if len(gpus) == 1 else f"{len(gpus)} GPUs"
    return "the CPU"


def flow_status(photo_names: Sequence[str], classification: ClassificationResult | None,
                models: Sequence[ModelRecord], *, target_min: int = 15, target_max: int = 20,
                runs_on: str | None = None) -> FlowStatus:
    """The four steps' states. ``classification`` counts only if it judged exactly ``photo_names``; ``runs_on``:
    where trainings run, in words (``where_trainings_run``; default: this machine's devices)."""
    settings = ClassifySettings(target_min=target_min, target_max=target_max)
    runs_on = runs_on or where_trainings_run(default_devices())  # what the queue starts its workers on
    count = len(photo_names)
    current = count > 0 and classification is not None and \
        {r.file for r in classification.records} == set(photo_names)
    upload = _upload(count, classification if current else None, settings)
    review = _review(count, classification if current else None, models)
    training = _training(models, runs_on)
    ready = [m for m in models if m.status == Status.READY]
    result = StepState(Step.MODELS, bool(ready), f"{_plural(len(ready), 'model')} ready" if ready else "none yet")
    return FlowStatus((upload, review, training, result))


def _upload(count: int, classification: ClassificationResult | None, settings: ClassifySettings) -> StepState:
    if count == 0:
        return StepState(Step.UPLOAD, False, f"add {settings.target_min}–{settings.target_max} photos of one person")
    if classification is None:  # not checked yet: uploads are all there is to count
        missing = photos_to_add(count, settings)
        return StepState(Step.UPLOAD, not missing,
                         f"{_plural(count, 'photo')}: add {missing} more" if missing else _plural(count, "photo"))
    # Usable photos, as the readiness summary counts them: rejected ones and near-copies do not make a likeness.
    usable = len(classification.selected)
    missing = photos_to_add(usable, settings)
    if not missing:
        return StepState(Step.UPLOAD, True, f"{_plural(count, 'photo')}, {usable} usable")
    at_least = "at least " if classification.report.readiness == Readiness.NOT_READY else ""
    return StepState(Step.UPLOAD, False, f"{_plural(count, 'photo')}, {usable} usable: add {at_least}{missing} more")


def _review(count: int, classification: ClassificationResult | None, models: Sequence[ModelRecord]) -> StepState:
    if not count:
        return StepState(Step.REVIEW, False, "after the photos")
    if classification is None:
        return StepState(Step.REVIEW, False, "check the photos")
    selected = len(classification.selected)
    # Photos the check left out are decided already (the user may include them, but nothing waits on them).
    left_out = f", {len(classification.records) - selected} left out" if len(classification.records) > selected \
        else ""
    if classification.report.readiness == Readiness.NOT_READY:
        return StepState(Step.REVIEW, False, f"not ready: {selected} selected{left_out}")
    # Done once a training took this very selection: the upload checks every photo by itself, so a current check
    # says nothing about whether the person has looked at it (the guide used to tick Review before it was opened).
    chosen = set(classification.selected)
    if any(set(m.dataset.get("photos_used", ())) == chosen for m in models):
        return StepState(Step.REVIEW, True, f"{selected} selected{left_out}")
    return StepState(Step.REVIEW, False, f"{selected} selected{left_out}: look them over, then train")


def _training(models: Sequence[ModelRecord], runs_on: str) -> StepState:
    busy = [m for m in models if m.status in MODEL_BUSY]
    queued = [m for m in models if m.status == Status.QUEUED]
    ready = [m for m in models if m.status == Status.READY]
    latest = max(models, key=lambda m: m.created_at, default=None)
    if busy:
        return StepState(Step.TRAINING, False, f"{busy[0].status} on {runs_on}…")
    if queued:
        return StepState(Step.TRAINING, False, f"waiting for {runs_on}")
    if latest is not None and latest.status == Status.CANCELLED:
        return StepState(Step.TRAINING, bool(ready), "stopped: Resume continues it")
    if latest is not None and latest.status == Status.FAILED:
        return StepState(Step.TRAINING, bool(ready), "the last run failed: see why there")
    if ready:
        return StepState(Step.TRAINING, True, "done")
    return StepState(Step.TRAINING, False, f"not started; trains on {runs_on}")


def guide_state(workflow: Workflow) -> FlowStatus:
    """The guide for ``workflow``'s person, from the state its tabs show: the stored photos, the last check of
    them (the one the Upload and Review tabs show), its models, and the devices the training queue runs on."""
    settings = ClassifySettings()  # the settings Workflow.classify checks with
    devices = workflow.jobs.workers  # empty until the queue starts: then the devices it will start on
    return flow_status([p.name for p in workflow.list_photos()], workflow.last_classification,
                       workflow.library.list(), target_min=settings.target_min, target_max=settings.target_max,
                       runs_on=where_trainings_run(devices) if devices else None)

"""A video as a job on the GPU queue (issue 36): a clip and a training never hold the GPU at once.

``VideoJobSpec`` is what a clip needs, written into the queue when it is asked for (JSON, like a training's spec).
The queue's worker runs it in this process (``Workflow.run_job``) and reports into a ``VideoMonitor``; the page that
asked for the clip follows it (``Workflow.follow_video``) as ``VideoUpdate``s: waiting in line (behind what), each
step with the time left, then the clip or why there is none. The monitors live in memory, in ``VideoMonitors``
shared by every workspace: a video is not run again after a restart (``JobKind.resumes``), so nothing of them
needs to outlive the process.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.events import Event, Progress, duration_text
from pipeline.jobs.queue import JobKind
from pipeline.status import Status

if TYPE_CHECKING:
    from pipeline.video.clip import VideoResult

BASE_MODEL_JOB = "(base model)"  # the queue's model id of a clip made with the bare base model (the queue needs one)


@dataclass(frozen=True)
class VideoJobSpec:
    """One clip to make: whose, with which model, prompts and length, and from which still."""

    workspace: str
    model_id: str  # "" for the bare base model
    prompt: str
    prompt_b: str = ""
    frames: int = 16
    fps: int = 8
    seed: int = 0
    video_model: str = ""  # as chosen when it was asked for ("auto" already resolved)
    still: str = ""  # one of the person's generations, relative to their workspace; "" draws a new still

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VideoJobSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class VideoUpdate:
    """Where a queued clip stands, as its page shows it."""

    status: Status  # queued, running, then done, failed or cancelled
    text: str  # "waiting: a training is running, position 1", "video model: step 2 of 4 · about 3 s left"
    done: int = 0  # the current stage's progress (0 of 0 while waiting)
    total: int = 0
    result: VideoResult | None = None  # once done
    error: str = ""  # once failed or cancelled


def waiting_text(running: Sequence[JobKind], position: int) -> str:
    """What a queued clip waits for, and its place among the waiting jobs (1: next to run)."""
    trainings, videos = running.count(JobKind.TRAIN), running.count(JobKind.VIDEO)
    parts = []
    if trainings:
        parts.append("a training is running" if trainings == 1 else f"{trainings} trainings are running")
    if videos:
        parts.append("another video is being made" if videos == 1 else f"{videos} other videos are being made")
    return f"waiting: {' and '.join(parts) or 'starting'}, position {position}"


class VideoMonitor:
    """What a running clip reported: its latest progress (with its stage's first report, for the time left), its end.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.progress: Progress | None = None
        self.stage_start: tuple[float, int] = (0.0, 0)  # when the current stage first reported, and its count then
        self.result: VideoResult | None = None
        self.error = ""
        self._lock = threading.Lock()

    def on_event(self, event: Event) -> None:
        if not isinstance(event, Progress) or not event.total:
            return
        with self._lock:
            if self.progress is None or self.progress.stage != event.stage:
                # The time left is the current stage's (steps differ in cost), timed from its first report: a stage
                # reports after each step, so the time before it is not one of the steps it counts.
                self.stage_start = (self.clock(), event.done)
            self.progress = event

    def seconds_left(self) -> float | None:
        """The current stage's time left, at its rate from its first report to its latest (None before two)."""
        with self._lock:
            event, (started, done_then) = self.progress, self.stage_start
            if event is None or event.done <= done_then:
                return None
            return (self.clock() - started) / (event.done - done_then) * (event.total - event.done)

    def update(self) -> VideoUpdate:
        event, left = self.progress, self.seconds_left()
        if event is None:
            return VideoUpdate(Status.RUNNING, "starting")
        text = event.message or f"{event.stage}: {event.done} of {event.total}"
        if left is not None and event.done < event.total:
            text += f" · about {duration_text(left)} left"
        return VideoUpdate(Status.RUNNING, text, event.done, event.total)


class VideoMonitors:
    """The monitors of the clips in the queue, by job id, shared by every workspace (as the video model is).

    A monitor is held by its job (``open`` when it is queued, ``close`` when it ends) and by each page that follows
    it (``Workflow.follow_video``), and freed when the last lets go: a clip nobody follows leaves nothing behind."""

    def __init__(self) -> None:
        self._monitors: dict[str, VideoMonitor] = {}
        self._holds: dict[str, int] = {}
        self._lock = threading.Lock()
        # Held while a clip is published or cancelled: a clip is either made and kept, or cancelled and gone.
        self.ending = threading.Lock()

    def open(self, job_id: str) -> VideoMonitor:
        """The job's monitor, held until ``close``."""
        with self._lock:
            self._holds[job_id] = self._holds.get(job_id, 0) + 1
            return self._monitors.setdefault(job_id, VideoMonitor())

    def get(self, job_id: str) -> VideoMonitor:
        """The job's monitor, without holding it (made here if its job started before ``open`` was called)."""
        with self._lock:
            return self._monitors.setdefault(job_id, VideoMonitor())

    def made(self, job_id: str) -> bool:
        with self._lock:
            monitor = self._monitors.get(job_id)
            return monitor is not None and monitor.result is not None

    def close(self, job_id: str) -> None:
        with self._lock:
            left = self._holds.pop(job_id, 0) - 1
            if left > 0:
                self._holds[job_id] = left
            else:
                self._monitors.pop(job_id, None)

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            return job_id in self._monitors

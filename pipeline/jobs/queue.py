"""The training job queue: one job at a time per GPU, the rest wait in a FIFO that survives a restart.

Jobs live in tinydb (data_dir/jobs.json); one worker thread per device takes the oldest queued job and calls
the runner with it. A job is a training or a video (``JobKind``): both need the GPU, so they share the queue and never
run at once on one device. A training that was running when the app stopped or crashed is put back at the FRONT of
the queue on the next start, so it resumes from its last checkpoint before newer jobs begin; a video that was
waiting or running then is marked failed instead (``JobKind.resumes``). A lock file keeps a second process (or a
second queue in this one) from running jobs from the same data dir.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from tinydb import Query

from pipeline.events import StopCheck
from pipeline.status import JOB_ACTIVE, JOB_FINISHED, Status
from pipeline.storage.jsondb import lock_for, open_db, set_aside_if_damaged

try:  # POSIX only; elsewhere the single-runner guard is skipped (see _acquire_lock)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # starts of one job; past them an interrupted job fails instead of going round for ever
RECOUNT_SECONDS = 10.0  # how often a queue with a ``recount`` asks how many workers it may run
_CANCEL_POLL_SECONDS = 1.0  # how often a running job looks for a cancel made through another JobQueue object


class JobKind(StrEnum):
    TRAIN = "train"  # a LoRA training (``pipeline.training.job``)
    VIDEO = "video"  # a clip of the person (``pipeline.video.job``)

    @property
    def resumes(self) -> bool:
        """Does a job of this kind run again after a restart? A training resumes from its checkpoint; a video was
        asked for by a page that the restart closed: nobody waits for it, and it would hold the GPU for minutes."""
        return self is JobKind.TRAIN


RESTARTED_ERROR = ("the app restarted before this {kind} job finished; it is not run again on its own (the page that "
                   "asked for it was closed): make it again")


class JobNotFound(ValueError):
    """No job with this id in the queue."""


class JobInterrupted(RuntimeError):
    """Raised by a runner whose job could not go on for a reason outside the job (the machine running it went
    away): the job goes back to the front of the queue and runs again, up to MAX_ATTEMPTS times in all."""


class QueueBusy(RuntimeError):
    """Another JobQueue (this process or another) is already running jobs from this data dir."""


@dataclass(frozen=True)
class Job:
    """One unit of work for a worker; ``payload`` is the runner's (e.g. the training settings)."""

    id: str
    model_id: str
    kind: JobKind
    status: Status  # one of JOB_STATUSES
    payload: dict = field(default_factory=dict)
    created_at: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    error: str = ""
    device: str = ""  # the worker's device ("cuda:0", "cpu") while running and after
    attempts: int = 0  # how many times a worker started it (more than 1: resumed after a restart)
    order: float = 0.0  # queue position key; smaller runs first
    cancel_requested: bool = False
    node: str = ""  # on a cluster: the node and task that ran it last, and the worker process
    task: str = ""
    pid: int = 0
    only_on: str = ""  # the one worker (device) that may run it; "" for any
    run: str = ""  # the JobQueue (app run) it was queued in: a video from an earlier run is not run again


Runner = Callable[[Job, StopCheck], None]
ChangeCallback = Callable[[Job], None]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def default_devices() -> tuple[str, ...]:
    """One entry per CUDA GPU, or ("cpu",) where there is none."""
    from pipeline.models.hardware import gpu_may_be_present

    if not gpu_may_be_present():
        return ("cpu",)
    import torch  # imported here: the queue itself needs no torch, and tests pass devices explicitly

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return tuple(f"cuda:{i}" for i in range(count)) or ("cpu",)


class JobQueue:
    """A persistent FIFO of jobs with one worker thread per device.

    ``runner(job, should_stop)`` does the work on ``job.device``; it should return soon after ``should_stop()``
    turns True (cancel, or shutdown). An exception marks the job failed with its message.
    ``on_change(job)`` is called after every status change (e.g. to update the model library).
    """

    def __init__(
        self,
        data_dir: Path,
        runner: Runner,
        *,
        autostart: bool = True,
        devices: Sequence[str] | None = None,
        recount: Callable[[], Sequence[str] | None] | None = None,
        on_change: ChangeCallback | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "jobs.json"
        # A damaged queue file is set aside (the workflow re-queues nothing by itself: models left waiting are marked
        # so the user can press Resume).
        self.damaged_backup = set_aside_if_damaged(self.db_path, "jobs")
        self.runner = runner
        self.on_change = on_change
        self.run_id = uuid.uuid4().hex[:12]  # tells this run's jobs from those an earlier run left
        self._devices = tuple(devices) if devices else None  # resolved at start: torch import only when needed
        # Asked again every RECOUNT_SECONDS while the queue runs: a cluster that gained nodes gets more workers.
        self._recount = recount
        self._started: set[str] = set()
        self._cond = threading.Condition()
        self._stopping = threading.Event()  # no new jobs are taken
        self._interrupt = threading.Event()  # running jobs are asked to stop and go back to the queue
        self._stop_flags: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []
        self._alive = 0
        self._lock_file: IO[str] | None = None
        # A job's end that the disk did not take (full, read-only): kept here and shown by get() and list(), so the
        # job does not say "running" while it is over; each worker's next turn writes it once the disk takes it.
        self._unwritten: dict[str, dict[str, Any]] = {}
        self._unwritten_lock = threading.Lock()
        if autostart:
            self.start()

    # -- storage --------------------------------------------------------------------------------------------------

    @staticmethod
    def _job(doc: dict[str, Any]) -> Job:
        names = {f.name for f in dataclasses.fields(Job)}
        job = Job(**{k: v for k, v in doc.items() if k in names})
        return dataclasses.replace(job, status=Status(job.status), kind=JobKind(job.kind))

    def _docs(self) -> list[dict[str, Any]]:
        with open_db(self.db_path) as db:
            docs = [dict(doc) for doc in db.table("jobs").all()]
        return [self._with_unwritten(doc) for doc in docs]

    def _with_unwritten(self, doc: dict[str, Any]) -> dict[str, Any]:
        with self._unwritten_lock:
            return {**doc, **self._unwritten.get(doc["id"], {})}

    def _record_end(self, job_id: str, **fields: Any) -> Job:
        """Write a job's end; when the disk refuses it, keep it in memory (get() and list() show it) until
        ``_save_unwritten`` gets it onto the disk."""
        try:
            return self._write(job_id, **fields)
        except OSError as exc:
            logger.error("jobs: the end of job %s (%s) could not be saved (%s); kept in memory until the disk takes "
                         "it", job_id, fields.get("status"), exc.strerror or exc)
            with self._unwritten_lock:
                self._unwritten[job_id] = {**self._unwritten.get(job_id, {}), **fields}
            return self.get(job_id)

    def _save_unwritten(self) -> None:
        """Write the ends the disk refused before; stops at the first it still refuses."""
        with self._unwritten_lock:
            pending = dict(self._unwritten)
        for job_id, fields in pending.items():
            try:
                self._write(job_id, **fields)
            except JobNotFound:
                pass  # removed with its queue file: nothing left to write it to
            except OSError:
                return
            with self._unwritten_lock:
                if self._unwritten.get(job_id) is fields:
                    del self._unwritten[job_id]
            logger.info("jobs: the end of job %s is saved now", job_id)

    def _write(self, job_id: str, **fields: Any) -> Job:
        with open_db(self.db_path) as db:
            table = db.table("jobs")
            table.update(fields, Query().id == job_id)
            doc = table.get(Query().id == job_id)
        if doc is None:
            raise JobNotFound(f"job_id: no job {job_id!r} in the queue")
        return self._job(dict(doc))

    def _changed(self, job: Job) -> None:
        with self._cond:
            self._cond.notify_all()
        if self.on_change is not None:
            try:
                self.on_change(job)
            except Exception:  # a faulty listener must not stop the queue
                logger.exception("jobs: on_change failed for job %s", job.id)

    # -- public API -----------------------------------------------------------------------------------------------

    def submit(self, model_id: str, payload: dict, kind: JobKind = JobKind.TRAIN, *, only_on: str = "") -> Job:
        """Add a job at the end of the queue; ``only_on`` keeps it for one worker (device)."""
        if not model_id:
            raise ValueError("model_id: must not be empty; create the model in the library first")
        with open_db(self.db_path) as db:
            table = db.table("jobs")
            order = max((doc.get("order", 0.0) for doc in table.all()), default=0.0) + 1
            job = Job(id=uuid.uuid4().hex[:12], model_id=model_id, kind=kind, status=Status.QUEUED,
                      payload=dict(payload or {}), created_at=_now(), order=order, only_on=only_on,
                      run=self.run_id)
            table.insert(dataclasses.asdict(job))
        logger.info("jobs: queued %s job %s for model %s", kind, job.id, model_id)
        self._changed(job)
        return job

    def set_payload(self, job_id: str, payload: dict) -> Job:
        """Replace a job's payload (e.g. to point an old job at the workspace its model moved to)."""
        return self._write(job_id, payload=dict(payload))

    def annotate(self, job_id: str, *, node: str = "", task: str = "", pid: int = 0) -> Job:
        """Record where a running job runs (a cluster's node, task and worker process)."""
        return self._write(job_id, node=node, task=task, pid=pid)

    def get(self, job_id: str) -> Job:
        with open_db(self.db_path) as db:
            doc = db.table("jobs").get(Query().id == job_id)
        if doc is None:
            raise JobNotFound(f"job_id: no job {job_id!r} in the queue; list the jobs to see their ids")
        return self._job(self._with_unwritten(dict(doc)))

    def list(self) -> list[Job]:
        """Running jobs, then queued ones in the order they will run, then finished ones newest first."""
        jobs = [self._job(doc) for doc in self._docs()]
        running = sorted((j for j in jobs if j.status == Status.RUNNING), key=lambda j: j.started_at or "")
        queued = sorted((j for j in jobs if j.status == Status.QUEUED), key=lambda j: j.order)
        finished = sorted((j for j in jobs if j.status in JOB_FINISHED), key=lambda j: (j.finished_at or "", j.order),
                          reverse=True)
        return running + queued + finished

    def for_model(self, model_id: str) -> list[Job]:
        return [job for job in self.list() if job.model_id == model_id]

    def position(self, job_id: str) -> int:
        """How many jobs are ahead of this one: 0 = running or next to start; -1 = finished."""
        job = self.get(job_id)
        if job.status == Status.RUNNING:
            return 0
        if job.status in JOB_FINISHED:
            return -1
        lineup = [j for j in self.list() if j.status in JOB_ACTIVE]
        return [j.id for j in lineup].index(job_id)

    def running_kinds(self) -> list[JobKind]:
        """The kinds of the jobs running now (what a waiting job waits for)."""
        return [job.kind for job in self.list() if job.status == Status.RUNNING]

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job now, or ask a running one to stop (its should_stop() turns True)."""
        with lock_for(self.db_path):  # one lock across read and write
            job = self.get(job_id)
            if job.status == Status.QUEUED:
                job = self._write(job_id, status=Status.CANCELLED, finished_at=_now(), cancel_requested=True)
            elif job.status == Status.RUNNING:
                job = self._write(job_id, cancel_requested=True)
        flag = self._stop_flags.get(job_id)
        if flag is not None:
            flag.set()
        logger.info("jobs: cancel requested for job %s (%s)", job_id, job.status)
        self._changed(job)
        return job

    def start(self) -> None:
        """Re-queue jobs a previous run left running (at the front), then start one worker per device."""
        if self._threads:
            return
        self._acquire_lock()
        self._stopping.clear()
        self._interrupt.clear()
        self._requeue_interrupted()
        devices = self._devices or default_devices()
        self._alive = 0
        self._started = set()
        for device in devices:
            self._add_worker(device)
        if self._recount is not None:
            # Not one of the workers: a recount that hangs (a cluster not answering) must not hold up stop or start;
            # it ends at its next look once the queue stops (one left over from a restart only repeats the count).
            threading.Thread(target=self._watch_devices, name="likeness-jobs-recount", daemon=True).start()
        logger.info("jobs: started %d worker(s) on %s", len(devices), ", ".join(devices))

    @property
    def workers(self) -> tuple[str, ...]:
        """The devices (or cluster slots) a worker takes jobs for."""
        with self._cond:
            return tuple(sorted(self._started))

    def _add_worker(self, device: str) -> None:
        with self._cond:
            if self._stopping.is_set() or device in self._started:
                return
            self._started.add(device)
            self._alive += 1
            thread = threading.Thread(target=self._worker, args=(device,), name=f"likeness-jobs-{device}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _watch_devices(self) -> None:
        assert self._recount is not None
        while not self._stopping.wait(RECOUNT_SECONDS):
            try:
                devices = self._recount() or ()
            except Exception as exc:  # e.g. a cluster that does not answer now: ask again later
                logger.warning("jobs: could not count the workers' devices: %s", exc)
                continue
            for device in devices:
                if device not in self._started:
                    logger.info("jobs: a new worker on %s (more room than at the start)", device)
                    self._add_worker(device)

    def stop(self, timeout: float = 30.0, *, interrupt: bool = True) -> bool:
        """Stop the workers. With ``interrupt`` running jobs are asked to stop and go back to the front of the
        queue (they resume on the next start); without, they may finish. True when every worker ended in time."""
        self._stopping.set()
        if interrupt:
            self._interrupt.set()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        ended = not any(thread.is_alive() for thread in self._threads)
        if ended:
            self._threads = []
            self._started = set()
        else:
            logger.warning("jobs: a worker did not stop within %.0f s; its job is re-queued on the next start", timeout)
        return ended

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or running; False if that did not happen within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if not any(doc["status"] in JOB_ACTIVE for doc in self._docs()):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._cond:
                self._cond.wait(min(remaining, 0.5))

    @property
    def interrupting(self) -> bool:
        """True while stop() asks running jobs to stop so they resume at the next start. A runner that sees
        should_stop() then should leave its model as "queued", not "cancelled": the job will run again."""
        return self._interrupt.is_set()

    def cancel_requested(self, job_id: str) -> bool:
        """True when the user cancelled this job (as opposed to a shutdown interrupting it)."""
        flag = self._stop_flags.get(job_id)
        return (flag is not None and flag.is_set()) or self.get(job_id).cancel_requested

    @property
    def running(self) -> bool:
        """True while the workers are started."""
        return bool(self._threads) and not self._stopping.is_set()

    # -- workers --------------------------------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        if fcntl is None:
            return
        handle = open(self.data_dir / "jobs.lock", "w")  # held open while workers run: the flock lasts as long
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            handle.close()
            raise QueueBusy(
                f"data_dir: another Likeness process is already running jobs from {self.data_dir}; "
                "stop it first or use another --data-dir"
            ) from error
        self._lock_file = handle

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def _requeue_interrupted(self) -> None:
        changed: list[Job] = []
        with open_db(self.db_path) as db:
            table = db.table("jobs")
            docs = [dict(doc) for doc in table.all()]
            # A job whose end is only in memory (the disk refused it) is over, whatever the file says.
            interrupted = sorted((d for d in docs if d["status"] == Status.RUNNING and d["id"] not in self._unwritten
                                  and JobKind(d.get("kind", JobKind.TRAIN)).resumes),
                                 key=lambda d: d.get("order", 0.0))
            front = min((d.get("order", 0.0) for d in docs if d["status"] == Status.QUEUED), default=1.0)
            for index, doc in enumerate(interrupted):
                if doc.get("cancel_requested"):
                    fields = {"status": Status.CANCELLED, "finished_at": _now()}
                else:
                    # keep their own order among themselves, all ahead of anything queued
                    fields = {"status": Status.QUEUED, "order": front - len(interrupted) + index}
                table.update(fields, Query().id == doc["id"])
                changed.append(self._job({**doc, **fields}))
            changed += self._end_unresumable(table, docs)
        for job in changed:
            logger.info("jobs: job %s was running when the app stopped; now %s", job.id, job.status)
            self._changed(job)

    def _end_unresumable(self, table: Any, docs: list[dict[str, Any]]) -> list[Job]:
        """Jobs of kinds that do not resume (videos) that an earlier run left waiting or running: failed, with why."""
        ended = []
        for doc in docs:
            kind = JobKind(doc.get("kind", JobKind.TRAIN))
            if kind.resumes or doc["status"] not in JOB_ACTIVE or doc["id"] in self._unwritten \
                    or doc.get("run") == self.run_id:
                continue
            fields = {"status": Status.FAILED, "finished_at": _now(), "error": RESTARTED_ERROR.format(kind=kind)}
            table.update(fields, Query().id == doc["id"])
            ended.append(self._job({**doc, **fields}))
        return ended

    def _claim(self, device: str) -> Job | None:
        with open_db(self.db_path) as db:
            table = db.table("jobs")
            queued = [dict(doc) for doc in table.all()
                      if doc["status"] == Status.QUEUED and doc.get("only_on", "") in ("", device)]
            if not queued:
                return None
            doc = min(queued, key=lambda d: d.get("order", 0.0))
            fields = {"status": Status.RUNNING, "started_at": _now(), "finished_at": None, "device": device,
                      "attempts": doc.get("attempts", 0) + 1, "error": ""}
            table.update(fields, Query().id == doc["id"])
        return self._job({**doc, **fields})

    def _worker(self, device: str) -> None:
        try:
            while not self._stopping.is_set():
                job = None
                try:
                    self._save_unwritten()  # as soon as the disk takes writes again
                    job = self._claim(device)
                    if job is None:
                        with self._cond:
                            self._cond.wait(0.5)
                        continue
                    self._run(job)
                except Exception as exc:  # e.g. a full disk writing jobs.json: the queue must go on
                    logger.exception("jobs: could not record job %s", job.id if job else "-")
                    if job is not None:
                        self._stop_flags.pop(job.id, None)
                        with self._unwritten_lock:
                            self._unwritten.setdefault(job.id, {
                                "status": Status.FAILED, "finished_at": _now(),
                                "error": f"the job's end could not be saved ({type(exc).__name__}: {exc}); free "
                                         "disk space and resume it"})
                    with self._cond:
                        self._cond.wait(1.0)  # a disk that is still full must not make this a busy loop
        finally:
            with self._cond:
                self._alive -= 1
                if self._alive == 0:
                    self._release_lock()
                self._cond.notify_all()

    def _run(self, job: Job) -> None:
        flag = threading.Event()
        self._stop_flags[job.id] = flag
        last_poll = [time.monotonic()]

        def should_stop() -> bool:
            if flag.is_set() or self._interrupt.is_set():
                return True
            if time.monotonic() - last_poll[0] >= _CANCEL_POLL_SECONDS:
                last_poll[0] = time.monotonic()
                if self.get(job.id).cancel_requested:
                    flag.set()
            return flag.is_set()

        logger.info("jobs: running %s job %s for model %s on %s", job.kind, job.id, job.model_id, job.device)
        self._changed(job)
        error, interrupted = "", False
        try:
            self.runner(job, should_stop)
        except JobInterrupted as exc:
            logger.warning("jobs: job %s was interrupted (%s); it goes back to the queue", job.id, exc)
            error, interrupted = str(exc), True
        except Exception as exc:  # the runner's failure is the job's failure, not the worker's
            logger.exception("jobs: job %s failed", job.id)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self._stop_flags.pop(job.id, None)
        if flag.is_set() or self.get(job.id).cancel_requested:
            finished = self._record_end(job.id, status=Status.CANCELLED, finished_at=_now(), error=error)
        elif interrupted and job.attempts >= MAX_ATTEMPTS and not self._interrupt.is_set():
            finished = self._record_end(job.id, status=Status.FAILED, finished_at=_now(),
                                        error=f"{error} ({job.attempts} attempts)")
        elif self._interrupt.is_set() or interrupted:
            with open_db(self.db_path) as db:
                front = min((d.get("order", 0.0) for d in db.table("jobs").all() if d["status"] == Status.QUEUED),
                            default=job.order + 1)
            finished = self._record_end(job.id, status=Status.QUEUED, order=min(job.order, front - 1), error=error)
        elif error:
            finished = self._record_end(job.id, status=Status.FAILED, finished_at=_now(), error=error)
        else:
            finished = self._record_end(job.id, status=Status.DONE, finished_at=_now())
        logger.info("jobs: job %s is %s", job.id, finished.status)
        self._changed(finished)

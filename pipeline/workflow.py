"""The whole flow in one object that the UI, the CLI and the tests share.

photos → classification → dataset → training → assessment → library → generation. Each step is a call to the
module that owns it; this module only orders them and keeps what the user chose (overrides, captions) on disk so a
restart loses nothing. A training is queued as a ``TrainingJobSpec`` and run by a ``TrainingRunner``
(``pipeline.training.job``) in the job queue's worker thread, one at a time; its events are kept in a
``TrainingMonitor`` per model that the UI polls. A video is a job on the same queue (``queue_video``; run by
``run_job`` through ``video``), so a clip and a training never hold the GPU at once; its page follows it
(``follow_video``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from pipeline import events as ev
from pipeline.generation.generators import Generators, why_base_cannot_load
from pipeline.intake.classify import ClassificationResult, Readiness, classify_photos
from pipeline.intake.crops import build_dataset
from pipeline.intake.photos import IntakeResult, PhotoStore, Rejection, StoredPhoto
from pipeline.jobs.queue import MAX_ATTEMPTS, Job, JobKind, JobNotFound, JobQueue
from pipeline.library.catalog import UNKNOWN_BASE_MODEL, Library, ModelRecord
from pipeline.models.base_choice import BaseModelPick, free_gpu_gb, pick_base_model
from pipeline.models.families import family_of
from pipeline.settings import (
    AppSettings,
    ClassifySettings,
    GenerateSettings,
    IntakeSettings,
    TrainSettings,
    VideoSettings,
)
from pipeline.status import JOB_ACTIVE, JOB_FINISHED, MODEL_ACTIVE, MODEL_FINISHED, MODEL_RESUMABLE, Status
from pipeline.storage.disk import WRITE_ERRORS, DiskError, as_os_error, disk_error_text, folder_size, is_disk_error
from pipeline.training.estimate import SpeedLog, TrainingEstimate, estimate_training
from pipeline.training.job import (
    ClusterView,
    Executor,
    LocalExecutor,
    TrainingJobSpec,
    TrainingMonitor,
    TrainingRunner,
)
from pipeline.video.i2v import VideoModels
from pipeline.video.job import BASE_MODEL_JOB, VideoJobSpec, VideoUpdate, waiting_text

if TYPE_CHECKING:
    from pipeline.generation.generator import Generator
    from pipeline.video.choice import VideoModelChoice
    from pipeline.video.clip import VideoResult
    from pipeline.video.clips import ClipRecord
    from pipeline.video.stills import Still

logger = logging.getLogger(__name__)

LOCAL_WORKSPACE = "local"  # the one person of a single-user app: the data dir itself is their workspace


P = ParamSpec("P")
R = TypeVar("R")


def _writes(action: str, *, training: bool = False) -> Callable[[Callable[Concatenate[Workflow, P], R]],
                                                                 Callable[Concatenate[Workflow, P], R]]:
    """Marks a method that writes to the data dir: a disk that refuses the write (full, read-only, a file-size limit)
    becomes a ``DiskError`` that says what failed and what to free, where it used to reach the page as a bare
    ``{"error": null}``. ``training``: the message says how much room a training needs."""
    def wrap(method: Callable[Concatenate[Workflow, P], R]) -> Callable[Concatenate[Workflow, P], R]:
        @functools.wraps(method)
        def call(self: Workflow, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(self, *args, **kwargs)
            except WRITE_ERRORS as exc:  # OSError, or safetensors' writer's SafetensorError ("… (os error 28)")
                if not is_disk_error(exc):
                    raise
                needed = self.training_needs_gb() if training else 0.0
                raise DiskError(disk_error_text(as_os_error(exc), self.data_dir, action, needed_gb=needed)) from exc
        return call
    return wrap


def make_executor(settings: AppSettings, generators: Generators) -> Executor:
    """In this process, or on the Ray cluster at ``settings.ray_address`` ("auto": the one this machine joined)."""
    if not settings.ray_address:
        return LocalExecutor(generators, Path(settings.data_dir))
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ValueError("ray_address: trainings on a Ray cluster need Ray on this machine: pip install ray (the "
                         "same version on every node)")
    from pipeline.training.ray_cluster import RayExecutor

    try:
        return RayExecutor(settings.ray_address, Path(settings.data_dir))
    except ConnectionError as exc:
        raise ValueError(f"ray_address: no Ray cluster answers at {settings.ray_address!r} ({exc}); start its "
                         "head with `ray start --head`, or give the address it printed") from exc


@dataclass(frozen=True)
class QueueEntry:
    """A training in the queue, as a person may see it."""

    name: str  # "" for another person's training
    status: Status  # queued or running
    node: str = ""  # on a Ray cluster, the node it runs on
    kind: JobKind = JobKind.TRAIN  # a training or a video: both wait for the GPU


class NotReady(ValueError):
    """The photo set is not ready to train on; the message says why and what to do."""


class BaseUnavailable(ValueError):
    """A library model's LoRA was trained on a base model this machine cannot load; the message names that base and
    how to start the app with it."""


class Workflow:
    """One workspace's flow: its uploaded photos, choices, library and outputs, over a job queue and generators
    that may be shared with other workspaces (see ``pipeline.people.workspaces``).

    Alone (``jobs`` not given) it owns the data dir as today's single-user app does: the photos, the library, the
    job queue and the loaded generators all live in ``settings.data_dir``.
    """

    def __init__(self, settings: AppSettings, *, start_worker: bool = True, workspace: str = LOCAL_WORKSPACE,
                 folder: Path | None = None, jobs: JobQueue | None = None,
                 generators: Generators | None = None, executor: Executor | None = None,
                 video_models: VideoModels | None = None, base_model_pick: BaseModelPick | None = None) -> None:
        from pipeline.models.base_model import is_tiny, resolve_base_model

        self.settings = settings
        self.workspace = workspace
        self.shared_dir = Path(settings.data_dir)  # base models and the latent cache: one copy for everyone
        self.data_dir = Path(folder) if folder is not None else self.shared_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # ``auto`` becomes a model here, once (``Workspaces`` chooses for everyone and passes its pick on): the jobs,
        # the library and the page name the model itself, and say why it was chosen.
        self.base_model_pick = base_model_pick or pick_base_model(settings.base_model, free_gpu_gb)
        self.base_model = self.base_model_pick.spec
        # Fail early and clearly when the chosen base model cannot be found (the UI shows the message). The tiny
        # model needs no check: it is built on first use, not at start-up (building imports diffusers: seconds).
        if not is_tiny(self.base_model):
            resolve_base_model(self.base_model, self.shared_dir)
        self.photos = PhotoStore(self.data_dir / "photos", IntakeSettings())
        self.library = Library(self.data_dir)
        self.speeds = SpeedLog(self.shared_dir)  # the machine's measured training speeds: the same for everyone
        self._monitors: dict[str, TrainingMonitor] = {}
        self._monitor_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._analyses: dict[tuple, Any] = {}  # per-photo measurements, so re-classifying is quick
        self.last_classification: ClassificationResult | None = None  # shown again when the Review tab reopens
        self._generators = generators or Generators(self.shared_dir)
        # The image-to-video model (``AppSettings.video_model``), loaded on a clip's first use: one for everyone.
        self._video_models = video_models or VideoModels(self.shared_dir)
        self._generators.on_load(self._video_models.release)  # the image model takes the GPU: the video model goes
        # Where trainings run: in this process (the default) or on a Ray cluster (``AppSettings.ray_address``).
        self._owns_executor = executor is None
        self.executor = executor or make_executor(settings, self._generators)
        self.jobs = jobs if jobs is not None else JobQueue(self.data_dir, self.run_job, autostart=start_worker,
                                                           devices=self.executor.slots(),
                                                           recount=None if self.executor.local else self.executor.slots)
        self.notices: list[str] = list(self.library.notices)  # what start-up repaired, shown on the page
        if jobs is None and self.jobs.damaged_backup is not None:
            self.notices.append(f"The training queue ({self.jobs.db_path.name}) was damaged and was moved aside to "
                                f"{self.jobs.damaged_backup.name}.")
        if start_worker:
            self._fail_orphaned_models()

    def _my_jobs(self, kind: JobKind | None = None) -> list[Job]:
        return [job for job in self.jobs.list() if job.payload.get("workspace", LOCAL_WORKSPACE) == self.workspace
                and kind in (None, job.kind)]

    def _fail_orphaned_models(self) -> None:
        """Models that say they wait or train, with no job left to do it (a lost queue file, a disk that filled up
        before the end was written): marked failed with the reason, so Resume is offered instead of a wait that
        never ends."""
        active = {job.model_id for job in self._my_jobs(JobKind.TRAIN) if job.status in JOB_ACTIVE}
        for record in self.library.list():
            if record.status in MODEL_ACTIVE and record.id not in active:
                self.library.update(record.id, status=Status.FAILED,
                                    error="interrupted: its place in the training queue was lost; press Resume")
                self.notices.append(f"'{record.name}' was {record.status} with no training behind it: marked "
                                    "failed, press Resume on the Training tab to go on.")

    # ---------------------------------------------------------------- upload
    @_writes("store the photos")
    def add_photos(self, paths: Iterable[Path | str]) -> IntakeResult:
        """Store the photos; with a per-person disk quota, photo by photo: one batch of large photos took a workspace
        to 25.9 MB of a 20 MB quota when it was checked only before the batch."""
        self._check_disk_quota()
        quota = int(self.settings.disk_per_person_gb * 1e9)
        if not quota:
            return self.photos.add_files(paths)
        used = folder_size(self.data_dir)
        accepted: list[StoredPhoto] = []
        rejected: list[Rejection] = []
        already: list[str] = []
        for item in paths:
            size = Path(item).stat().st_size if Path(item).is_file() else 0
            if used + size > quota:
                rejected.append(Rejection(Path(item).name, "over_quota", (
                    f"{size / 1e6:.1f} MB would take your workspace past the {quota / 1e9:g} GB each person may use "
                    f"({used / 1e9:.3f} GB used): delete old models on the Models tab or photos here first")))
                continue
            result = self.photos.add_files([item])
            accepted += result.accepted
            rejected += result.rejected
            already += result.already_stored
            used += size if result.added else 0
        return IntakeResult(tuple(accepted), tuple(rejected), tuple(already))

    @_writes("remove the photo")
    def remove_photo(self, ref: str) -> StoredPhoto:
        """Remove an uploaded photo by id, id prefix or name; returns what was removed."""
        photo = self.photos.find(ref)
        self.photos.remove(photo.id)
        return photo

    def list_photos(self) -> list[StoredPhoto]:
        return self.photos.list()

    # -------------------------------------------------------------- classify
    @property
    def _choices_path(self) -> Path:
        return self.data_dir / "photos" / "choices.json"

    def user_choices(self) -> dict[str, dict[str, str]]:
        """The user's overrides ({file: include|exclude}) and edited captions ({file: text})."""
        if self._choices_path.exists():
            data = json.loads(self._choices_path.read_text())
            return {"overrides": data.get("overrides", {}), "captions": data.get("captions", {})}
        return {"overrides": {}, "captions": {}}

    @_writes("save your choice")
    def set_override(self, file: str, choice: str | None) -> None:
        if choice not in (None, "auto", "include", "exclude"):
            raise ValueError(f"choice must be 'include', 'exclude' or 'auto', got {choice!r}")
        self._update_choices("overrides", file, None if choice in (None, "auto") else choice)

    @_writes("save your choices")
    def set_overrides(self, files: Iterable[str], choice: str | None) -> int:
        """The same choice for several photos at once (the Review tab's bulk actions); returns how many."""
        if choice not in (None, "auto", "include", "exclude"):
            raise ValueError(f"choice must be 'include', 'exclude' or 'auto', got {choice!r}")
        choices = self.user_choices()
        names = list(files)
        for name in names:
            if choice in (None, "auto"):
                choices["overrides"].pop(name, None)
            else:
                choices["overrides"][name] = choice
        self._write_choices(choices)
        return len(names)

    @_writes("save the caption")
    def set_caption(self, file: str, caption: str | None) -> None:
        self._update_choices("captions", file, caption.strip() if caption and caption.strip() else None)

    def _update_choices(self, kind: str, file: str, value: str | None) -> None:
        choices = self.user_choices()
        if value is None:
            choices[kind].pop(file, None)
        else:
            choices[kind][file] = value
        self._write_choices(choices)

    def _write_choices(self, choices: dict[str, dict[str, str]]) -> None:
        self._choices_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._choices_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(choices, indent=2))
        tmp.replace(self._choices_path)

    def classify(self, settings: ClassifySettings | None = None, *,
                 on_event: ev.EventCallback = ev.ignore) -> ClassificationResult:
        photos = self.photos.list()
        if not photos:
            raise ValueError("No photos uploaded yet: add 15–20 photos of one person on the Upload tab first.")
        return classify_photos(
            [p.path for p in photos], settings or ClassifySettings(), names=[p.name for p in photos],
            overrides=self.user_choices()["overrides"], on_event=on_event, cache=self._analyses,
        )

    # ----------------------------------------------------------------- train
    def estimate(self, settings: TrainSettings) -> TrainingEstimate:
        """Time and memory the training would take here (measured by earlier runs where there are some)."""
        from pipeline.models.base_model import is_micro, is_tiny

        embedded = "micro" if is_micro(self.base_model) else "tiny" if is_tiny(self.base_model) else None
        return estimate_training(settings, self.base_model, self.speeds, embedded=embedded)

    @property
    def _draft_path(self) -> Path:
        return self.data_dir / "settings_draft.json"

    @_writes("save the settings")
    def save_settings_draft(self, values: dict[str, Any]) -> None:
        """What the person last typed on the Settings tab, so that a reload does not silently reset it."""
        tmp = self._draft_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(values, default=str))
        tmp.replace(self._draft_path)

    def settings_draft(self) -> dict[str, Any]:
        """The saved form values ({} when none, or when the file is damaged: the defaults then apply)."""
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self._draft_path.read_text())
            if isinstance(data, dict):
                return data
        return {}

    def default_train_settings(self, **overrides: Any) -> TrainSettings:
        from pipeline.models.base_model import default_train_settings

        return default_train_settings(self.base_model, **overrides)

    @_writes("queue the training", training=True)
    def start_training(self, settings: TrainSettings, *, classification: ClassificationResult | None = None,
                       anyway: bool = False, on_event: ev.EventCallback = ev.ignore) -> ModelRecord:
        """Classify (unless given), build the dataset into the model's folder, queue the training job.

        A set the classifier calls "not ready" (too few usable photos, two people mixed) is refused with the reason
        unless ``anyway``: a training on it costs the GPU time and rarely gives a likeness.
        """
        settings.validate()
        family_of(self.base_model).check_settings(settings)
        with self._start_lock:  # two quick Train clicks must not both pass the per-person limit
            return self._start_training(settings, classification, anyway, on_event)

    def _start_training(self, settings: TrainSettings, classification: ClassificationResult | None, anyway: bool,
                        on_event: ev.EventCallback) -> ModelRecord:
        self._check_training_limit()
        self._check_disk_quota()
        result = classification or self.classify(on_event=on_event)
        if not result.selected:
            raise ValueError(f"No usable photos to train on: {result.report.summary}")
        if result.report.readiness == Readiness.NOT_READY and not anyway:
            raise NotReady(f"{result.report.summary} Fix the set on the Review tab (or `python -m pipeline classify`), "
                           "or train anyway if you know why: the checkbox under Train, --anyway on the command line.")
        record = self.library.create(settings.name, self.base_model, {}, trigger_word=settings.trigger_word)
        spec = TrainingJobSpec(model_id=record.id, workspace=self.workspace, base_model=self.base_model,
                               settings=dataclasses.replace(settings, trigger_word=record.trigger_word))
        folder = Path(record.folder)
        (folder / "classification.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
        dataset = build_dataset(result, folder / spec.dataset, record.trigger_word, max(settings.resolutions),
                                captions=self.user_choices()["captions"], on_event=on_event)
        dataset.save(folder / spec.dataset)
        spec.save(folder)
        summary = {"photos_used": [item.source for item in dataset.items], "count": len(dataset),
                   "captioner": dataset.captioner, "report": result.to_dict()["report"]}
        payload = spec.to_dict()  # the one JSON form of the job: queue, job.json and the record's settings
        record = self.library.update(record.id, dataset=summary, settings=payload["settings"])
        self._monitor(record.id).note(f"queued: {len(dataset)} photos, trigger word '{record.trigger_word}'")
        self.jobs.submit(record.id, payload)
        return record

    @_writes("queue the training again", training=True)
    def resume_training(self, model_id: str) -> ModelRecord:
        """Queue a stopped or failed training again; it continues from its last checkpoint."""
        record = self.library.get(model_id)
        if record.status not in MODEL_RESUMABLE:
            raise ValueError(f"model '{record.name}' is {record.status}: only a stopped or failed training resumes")
        # The spec it was queued with, with what the model has now: its record's settings (its trigger word may have
        # changed) and the workspace it lives in (its data may have moved into an account's). A model made before
        # specs were saved gets one from its record (a model recovered from its folder may not know its base model:
        # this app's, then).
        saved = TrainingJobSpec.load(record.folder)
        base = record.base_model if record.base_model != UNKNOWN_BASE_MODEL else self.base_model
        spec = TrainingJobSpec.from_dict(
            {"settings": record.settings, "version": saved.version if saved else 0,
             "dataset": saved.dataset if saved else "dataset"},
            model_id=model_id, base_model=saved.base_model if saved else base, workspace=self.workspace)
        if not (Path(record.folder) / spec.dataset / "dataset.json").exists():
            raise ValueError(f"model '{record.name}' has no dataset to train on; start a new training instead")
        # A model queued before its settings had limits (10 000 test prompts) is refused with the field named,
        # rather than queued to hold the slot again.
        spec.settings.validate()
        with self._start_lock:
            self._check_training_limit()
            record = self.library.update(model_id, status=Status.QUEUED, error="", finished_at=None)
            self._monitor(model_id).note("queued again: resuming from the last checkpoint", status=Status.QUEUED)
            self.jobs.submit(model_id, spec.to_dict())
        return record

    def _check_training_limit(self) -> None:
        """Fair sharing of the queue: at most ``trainings_per_person`` of this workspace's trainings wait or run."""
        limit = self.settings.trainings_per_person
        if not limit:
            return
        mine = [job for job in self._my_jobs(JobKind.TRAIN) if job.status in JOB_ACTIVE]
        if len(mine) >= limit:
            names = ", ".join(f"'{self.library.get(job.model_id).name}'" for job in mine
                              if job.model_id in {r.id for r in self.library.list()})
            raise ValueError(f"you already have {len(mine)} training(s) waiting or running ({names}); this app "
                             f"allows {limit} per person so that everyone gets a turn: wait for it to finish or "
                             "stop it on the Training tab")

    def _check_disk_quota(self) -> None:
        """Per-person disk limit (``disk_per_person_gb``; 0: none): refuse new uploads and trainings above it."""
        quota = self.settings.disk_per_person_gb
        if quota and (used := folder_size(self.data_dir) / 1e9) >= quota:
            raise ValueError(f"your workspace uses {used:.2f} GB of the {quota:g} GB each person may use: delete "
                             "old models on the Models tab (or photos on the Upload tab) first")

    def _monitor(self, model_id: str) -> TrainingMonitor:
        with self._monitor_lock:
            if model_id not in self._monitors:
                folder = Path(self.library.get(model_id).folder)
                self._monitors[model_id] = TrainingMonitor.open(model_id, folder / "training_log.jsonl")
            return self._monitors[model_id]

    def training_view(self, model_id: str) -> TrainingMonitor:
        monitor = self._monitor(model_id).snapshot()
        monitor.status = self.library.get(model_id).status
        return monitor

    def jobs_ahead(self, model_id: str) -> int | None:
        """How many trainings run or wait before this model's (None when it is not waiting)."""
        self.library.get(model_id)  # another workspace's model is "not found", like one that does not exist
        waiting = [job for job in self._my_jobs(JobKind.TRAIN)
                   if job.model_id == model_id and job.status == Status.QUEUED]
        if not waiting:
            return None
        # Clips in the same line are left out: each takes minutes, not a training's time.
        lineup = [job.id for job in self.jobs.list() if job.status in JOB_ACTIVE and job.kind == JobKind.TRAIN]
        return lineup.index(waiting[0].id)

    def trainings_in_line(self) -> tuple[int, int]:
        """Everyone's trainings that run and that wait: what a new training waits behind (clips left out, as in
        ``jobs_ahead``)."""
        active = [job.status for job in self.jobs.list() if job.status in JOB_ACTIVE and job.kind == JobKind.TRAIN]
        return active.count(Status.RUNNING), active.count(Status.QUEUED)

    @_writes("stop the training")
    def cancel_training(self, model_id: str) -> None:
        """Stop the model's training; its clips waiting in the same queue are left alone (they are Cancelled on the
        page that asked for them)."""
        self.library.get(model_id)  # only this workspace's trainings: another's is "not found"
        for job in [job for job in self._my_jobs(JobKind.TRAIN) if job.model_id == model_id]:
            if job.status in JOB_ACTIVE and self.jobs.cancel(job.id).status == Status.CANCELLED:
                # A queued job ends at once; a running one stops at its next step and reports itself.
                self.library.update(model_id, status=Status.CANCELLED)

    def wait_for(self, model_id: str, timeout: float = 600.0, poll: float = 0.5) -> ModelRecord:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.library.get(model_id)
            if record.status in MODEL_FINISHED:
                return record
            time.sleep(poll)
        raise TimeoutError(f"model {model_id} still {self.library.get(model_id).status} after {timeout:.0f} s")

    def run_job(self, job: Job, should_stop: ev.StopCheck) -> None:
        """The queue's runner for this workspace's jobs: a training, or a clip (``_run_video_job``)."""
        if job.kind == JobKind.VIDEO:
            self._run_video_job(job, should_stop)
            return
        record = self.library.get(job.model_id)
        spec = TrainingJobSpec.from_dict(job.payload, model_id=job.model_id, base_model=record.base_model,
                                         workspace=self.workspace)
        self.training_runner().run(
            spec, device=job.device or None, should_stop=should_stop,
            shutting_down=lambda: self.jobs.interrupting and not self.jobs.cancel_requested(job.id),
            on_placed=lambda place: self.jobs.annotate(job.id, **place), last_attempt=job.attempts >= MAX_ATTEMPTS)

    def training_runner(self) -> TrainingRunner:
        """What runs this workspace's trainings, given what it needs."""
        notify = None
        if self.settings.smtp.enabled:
            from pipeline.library.notify import email_notifier

            notify = email_notifier(self.settings.smtp)
        return TrainingRunner(self.library, self.executor, self._monitor, self.speeds, notify=notify,
                              min_free_disk_gb=self.settings.min_free_disk_gb,
                              disk_quota_gb=self.settings.disk_per_person_gb)

    def training_needs_gb(self) -> float:
        """Free disk space a training needs before it starts (``AppSettings.min_free_disk_gb``, or by base model)."""
        from pipeline.models.base_model import is_embedded

        return self.settings.min_free_disk_gb or (0.2 if is_embedded(self.base_model) else 2.0)

    # -------------------------------------------------------------- generate
    def generator(self, model_id: str | None = None) -> Generator:
        """The generator that draws with ``model_id`` (None: the bare base model): its base's (``base_of``)."""
        return self._generators.get(self.base_of(model_id))

    def base_of(self, model_id: str | None) -> str:
        """The base model that draws with ``model_id``: the one its LoRA was trained on, which may not be the app's
        (``--base-model`` changed since, or ``auto`` chose another base on this start). A LoRA on another base loads
        with a warning at most, onto whichever layers share names, and draws wrong pictures. The bare base model
        (None) and a model whose record does not know its base draw on the app's. BaseUnavailable where the
        model's base cannot be loaded here."""
        if not model_id:
            return self.base_model
        record = self.library.get(model_id)
        base = record.base_model if record.base_model != UNKNOWN_BASE_MODEL else self.base_model
        if base != self.base_model and (why := why_base_cannot_load(base, self.shared_dir)):
            from pipeline.models.base_info import base_info

            raise BaseUnavailable(
                f"model '{record.name}' was trained on {base_info(base).name} and draws only on that base, which "
                f"cannot be loaded here: {why}. To draw with it, start the app with --base-model {base} (on a "
                f"machine that can load it); this app runs {self.base_model}.")
        return base

    def test_generate_settings(self, resolution: int, model_id: str | None = None) -> GenerateSettings:
        """The default size, steps and guidance of ``model_id``'s base (None: the app's)."""
        from pipeline.models.base_model import default_test_generate_settings

        return default_test_generate_settings(self.base_of(model_id), resolution)

    def _lora(self, model_id: str | None) -> tuple[Path | None, str, str]:
        """(LoRA file, trigger word, label) for a library model; (None, "", "base model") for the bare base model."""
        if not model_id:
            return None, "", "base model"
        record = self.library.get(model_id)
        if not record.lora_path:
            raise ValueError(f"model '{record.name}' has no trained LoRA yet (status: {record.status})")
        return Path(record.lora_path), record.trigger_word, record.name

    def _render(self, model_id: str | None, settings: GenerateSettings, on_event: ev.EventCallback,
                should_stop: ev.StopCheck = ev.never) -> list:
        from pipeline.intake.trigger import insert_trigger

        settings.validate()
        self._check_disk_quota()  # every output is saved in the workspace
        lora_path, trigger, _label = self._lora(model_id)
        if lora_path is not None:
            settings = dataclasses.replace(settings, prompt=insert_trigger(settings.prompt, trigger))
        return self.generator(model_id).generate(settings, lora_path=lora_path, on_event=on_event,
                                                 should_stop=should_stop)

    @_writes("save the images")
    def generate(self, model_id: str | None, settings: GenerateSettings, *,
                 on_event: ev.EventCallback = ev.ignore, should_stop: ev.StopCheck = ev.never) -> list[Path]:
        """Generate with a library model (or the bare base model) and save PNGs with their settings; ``should_stop``
        ends it between two denoising steps (the images finished by then are saved)."""
        from pipeline.generation.generator import save_png

        images = self._render(model_id, settings, on_event, should_stop)
        out = self._new_output_path("generations", "")
        out.mkdir(parents=True)
        return [save_png(img, out / f"{i:02d}.png") for i, img in enumerate(images)]

    @_writes("save the comparison")
    def compare(self, left: tuple[str | None, float], right: tuple[str | None, float], settings: GenerateSettings,
                *, on_event: ev.EventCallback = ev.ignore, should_stop: ev.StopCheck = ev.never) -> Path:
        """The same prompt and seeds through two models, or one model at two LoRA scales, side by side."""
        from pipeline.generation.generator import comparison_sheet, save_png

        for model_id, _scale in (left, right):  # both bases checked before either side draws for minutes
            self.base_of(model_id)
        sides, labels = [], []
        for model_id, scale in (left, right):
            sides.append(self._render(model_id, dataclasses.replace(settings, lora_scale=scale), on_event,
                                      should_stop))
            labels.append(f"{self._lora(model_id)[2]} @ {scale:g}")
        out = self._new_output_path("generations", ".png")
        return save_png(comparison_sheet(sides[0], sides[1], (labels[0], labels[1])), out)

    @_writes("save the video")
    def video(self, model_id: str | None, *, prompt: str, frames: int, fps: int, seed: int = 0,
              prompt_b: str | None = None, video_model: str | None = None, still: str | None = None,
              on_event: ev.EventCallback = ev.ignore, should_stop: ev.StopCheck = ev.never) -> VideoResult:
        """A short clip with every frame's likeness to the model's person: the MP4 and its likeness JSON beside it.
        This makes it now, in the caller's thread; the app queues it instead (``queue_video``).

        ``video_model`` is a ``--video-model`` setting: "auto" chooses by the GPU's free memory
        (``pipeline.video.choice``). Without one (None, "" or "morph"): a morph between stills
        (``make_scored_video``; ``prompt_b`` the prompt it moves towards; ``should_stop`` ends it between two frames
        and the frames made so far are scored, here; a queued clip that is stopped keeps nothing, ``_run_video_job``).
        With one ("tiny", a hub id or folder): the still ``prompt`` draws with the LoRA — or ``still``, one of the
        person's generations (relative to the workspace) — animated by it (``make_image_to_video``; ``prompt_b`` the
        motion, else ``prompt``); ``should_stop`` ends it between two denoising steps with ``ClipStopped``, and
        nothing is kept."""
        from pipeline.intake.trigger import insert_trigger
        from pipeline.models.base_model import default_test_generate_settings
        from pipeline.video.clip import make_scored_video
        from pipeline.video.clip_likeness import PersonReference
        from pipeline.video.i2v import default_animate_settings, make_image_to_video
        from pipeline.video.stills import load_still

        spec, picked = self._check_video(model_id, video_model, still)
        lora_path, trigger, label = self._lora(model_id)
        motion = insert_trigger(prompt_b or prompt, "")  # the video model knows no trigger word: "a person"
        person = None
        if lora_path is not None:
            prompt = insert_trigger(prompt, trigger)
            prompt_b = insert_trigger(prompt_b, trigger) if prompt_b else None
            person = PersonReference.of_model(self.library.get(model_id).folder)  # before minutes of frames
        base = self.base_of(model_id)  # the stills draw on the model's own base, at its size
        size = default_test_generate_settings(base, 512)
        clip = VideoSettings(prompt=prompt, prompt_b=prompt_b or "", frames=frames, fps=fps, seed_a=seed,
                             seed_b=seed + 1, width=size.width, height=size.height, steps=size.steps)
        out_path = self._new_output_path("videos", ".mp4")
        if not spec:
            return make_scored_video(self._generators.get(base), clip, lora_path=lora_path, out_path=out_path,
                                     person=person, model=label, base_model=base, model_id=model_id or "",
                                     on_event=on_event, should_stop=should_stop)
        animation = default_animate_settings(spec, prompt=motion, frames=frames, fps=fps, seed=seed).validate()
        first = clip.validate().still()
        image = None
        if picked is not None:  # the person's own generation: its prompt and seed are what drew it
            image, text = load_still(picked, size.width, size.height)
            first = dataclasses.replace(first, prompt=text.get("prompt", first.prompt),
                                        seed=int(text.get("seed") or first.seed))
        return make_image_to_video(self._generators.get(base), self._video_models, spec, first, animation,
                                   lora_path=lora_path, out_path=out_path, person=person, model=label,
                                   base_model=base, model_id=model_id or "", picked=image,
                                   picked_ref=still or "", on_event=on_event, should_stop=should_stop)

    def _check_video(self, model_id: str | None, video_model: str | None,
                     still: str | None) -> tuple[str, Path | None]:
        """What a clip is made with, checked before it waits in line or draws anything: the video model ("" for a
        morph) and the picked still's file (None: a new still). ValueError naming the field for bad input."""
        from pipeline.video.stills import resolve_still

        self._check_disk_quota()
        self._lora(model_id)  # a model that is not this person's, or has no LoRA yet
        self.base_of(model_id)  # a base this machine cannot load: refused before the clip waits in line
        spec = self._video_models.chosen(video_model, self._gpu_free_for_video).spec  # "auto": by GPU memory
        if not still:
            return spec, None
        if not spec:
            raise ValueError("still: a morph draws every frame from noise, so it cannot start from a picked "
                             "generation; leave the still empty, or start the app with a video model "
                             "(--video-model)")
        return spec, resolve_still(self.data_dir, still)

    def video_model_choice(self) -> VideoModelChoice:
        """The video model this app makes clips with (``AppSettings.video_model``, ``auto`` resolved) and why."""
        return self._video_models.chosen(self.settings.video_model, self._gpu_free_for_video)

    def _gpu_free_for_video(self) -> float | None:
        """The GPU memory a clip's video model finds: what is free now plus what the image model holds, as a clip
        unloads the image model before it animates on a GPU (``make_image_to_video``). None without a GPU."""
        from pipeline.video.choice import free_gpu_gb as free_now

        free = free_now()
        return None if free is None else free + self._generators.gpu_gb_held()

    def stills(self, model_id: str | None) -> list[Still]:
        """This person's generations made with ``model_id``'s LoRA (None: the bare base model), newest first: the
        stills a clip may start from."""
        from pipeline.video.stills import list_stills

        folder = Path(self.library.get(model_id).folder) if model_id else None
        return list_stills(self.data_dir, folder)

    # ---------------------------------------------------------- videos in the queue
    def queue_video(self, model_id: str | None, *, prompt: str, frames: int, fps: int, seed: int = 0,
                    prompt_b: str | None = None, video_model: str | None = None,
                    still: str | None = None) -> Job:
        """Queue a clip behind the trainings and clips before it (one job on the GPU at a time); the arguments are
        ``video``'s, checked now so that bad input is refused before it waits. Follow it with ``follow_video``."""
        spec, _picked = self._check_video(model_id, video_model, still)
        VideoSettings(prompt=prompt, prompt_b=prompt_b or "", frames=frames, fps=fps, seed_a=seed).validate()
        job_spec = VideoJobSpec(workspace=self.workspace, model_id=model_id or "", prompt=prompt,
                                prompt_b=prompt_b or "", frames=frames, fps=fps, seed=seed, video_model=spec,
                                still=still or "")
        workers = self.jobs.workers
        # With several GPUs, on the one the image model draws on (the first): where a clip's still is drawn too.
        job = self.jobs.submit(model_id or BASE_MODEL_JOB, job_spec.to_dict(), JobKind.VIDEO,
                               only_on=workers[0] if len(workers) > 1 else "")
        self._video_models.monitors.open(job.id)
        return job

    def _my_video(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job.kind != JobKind.VIDEO or job.payload.get("workspace") != self.workspace:
            raise JobNotFound(f"job_id: no video {job_id!r} of yours in the queue")  # another's is "not found"
        return job

    def follow_video(self, job_id: str, *, poll: float = 0.25) -> Iterator[VideoUpdate]:
        """Where a queued clip stands, every ``poll`` seconds while it waits and runs (what it waits for and its
        place in line; each step with the time left), ending with the clip or why there is none."""
        self._my_video(job_id)
        monitor = self._video_models.monitors.open(job_id)
        try:
            while True:
                job = self.jobs.get(job_id)
                if monitor.result is not None:  # before the queue records it done: the clip is all the page needs
                    yield VideoUpdate(Status.DONE, "done", result=monitor.result)
                    return
                if job.status in JOB_FINISHED:
                    yield VideoUpdate(job.status, str(job.status), error=monitor.error or job.error or (
                        "video stopped before it was made: nothing was kept"))
                    return
                if job.status == Status.QUEUED:
                    waiting = [j.id for j in self.jobs.list() if j.status == Status.QUEUED]
                    place = waiting.index(job_id) + 1 if job_id in waiting else 1
                    yield VideoUpdate(Status.QUEUED, waiting_text(self.jobs.running_kinds(), place))
                else:
                    yield monitor.update()
                time.sleep(poll)
        finally:
            self._video_models.monitors.close(job_id)

    def cancel_video(self, job_id: str) -> Job:
        """Cancel a queued clip now, or stop a running one at its next step: nothing of it is kept, morph or
        image-to-video. A clip already made is kept (Cancel came too late): the queue then records it done."""
        self._my_video(job_id)
        monitors = self._video_models.monitors
        with monitors.ending:
            job = self.jobs.get(job_id)
            if job.status not in JOB_ACTIVE or monitors.made(job_id):
                return job
            job = self.jobs.cancel(job_id)
        if job.status == Status.CANCELLED:  # out of the queue before it ran: the job lets go of its monitor here
            monitors.close(job_id)
        return job

    def _run_video_job(self, job: Job, should_stop: ev.StopCheck) -> None:
        """Make the clip and publish it to its monitor; a clip stopped by Cancel or a shutdown keeps nothing (a
        morph stopped between two frames has its MP4 and JSON already written: they are deleted)."""
        from pipeline.video.i2v import ClipStopped

        spec = VideoJobSpec.from_dict(job.payload)
        monitors = self._video_models.monitors
        monitor = monitors.get(job.id)

        def stopped() -> bool:  # after the run too: a cancel asked for from another process is in the queue only
            return should_stop() or self.jobs.cancel_requested(job.id)

        try:
            result = self.video(spec.model_id or None, prompt=spec.prompt, prompt_b=spec.prompt_b or None,
                                frames=spec.frames, fps=spec.fps, seed=spec.seed, video_model=spec.video_model,
                                still=spec.still or None, on_event=monitor.on_event, should_stop=should_stop)
            with monitors.ending:  # cancel_video takes it too
                if not stopped():
                    monitor.result = result
                    return
            for path in (result.video, result.likeness_json):
                path.unlink(missing_ok=True)
            monitor.error = (f"video stopped ({result.frames} of {spec.frames} frames made): nothing was kept")
        except ClipStopped as exc:
            monitor.error = str(exc)
            if not stopped():
                raise
            # cancelled or shut down: the queue records which (no failure, no traceback in the log)
        except Exception as exc:
            monitor.error = str(exc)
            raise  # the queue records the job failed (or cancelled, when it was stopped) with this message
        finally:
            monitors.close(job.id)  # the job lets go of its monitor; a page that follows it still holds it

    def clips(self, model_id: str) -> list[ClipRecord]:
        """The clips made of one of this person's models whose MP4 is still saved, newest first (ModelNotFound for
        anyone else's model, as for one that does not exist)."""
        from pipeline.video.clips import list_clips

        self.library.get(model_id)
        return list_clips(self.data_dir / "videos", model_id)

    def _new_output_path(self, kind: str, suffix: str) -> Path:
        """A fresh, time-sorted path under data_dir/kind: two requests in the same second never collide."""
        folder = self.data_dir / kind
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}{suffix}"

    # --------------------------------------------------------------- library
    def models(self, status: Status | None = None) -> list[ModelRecord]:
        """This person's models, newest first (only those with ``status`` when given)."""
        return self.library.list(status)

    def model(self, model_id: str) -> ModelRecord:
        """One of this person's models; ModelNotFound for anyone else's, as for one that does not exist."""
        return self.library.get(model_id)

    @_writes("rename the model")
    def rename_model(self, model_id: str, name: str) -> ModelRecord:
        return self.library.rename(model_id, name)

    @_writes("change the trigger word")
    def set_trigger_word(self, model_id: str, word: str) -> ModelRecord:
        return self.library.set_trigger_word(model_id, word)

    def downloadable_loras(self, model_id: str) -> dict[str, Path]:
        """The model's LoRA files that are complete, by format ("diffusers", "kohya")."""
        from pipeline.library.export import complete_loras

        return complete_loras(self.library, model_id)

    @_writes("make the zip")
    def export_zip(self, model_id: str) -> Path:
        """Both LoRAs, the model card, the samples and the scores in one zip."""
        from pipeline.library.export import export_zip

        return export_zip(self.library, model_id)

    def push_to_hub(self, model_id: str, repo_id: str, token: str, *, private: bool = True) -> str:
        """Upload the model to a Hugging Face repository; returns its address."""
        from pipeline.library.hub import push_to_hub

        return push_to_hub(self.library, model_id, repo_id, token, private=private)

    @_writes("delete the model")
    def delete_model(self, model_id: str) -> None:
        self.cancel_training(model_id)  # raises ModelNotFound for a model that is not in this workspace
        for job in self._my_jobs(JobKind.VIDEO):  # its clips too: their LoRA is about to go
            if job.model_id == model_id and job.status in JOB_ACTIVE:
                self.cancel_video(job.id)
        self.library.delete(model_id, force=True)
        self._monitors.pop(model_id, None)

    def queue(self) -> list[QueueEntry]:
        """Trainings that run or wait, in the order they run; other people's are counted, not named."""
        mine = {job.id for job in self._my_jobs()}
        entries = []
        for job in self.jobs.list():
            if job.status not in JOB_ACTIVE:
                continue
            name = ""
            if job.id in mine and job.model_id == BASE_MODEL_JOB:  # a clip of the bare base model: no library model
                name = "base model"
            elif job.id in mine:
                with contextlib.suppress(ValueError):
                    name = self.library.get(job.model_id).name
            entries.append(QueueEntry(name, job.status, job.node, job.kind))
        return entries

    def cluster(self) -> ClusterView | None:
        """The Ray cluster trainings run on (``pipeline.training.ray_cluster.ClusterView``); None when they run here."""
        return self.executor.view()

    def close(self) -> None:
        # A worker still inside a job (a sample being drawn does not stop half-way) keeps the executor it uses.
        if self.jobs.stop() and self._owns_executor:
            self.executor.close()

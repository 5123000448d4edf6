"""The whole flow in one object that the UI, the CLI and the tests share.

photos → classification → dataset → training → assessment → library → generation. Each step is a call to the
module that owns it; this module only orders them and keeps what the user chose (overrides, captions) on disk so a
restart loses nothing. Training runs in the job queue's worker thread, one at a time; its events are kept in a
``TrainingMonitor`` per model that the UI polls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import events as ev
from pipeline.classify import ClassificationResult, classify_photos
from pipeline.crops import build_dataset
from pipeline.dataset import Dataset
from pipeline.estimate import Speed, SpeedLog, TrainingEstimate, device_name, estimate_training, speed_key
from pipeline.flow_status import FlowStatus, flow_status
from pipeline.jobs import Job, JobQueue
from pipeline.library import BUSY_STATUSES, FINISHED_STATUSES, Library, ModelNotFound, ModelRecord
from pipeline.photos import IntakeResult, PhotoStore, StoredPhoto
from pipeline.settings import (
    AppSettings,
    ClassifySettings,
    GenerateSettings,
    IntakeSettings,
    TrainSettings,
    VideoSettings,
    to_json,
)

logger = logging.getLogger(__name__)

LOCAL_WORKSPACE = "local"  # the one person of a single-user app: the data dir itself is their workspace


def folder_size(folder: Path) -> int:
    """Bytes of every file under ``folder`` (0 when it does not exist)."""
    total = 0
    for path in Path(folder).rglob("*"):
        with contextlib.suppress(OSError):  # a file removed while we count
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total


class NotReady(ValueError):
    """The photo set is not ready to train on; the message says why and what to do."""


class TrainingNotStarted(RuntimeError):
    """A queued training could not start (e.g. no disk space); the model is marked failed with the reason."""


@dataclass
class TrainingMonitor:
    """What a training run has reported so far: the UI renders it, the job fills it.

    Every entry is also appended to a journal (``training_log.jsonl`` in the model's folder), so the log, the loss
    curve and the samples are still there after the app restarts.
    """

    model_id: str
    journal: Path | None = None
    status: str = "queued"
    log: list[str] = field(default_factory=list)
    losses: list[tuple[int, float, float]] = field(default_factory=list)  # (step, raw, smoothed)
    last_step: ev.TrainStep | None = None
    samples: list[tuple[int, Path, str]] = field(default_factory=list)  # (step, image, prompt)
    checkpoints: list[int] = field(default_factory=list)
    assessments: list[tuple[int, float, float]] = field(default_factory=list)  # (step, likeness 0–1, overall 0–100)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, model_id: str, journal: Path) -> TrainingMonitor:
        monitor = cls(model_id)
        if journal.exists():
            for line in journal.read_text().splitlines():
                with contextlib.suppress(ValueError):  # a line cut by a crash is skipped, not fatal
                    monitor._apply(json.loads(line))
        monitor.journal = journal
        return monitor

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.TrainStep):
            self.last_step = event
            self._add({"kind": "loss", "step": event.step, "raw": event.loss, "smooth": event.loss_smooth})
            if event.step == 1 or event.step % 10 == 0 or event.step == event.total_steps:
                self._add({"kind": "log", "text": (
                    f"step {event.step}/{event.total_steps}  loss {event.loss:.4f} (smoothed "
                    f"{event.loss_smooth:.4f})  lr {event.learning_rate:.2e}  {event.seconds_per_step:.2f} s/step"
                    f"  ETA {ev.duration_text(event.eta_seconds)}  [{event.phase}]")})
        elif isinstance(event, ev.SampleImages):
            for image, prompt in zip(event.images, event.prompts, strict=False):
                self._add({"kind": "sample", "step": event.step, "path": str(image), "prompt": prompt})
            self._add({"kind": "log", "text": f"step {event.step}: {len(event.images)} sample image(s)"})
        elif isinstance(event, ev.CheckpointSaved):
            self._add({"kind": "checkpoint", "step": event.step})
            self._add({"kind": "log", "text": f"step {event.step}: checkpoint saved"})
        elif isinstance(event, ev.Progress):
            count = f"{event.done}/{event.total}" if event.total else ""
            text = (f"[{event.stage}] {event.message} ({count})" if event.message and count
                    else f"[{event.stage}] {event.message or count}")
            self._add({"kind": "log", "text": text})
        elif isinstance(event, ev.Message):
            self._add({"kind": "log", "text": ("⚠ " if event.level != "info" else "") + event.text})

    def on_assessment(self, step: int, likeness: float, overall: float) -> None:
        self._add({"kind": "assessment", "step": step, "likeness": likeness, "overall": overall})
        self._add({"kind": "log", "text": f"step {step}: likeness {likeness:.0%}, overall score {overall:.0f}/100"})

    def note(self, text: str, status: str | None = None) -> None:
        self._add({"kind": "log", "text": text})
        if status:
            self.status = status

    def _add(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self._apply(entry)
            if self.journal is not None:
                try:
                    with self.journal.open("a") as f:
                        f.write(json.dumps(entry) + "\n")
                except OSError as exc:  # e.g. the model was deleted while it trained: keep the run going
                    logger.warning("cannot write %s: %s", self.journal, exc)
                    self.journal = None

    def _apply(self, entry: dict[str, Any]) -> None:
        kind = entry["kind"]
        if kind == "log":
            self.log.append(entry["text"])
        elif kind == "loss":
            self.losses.append((entry["step"], entry["raw"], entry["smooth"]))
        elif kind == "sample":
            self.samples.append((entry["step"], Path(entry["path"]), entry["prompt"]))
        elif kind == "checkpoint":
            self.checkpoints.append(entry["step"])
        elif kind == "assessment":
            self.assessments.append((entry["step"], entry["likeness"], entry["overall"]))

    def snapshot(self) -> TrainingMonitor:
        with self.lock:
            return dataclasses.replace(
                self, log=list(self.log), losses=list(self.losses), samples=list(self.samples),
                checkpoints=list(self.checkpoints), assessments=list(self.assessments), lock=threading.Lock(),
            )


class Generators:
    """The loaded generation pipelines, one per base model, shared by every workspace of the app."""

    def __init__(self) -> None:
        self.loaded: dict[str, Any] = {}
        self.lock = threading.Lock()


class Workflow:
    """One workspace's flow: its uploaded photos, choices, library and outputs, over a job queue and generators
    that may be shared with other workspaces (see ``pipeline.workspaces``).

    Alone (``jobs`` not given) it owns the data dir as today's single-user app does: the photos, the library, the
    job queue and the loaded generators all live in ``settings.data_dir``.
    """

    def __init__(self, settings: AppSettings, *, start_worker: bool = True, workspace: str = LOCAL_WORKSPACE,
                 folder: Path | None = None, jobs: JobQueue | None = None,
                 generators: Generators | None = None) -> None:
        from pipeline.base_model import is_tiny, resolve_base_model

        self.settings = settings
        self.workspace = workspace
        self.shared_dir = Path(settings.data_dir)  # base models and the latent cache: one copy for everyone
        self.data_dir = Path(folder) if folder is not None else self.shared_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.base_model = settings.base_model
        # Fail early and clearly when the chosen base model cannot be found (the UI shows the message). The tiny
        # model needs no check: it is built on first use, not at start-up (building imports diffusers: seconds).
        if not is_tiny(settings.base_model):
            resolve_base_model(settings.base_model, self.shared_dir)
        self.photos = PhotoStore(self.data_dir / "photos", IntakeSettings())
        self.library = Library(self.data_dir)
        self.speeds = SpeedLog(self.shared_dir)  # the machine's measured training speeds: the same for everyone
        self._monitors: dict[str, TrainingMonitor] = {}
        self._monitor_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._analyses: dict[tuple, Any] = {}  # per-photo measurements, so re-classifying is quick
        self.last_classification: ClassificationResult | None = None  # shown again when the Review tab reopens
        self._generators = generators or Generators()
        self.jobs = jobs if jobs is not None else JobQueue(self.data_dir, self._run_job, autostart=start_worker)
        self.notices: list[str] = list(self.library.notices)  # what start-up repaired, shown on the page
        if jobs is None and self.jobs.damaged_backup is not None:
            self.notices.append(f"The training queue ({self.jobs.db_path.name}) was damaged and was moved aside to "
                                f"{self.jobs.damaged_backup.name}.")
        if start_worker:
            self._fail_orphaned_models()

    def _my_jobs(self) -> list[Job]:
        return [job for job in self.jobs.list() if job.payload.get("workspace", LOCAL_WORKSPACE) == self.workspace]

    def _fail_orphaned_models(self) -> None:
        """Models that say they wait or train, with no job left to do it (a lost queue file, a disk that filled up
        before the end was written): marked failed with the reason, so Resume is offered instead of a wait that
        never ends."""
        active = {job.model_id for job in self._my_jobs() if job.status in ("queued", "running")}
        for record in self.library.list():
            if record.status in ("queued", *BUSY_STATUSES) and record.id not in active:
                self.library.update(record.id, status="failed",
                                    error="interrupted: its place in the training queue was lost; press Resume")
                self.notices.append(f"'{record.name}' was {record.status} with no training behind it: marked "
                                    "failed, press Resume on the Training tab to go on.")

    # ---------------------------------------------------------------- upload
    def add_photos(self, paths: Iterable[Path | str]) -> IntakeResult:
        self._check_disk_quota()
        return self.photos.add_files(paths)

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

    def set_override(self, file: str, choice: str | None) -> None:
        if choice not in (None, "auto", "include", "exclude"):
            raise ValueError(f"choice must be 'include', 'exclude' or 'auto', got {choice!r}")
        self._update_choices("overrides", file, None if choice in (None, "auto") else choice)

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

    def flow_status(self) -> FlowStatus:
        """Where this person stands, photos to model, and what is missing (the step indicator)."""
        settings = ClassifySettings()
        return flow_status([p.name for p in self.list_photos()], self.last_classification, self.library.list(),
                           target_min=settings.target_min, target_max=settings.target_max)

    # ----------------------------------------------------------------- train
    def estimate(self, settings: TrainSettings) -> TrainingEstimate:
        """Time and memory the training would take here (measured by earlier runs where there are some)."""
        from pipeline.base_model import is_micro, is_tiny

        embedded = "micro" if is_micro(self.base_model) else "tiny" if is_tiny(self.base_model) else None
        return estimate_training(settings, self.base_model, self.speeds, embedded=embedded)

    @property
    def _draft_path(self) -> Path:
        return self.data_dir / "settings_draft.json"

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
        from pipeline.base_model import default_train_settings

        return default_train_settings(self.base_model, **overrides)

    def start_training(self, settings: TrainSettings, *, classification: ClassificationResult | None = None,
                       anyway: bool = False, on_event: ev.EventCallback = ev.ignore) -> ModelRecord:
        """Classify (unless given), build the dataset into the model's folder, queue the training job.

        A set the classifier calls "not ready" (too few usable photos, two people mixed) is refused with the reason
        unless ``anyway``: a training on it costs the GPU time and rarely gives a likeness.
        """
        settings.validate()
        with self._start_lock:  # two quick Train clicks must not both pass the per-person limit
            return self._start_training(settings, classification, anyway, on_event)

    def _start_training(self, settings: TrainSettings, classification: ClassificationResult | None, anyway: bool,
                        on_event: ev.EventCallback) -> ModelRecord:
        self._check_training_limit()
        self._check_disk_quota()
        result = classification or self.classify(on_event=on_event)
        if not result.selected:
            raise ValueError(f"No usable photos to train on: {result.report.summary}")
        if result.report.readiness == "not_ready" and not anyway:
            raise NotReady(f"{result.report.summary} Fix the set on the Review tab (or `python -m pipeline classify`), "
                           "or train anyway if you know why: the checkbox under Train, --anyway on the command line.")
        record = self.library.create(settings.name, self.base_model, json.loads(to_json(settings)),
                                     trigger_word=settings.trigger_word)
        settings = dataclasses.replace(settings, trigger_word=record.trigger_word)
        folder = Path(record.folder)
        (folder / "classification.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
        (folder / "settings.json").write_text(to_json(settings))
        dataset = build_dataset(result, folder / "dataset", record.trigger_word, max(settings.resolutions),
                                captions=self.user_choices()["captions"], on_event=on_event)
        dataset.save(folder / "dataset")
        summary = {"photos_used": [item.source for item in dataset.items], "count": len(dataset),
                   "captioner": dataset.captioner, "report": result.to_dict()["report"]}
        record = self.library.update(record.id, dataset=summary, settings=json.loads(to_json(settings)))
        self._monitor(record.id).note(f"queued: {len(dataset)} photos, trigger word '{record.trigger_word}'")
        self.jobs.submit(record.id, {"settings": json.loads(to_json(settings)), "workspace": self.workspace})
        return record

    def resume_training(self, model_id: str) -> ModelRecord:
        """Queue a stopped or failed training again; it continues from its last checkpoint."""
        record = self.library.get(model_id)
        if record.status not in ("cancelled", "failed"):
            raise ValueError(f"model '{record.name}' is {record.status}: only a stopped or failed training resumes")
        if not (Path(record.folder) / "dataset" / "dataset.json").exists():
            raise ValueError(f"model '{record.name}' has no dataset to train on; start a new training instead")
        with self._start_lock:
            self._check_training_limit()
            record = self.library.update(model_id, status="queued", error="", finished_at=None)
            self._monitor(model_id).note("queued again: resuming from the last checkpoint", status="queued")
            self.jobs.submit(model_id, {"settings": record.settings, "workspace": self.workspace})
        return record

    def _check_training_limit(self) -> None:
        """Fair sharing of the queue: at most ``trainings_per_person`` of this workspace's trainings wait or run."""
        limit = self.settings.trainings_per_person
        if not limit:
            return
        mine = [job for job in self._my_jobs() if job.status in ("queued", "running")]
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
        waiting = [job for job in self._my_jobs() if job.model_id == model_id and job.status == "queued"]
        return self.jobs.position(waiting[0].id) if waiting else None

    def cancel_training(self, model_id: str) -> None:
        self.library.get(model_id)  # only this workspace's trainings: another's is "not found"
        for job in [job for job in self._my_jobs() if job.model_id == model_id]:
            if job.status in ("queued", "running") and self.jobs.cancel(job.id).status == "cancelled":
                # A queued job ends at once; a running one stops at its next step and reports itself.
                self.library.update(model_id, status="cancelled")

    def wait_for(self, model_id: str, timeout: float = 600.0, poll: float = 0.5) -> ModelRecord:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.library.get(model_id)
            if record.status in FINISHED_STATUSES:
                return record
            time.sleep(poll)
        raise TimeoutError(f"model {model_id} still {self.library.get(model_id).status} after {timeout:.0f} s")

    def _run_job(self, job: Job, should_stop: ev.StopCheck) -> None:
        """The training job: train (assessing checkpoints as they land) → pick the best → ready (+ e-mail)."""
        from pipeline.settings import from_dict
        from pipeline.training import train_lora

        record = self.library.get(job.model_id)
        folder = Path(record.folder)
        monitor = self._monitor(record.id)
        # Runs queued before finish_resolution existed trained at one size: keep them so (their crops are that size).
        settings = from_dict(TrainSettings, {"finish_resolution": 0, **job.payload["settings"]})
        dataset = Dataset.load(folder / "dataset")
        self._check_free_disk(record.id)
        self.library.update(record.id, status="training")
        monitor.note(f"training '{record.name}' on {self.base_model}: {settings.steps} steps at "
                     f"{' then '.join(str(r) for r in settings.resolutions)} px", status="training")
        try:
            # Assessed at the main resolution, not the finishing one: likeness is measured on the face, and 1024 px
            # test images have 4x the pixels to denoise at every checkpoint.
            assessor = _CheckpointAssessor(self, record, dataset, monitor, prompts=settings.test_prompts,
                                           resolution=settings.resolution)
            steps: list[ev.TrainStep] = []  # this session's steps, for the machine's speed record

            def on_event(event: ev.Event) -> None:
                if isinstance(event, ev.TrainStep):
                    steps.append(event)
                assessor.on_training_event(event)

            result = train_lora(dataset, settings, folder / "lora", base_model=self.base_model,
                                data_dir=self.shared_dir, on_event=on_event, should_stop=should_stop,
                                device=job.device or None)
            self._reload_generator_placed_for_less_memory()
            checkpoints = [{"step": c.step, "path": str(c.path)} for c in result.checkpoints]
            if result.status == "cancelled" and self.jobs.interrupting and not self.jobs.cancel_requested(job.id):
                # The app is shutting down: the job goes back to the queue and resumes from its last checkpoint.
                self.library.update(record.id, status="queued", checkpoints=checkpoints)
                monitor.note("interrupted by shutdown: will resume from the last checkpoint", status="queued")
                return
            if result.status != "completed":
                status = "cancelled" if result.status == "cancelled" else "failed"
                self._finish(record.id, status=status, error=result.error or status, checkpoints=checkpoints)
                return
            if steps and steps[0].step == 1:  # a resumed run's time covers only part of the steps
                per_step = sorted(s.seconds_per_step for s in steps)[len(steps) // 2]
                self.speeds.record(speed_key(self.base_model, device_name()[0], settings),
                                   Speed(per_step, result.seconds - per_step * len(steps)))
            self.library.update(record.id, status="assessing", lora_path=str(result.lora_path),
                                kohya_path=str(result.kohya_path) if result.kohya_path else None,
                                checkpoints=checkpoints)
            monitor.note("assessing: test generations, likeness and quality per checkpoint", status="assessing")
            self._finish(record.id, status="ready", **assessor.choose(result))
        except Exception as exc:  # the job must end with a reason the user can read, whatever failed
            logger.exception("training job %s failed", job.id)
            with contextlib.suppress(ModelNotFound):  # deleted while it trained: nothing left to mark
                self._finish(record.id, status="failed", error=f"{type(exc).__name__}: {exc}")
            raise

    def _check_free_disk(self, model_id: str) -> None:
        """Fail a training before it starts when the data dir's disk is nearly full (a full disk mid-run used to
        leave the model "training" for ever)."""
        import shutil

        from pipeline.base_model import is_embedded

        needed = self.settings.min_free_disk_gb or (0.2 if is_embedded(self.base_model) else 2.0)
        free = shutil.disk_usage(self.data_dir).free / 1e9
        if free < needed:
            message = (f"only {free:.2f} GB free on the disk holding the data dir, and a training needs about "
                       f"{needed:g} GB: free some space (delete old models on the Models tab), then press Resume")
            self._finish(model_id, status="failed", error=message)
            raise TrainingNotStarted(message)

    def _finish(self, model_id: str, *, status: str, **fields: Any) -> ModelRecord:
        # The library stamps finished_at for a finishing status, in its one timestamp format.
        record = self.library.update(model_id, status=status, **fields)
        self._monitor(model_id).note(f"{status}" + (f": {record.error}" if record.error else ""), status=status)
        if self.settings.smtp.enabled:
            from pipeline.notify import send_training_email

            try:
                grid = [Path(record.sample_grid)] if record.sample_grid else []
                send_training_email(self.settings.smtp, record, images=grid)
                self._monitor(model_id).note(f"e-mail sent to {self.settings.smtp.recipient}")
            except Exception as exc:  # a mail server problem must not turn a finished model into a failure
                logger.warning("could not send the e-mail: %s", exc)
                self._monitor(model_id).note(f"⚠ could not send the e-mail: {exc}")
        return record

    # -------------------------------------------------------------- generate
    def generator(self) -> Any:
        from pipeline.generation import Generator

        with self._generators.lock:
            if self.base_model not in self._generators.loaded:
                self._generators.loaded[self.base_model] = Generator(self.base_model, self.shared_dir)
            return self._generators.loaded[self.base_model]

    def _reload_generator_placed_for_less_memory(self) -> None:
        """A generator loaded while a training held the GPU was placed for the memory left then (fp8 or streamed);
        once training has handed the GPU back, let the next use place it again."""
        with self._generators.lock:
            generator = self._generators.loaded.get(self.base_model)
        if generator is not None and generator.could_place_better():
            logger.info("reloading the generator: it was placed (%s) while training used the GPU",
                        generator.placement_in_use)
            generator.unload()

    def test_generate_settings(self, resolution: int) -> GenerateSettings:
        from pipeline.base_model import default_test_generate_settings

        return default_test_generate_settings(self.base_model, resolution)

    def _lora(self, model_id: str | None) -> tuple[Path | None, str, str]:
        """(LoRA file, trigger word, label) for a library model; (None, "", "base model") for the bare base model."""
        if not model_id:
            return None, "", "base model"
        record = self.library.get(model_id)
        if not record.lora_path:
            raise ValueError(f"model '{record.name}' has no trained LoRA yet (status: {record.status})")
        return Path(record.lora_path), record.trigger_word, record.name

    def _render(self, model_id: str | None, settings: GenerateSettings, on_event: ev.EventCallback) -> list:
        from pipeline.trigger import insert_trigger

        settings.validate()
        self._check_disk_quota()  # every output is saved in the workspace
        lora_path, trigger, _label = self._lora(model_id)
        if lora_path is not None:
            settings = dataclasses.replace(settings, prompt=insert_trigger(settings.prompt, trigger))
        return self.generator().generate(settings, lora_path=lora_path, on_event=on_event)

    def generate(self, model_id: str | None, settings: GenerateSettings, *,
                 on_event: ev.EventCallback = ev.ignore) -> list[Path]:
        """Generate with a library model (or the bare base model) and save PNGs with their settings."""
        from pipeline.generation import save_png

        images = self._render(model_id, settings, on_event)
        out = self._new_output_path("generations", "")
        out.mkdir(parents=True)
        return [save_png(img, out / f"{i:02d}.png") for i, img in enumerate(images)]

    def compare(self, left: tuple[str | None, float], right: tuple[str | None, float], settings: GenerateSettings,
                *, on_event: ev.EventCallback = ev.ignore) -> Path:
        """The same prompt and seeds through two models, or one model at two LoRA scales, side by side."""
        from pipeline.generation import comparison_sheet, save_png

        sides, labels = [], []
        for model_id, scale in (left, right):
            sides.append(self._render(model_id, dataclasses.replace(settings, lora_scale=scale), on_event))
            labels.append(f"{self._lora(model_id)[2]} @ {scale:g}")
        out = self._new_output_path("generations", ".png")
        return save_png(comparison_sheet(sides[0], sides[1], (labels[0], labels[1])), out)

    def video(self, model_id: str | None, *, prompt: str, frames: int, fps: int, seed: int = 0,
              prompt_b: str | None = None, on_event: ev.EventCallback = ev.ignore) -> Path:
        from pipeline.trigger import insert_trigger
        from pipeline.video import make_video

        self._check_disk_quota()
        lora_path, trigger, _label = self._lora(model_id)
        if lora_path is not None:
            prompt = insert_trigger(prompt, trigger)
            prompt_b = insert_trigger(prompt_b, trigger) if prompt_b else None
        size = self.test_generate_settings(512)
        clip = VideoSettings(prompt=prompt, prompt_b=prompt_b or "", frames=frames, fps=fps, seed_a=seed,
                             seed_b=seed + 1, width=size.width, height=size.height, steps=size.steps)
        return make_video(self.generator(), clip, lora_path=lora_path, out_path=self._new_output_path("videos", ".mp4"),
                          on_event=on_event)

    def _new_output_path(self, kind: str, suffix: str) -> Path:
        """A fresh, time-sorted path under data_dir/kind: two requests in the same second never collide."""
        folder = self.data_dir / kind
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}{suffix}"

    # --------------------------------------------------------------- library
    def delete_model(self, model_id: str) -> None:
        self.cancel_training(model_id)  # raises ModelNotFound for a model that is not in this workspace
        self.library.delete(model_id, force=True)
        self._monitors.pop(model_id, None)

    def close(self) -> None:
        self.jobs.stop()


class _CheckpointAssessor:
    """Measures each checkpoint as training saves it (the live likeness curve), then picks the best one.

    Live measurement runs where a second copy of the base model fits beside training (the embedded tiny and micro
    models, or a GPU with LIVE_MIN_FREE_GB free); elsewhere the checkpoints are measured once training has freed its
    memory.
    """

    # Free GPU memory (GB) beside a running training above which a second copy of FLUX.1-dev for test generations
    # fits (bf16 transformer ~24 GB + T5 ~10 GB + headroom).
    LIVE_MIN_FREE_GB = 40.0

    def __init__(self, workflow: Workflow, record: ModelRecord, dataset: Dataset, monitor: TrainingMonitor,
                 prompts: Sequence[str] = (), resolution: int | None = None) -> None:
        from pipeline.assessment import DEFAULT_TEST_PROMPTS, AssessmentPlan, reference_embeddings
        from pipeline.base_model import is_embedded

        self.workflow = workflow
        self.record = record
        self.monitor = monitor
        images = [item.image for item in dataset.items]
        self.plan = AssessmentPlan(
            trigger_word=record.trigger_word, reference=reference_embeddings(images),
            prompts=tuple(prompts) or DEFAULT_TEST_PROMPTS, reference_images=images,
            settings=workflow.test_generate_settings(resolution or dataset.resolution)).validate()
        self.out_dir = Path(record.folder) / "assessment"
        self.embedded = is_embedded(workflow.base_model)
        self.results: dict[int, Any] = {}
        self.checkpoint_paths: dict[int, Path] = {}

    def _live(self) -> bool:
        if self.embedded:
            return True
        from pipeline.memory import free_gpu_gb

        free = free_gpu_gb(self.workflow.generator().device)  # room for test generations beside the training
        return free is not None and free >= self.LIVE_MIN_FREE_GB

    def on_training_event(self, event: ev.Event) -> None:
        self.monitor.on_event(event)
        if isinstance(event, ev.CheckpointSaved) and self._live():
            from pipeline.assessment import assess_lora

            result = assess_lora(self.workflow.generator(), event.path, self.plan,
                                 out_dir=self.out_dir / f"step_{event.step:06d}")
            self.results[event.step] = result
            self.checkpoint_paths[event.step] = Path(event.path)
            self.monitor.on_assessment(event.step, result.likeness, result.overall)
            self._prune()

    def _prune(self) -> None:
        """Test images of checkpoints that training has already deleted (it keeps ``keep_checkpoints``) go too:
        they could never be chosen, and a long run would otherwise leave one folder of images per checkpoint. Their
        scores stay in the training log and the likeness curve."""
        import shutil

        for step, path in list(self.checkpoint_paths.items()):
            if not path.exists():
                shutil.rmtree(self.out_dir / f"step_{step:06d}", ignore_errors=True)
                del self.checkpoint_paths[step]
                self.results.pop(step, None)

    def choose(self, result: Any) -> dict[str, Any]:
        """Assess what is not measured yet, choose the best checkpoint and scale: the library fields to set."""
        from pipeline.assessment import assess_checkpoints

        # Checkpoints by step; the final LoRA stands for the last step (it carries the full metadata).
        by_step = {c.step: Path(c.path) for c in result.checkpoints}
        by_step[result.steps_done] = Path(result.lora_path)
        steps = sorted(by_step.items())
        best_step, best_scale, results = assess_checkpoints(
            self.workflow.generator(), steps, self.plan, out_dir=self.out_dir, on_event=self.monitor.on_event,
            known=self.results)
        for step, measured in sorted(results.items()):
            if step not in self.results:
                self.monitor.on_assessment(step, measured.likeness, measured.overall)
        best = results[best_step]
        scores = {"overall": best.overall, "likeness": best.likeness, "recognised_share": best.recognised_share,
                  "quality": best.quality, "prompt_fidelity": best.prompt_fidelity, "fidelity_note": best.fidelity_note,
                  "parts": best.parts,
                  "verdict": best.verdict, "verdict_text": best.verdict_text,
                  "by_checkpoint": {str(s): r.overall for s, r in sorted(results.items())},
                  "likeness_by_checkpoint": {str(s): r.likeness for s, r in sorted(results.items())}}
        checkpoints = [{"step": s, "path": str(p), "scores": {"overall": results[s].overall,
                                                               "likeness": results[s].likeness}}
                       for s, p in steps if s in results]
        self.monitor.note(f"best checkpoint: step {best_step} at LoRA scale {best_scale:g} — {best.verdict_text}")
        chosen = {"scores": scores, "checkpoints": checkpoints, "best_checkpoint_step": best_step,
                  "best_lora_scale": best_scale, "lora_path": str(by_step[best_step]),
                  "sample_grid": str(best.grid) if best.grid else None}
        if best_step != result.steps_done:
            # The download must carry the chosen checkpoint in both formats, not the last step's kohya file.
            from pipeline.lora_formats import convert_to_kohya

            best_kohya = Path(result.lora_path).with_name("lora_best_kohya.safetensors")
            chosen["kohya_path"] = str(convert_to_kohya(by_step[best_step], best_kohya))
        return chosen

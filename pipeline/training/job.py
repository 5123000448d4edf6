"""One training job, from its spec to a ready (or failed) model: train, measure each checkpoint, keep the best.

``TrainingJobSpec`` is everything a worker needs to run the job, written once when the job is queued (in the job
queue and as ``job.json`` in the model's folder) and versioned, so a job queued by an older version still runs.
``TrainingRunner`` runs a spec with the dependencies it is given — the library, the generators, a notifier, a
monitor per model — and knows nothing of workspaces or the web page. ``TrainingMonitor`` keeps what a run reported
(log, loss, samples, checkpoints, assessments) for the UI, the CLI and the tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipeline import events as ev
from pipeline.assessment.scores import ModelScores
from pipeline.intake.dataset import Dataset
from pipeline.jobs.queue import JobInterrupted
from pipeline.library.catalog import Library, ModelNotFound, ModelRecord
from pipeline.settings import SettingsError, TrainSettings, from_dict, to_json
from pipeline.status import Status
from pipeline.storage.disk import DiskQuota, as_os_error, disk_error_text, free_mb, is_disk_error
from pipeline.training.estimate import Speed, SpeedLog, device_name, speed_key

if TYPE_CHECKING:
    from pipeline.assessment.assess import AssessmentResult
    from pipeline.generation.generator import Generator
    from pipeline.generation.generators import Generators
    from pipeline.settings import GenerateSettings
    from pipeline.training.trainer import TrainResult

logger = logging.getLogger(__name__)

SPEC_VERSION = 1
SPEC_FILE = "job.json"
Notifier = Callable[[ModelRecord], str]  # tells the person a training ended; returns what it did ("e-mail sent to …")


def _follows_a_write(event: ev.Event) -> bool:
    """Events that follow files written into the model's folder (checkpoints, samples, each test image and a
    checkpoint's grid): the disk quota is measured after each."""
    return isinstance(event, ev.CheckpointSaved | ev.SampleImages | ev.CheckpointAssessed) or (
        isinstance(event, ev.Progress) and event.stage == "assess")


class TrainingNotStarted(RuntimeError):
    """A queued training could not start (e.g. no disk space); the model is marked failed with the reason."""


class TrainingFailed(RuntimeError):
    """A training ended failed (the model is marked so, with the reason): raised so the job queue records it failed
    too, not done."""


@dataclass(frozen=True)
class TrainingJobSpec:
    """What to train: the model it fills, whose it is, on which base, with which settings and photos."""

    model_id: str
    workspace: str
    base_model: str
    settings: TrainSettings
    dataset: str = "dataset"  # the dataset's folder, relative to the model's folder (the data dir may move)
    version: int = SPEC_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as the queue and ``job.json`` keep it."""
        return {"version": self.version, "model_id": self.model_id, "workspace": self.workspace,
                "base_model": self.base_model, "settings": json.loads(to_json(self.settings)),
                "dataset": self.dataset}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, model_id: str = "", base_model: str = "",
                  workspace: str = "") -> TrainingJobSpec:
        """From the JSON form of any version. Version 0 (a job payload before specs existed) held only the settings
        and the workspace: the model and base model then come from the job and its library record."""
        version = int(data.get("version", 0))
        if version > SPEC_VERSION:
            raise ValueError(f"this training job was written by a newer Likeness (spec version {version}; this one "
                             f"reads up to {SPEC_VERSION}): update the app to run it")
        settings = dict(data["settings"])
        if version == 0:
            # Runs queued before finish_resolution existed trained at one size: keep them so (their crops are too).
            settings = {"finish_resolution": 0, **settings}
        return cls(model_id=data.get("model_id") or model_id, workspace=data.get("workspace") or workspace,
                   base_model=data.get("base_model") or base_model, settings=from_dict(TrainSettings, settings),
                   dataset=data.get("dataset", "dataset"))

    def save(self, model_folder: Path) -> Path:
        path = Path(model_folder) / SPEC_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, model_folder: Path, **defaults: str) -> TrainingJobSpec | None:
        """The spec saved in a model's folder; None for a model made before specs were saved."""
        path = Path(model_folder) / SPEC_FILE
        return cls.from_dict(json.loads(path.read_text()), **defaults) if path.is_file() else None


@dataclass
class TrainingMonitor:
    """What a training run has reported so far: the UI renders it, the job fills it.

    Every entry is also appended to a journal (``training_log.jsonl`` in the model's folder), so the log, the loss
    curve and the samples are still there after the app restarts.
    """

    model_id: str
    journal: Path | None = None
    status: Status = Status.QUEUED
    log: list[str] = field(default_factory=list)
    losses: list[tuple[int, float, float]] = field(default_factory=list)  # (step, raw, smoothed)
    last_step: ev.TrainStep | None = None
    samples: list[tuple[int, Path, str]] = field(default_factory=list)  # (step, image, prompt)
    checkpoints: list[int] = field(default_factory=list)
    assessments: list[tuple[int, float, float]] = field(default_factory=list)  # (step, likeness 0–1, overall 0–100)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    journal_failing: bool = field(default=False, repr=False)  # the last journal write failed (warned once)
    # When ``last_step`` came, by ``clock``: the final assessment sends no steps, so its ETA counts down from the last
    # step's (None once replayed from the journal, which keeps no clock).
    step_at: float | None = None
    assessing: ev.Progress | None = None  # the latest test image of the assessment
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

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
            self.last_step, self.step_at = event, self.clock()
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
        elif isinstance(event, ev.CheckpointAssessed):
            self._add({"kind": "assessment", "step": event.step, "likeness": event.likeness,
                       "overall": event.overall})
            self._add({"kind": "log", "text": f"step {event.step}: likeness {event.likeness:.0%}, overall score "
                                              f"{event.overall:.0f}/100"})
        elif isinstance(event, ev.Progress):
            if event.stage == "assess":
                self.assessing = event
            count = f"{event.done}/{event.total}" if event.total else ""
            text = (f"[{event.stage}] {event.message} ({count})" if event.message and count
                    else f"[{event.stage}] {event.message or count}")
            self._add({"kind": "log", "text": text})
        elif isinstance(event, ev.Message):
            self._add({"kind": "log", "text": ("⚠ " if event.level != "info" else "") + event.text})

    def time_left(self) -> float | None:
        """Seconds to a ready model: the last step's ETA counted down since it came, so the figure keeps moving through
        the final assessment (minutes with no step); None before the first step. 0 when it runs over."""
        if self.last_step is None:
            return None
        if self.step_at is None:
            return self.last_step.eta_seconds
        return max(0.0, self.last_step.eta_seconds - (self.clock() - self.step_at))

    def note(self, text: str, status: Status | None = None) -> None:
        self._add({"kind": "log", "text": text})
        if status:
            self.status = status
            if status == Status.ASSESSING:  # the live checkpoint tests' last image is not the final assessment's
                self.assessing = None

    def _add(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self._apply(entry)
            if self.journal is not None:
                try:
                    with self.journal.open("a") as f:
                        f.write(json.dumps(entry) + "\n")
                except OSError as exc:  # the run goes on either way
                    if not self.journal.parent.is_dir():  # the model was deleted while it trained
                        self.journal = None
                    elif not self.journal_failing:  # a full disk: these lines are lost, later ones written once
                        logger.warning("cannot write %s: %s", self.journal, exc)  # there is room (after Resume)
                    self.journal_failing = True
                else:
                    self.journal_failing = False

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


@dataclass(frozen=True)
class CheckpointChoice:
    """The checkpoint the measurements chose, as the library records it."""

    scores: ModelScores
    checkpoints: tuple[dict, ...]  # {"step", "path", "scores": {"overall", "likeness"}} per measured checkpoint
    best_checkpoint_step: int
    best_lora_scale: float
    lora_path: Path
    kohya_path: Path | None  # None: the last step's kohya file stands (the best checkpoint is the last step)
    sample_grid: Path | None

    def library_fields(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self) | {"scores": self.scores}
        if self.kohya_path is None:
            del fields["kohya_path"]
        return fields


class CheckpointAssessor:
    """Measures each checkpoint as training saves it (the live likeness curve), then picks the best one.

    Live measurement runs where a second copy of the base model fits beside training (the embedded tiny and micro
    models, or a GPU with LIVE_MIN_FREE_GB free); elsewhere the checkpoints are measured once training has freed its
    memory.
    """

    # Free GPU memory (GB) beside a running training above which a second copy of FLUX.1-dev for test generations
    # fits (bf16 transformer ~24 GB + T5 ~10 GB + headroom).
    LIVE_MIN_FREE_GB = 40.0

    def __init__(self, generator: Callable[[], Generator], *, trigger_word: str, dataset: Dataset,
                 settings: GenerateSettings, out_dir: Path, embedded: bool, on_event: ev.EventCallback,
                 prompts: Sequence[str] = (), should_stop: ev.StopCheck = ev.never) -> None:
        from pipeline.assessment.assess import DEFAULT_TEST_PROMPTS, AssessmentPlan, reference_embeddings
        from pipeline.assessment.likeness import save_person, workspace_people
        from pipeline.intake.identity import person_consensus
        from pipeline.settings import ClassifySettings

        self.generator = generator
        self.on_event = on_event
        self.should_stop = should_stop  # checked between any two test images, and inside each one's denoising
        images = [item.image for item in dataset.items]
        self.out_dir = Path(out_dir)
        reference = reference_embeddings(images)
        # Judged against the workspace's other people as well as the cohort; this person is kept for the next ones.
        model_folder = self.out_dir.parent
        others = workspace_people(model_folder.parent, exclude=model_folder)
        save_person(model_folder, person_consensus(list(reference), ClassifySettings().identity_threshold),
                    trigger_word)
        self.plan = AssessmentPlan(
            trigger_word=trigger_word, reference=reference, others=tuple(others),
            prompts=tuple(prompts) or DEFAULT_TEST_PROMPTS, reference_images=images, settings=settings).validate()
        self.embedded = embedded
        self.results: dict[int, AssessmentResult] = {}
        self.checkpoint_paths: dict[int, Path] = {}

    def _live(self) -> bool:
        if self.embedded:
            return True
        from pipeline.models.memory import free_gpu_gb

        free = free_gpu_gb(self.generator().device)  # room for test generations beside the training
        return free is not None and free >= self.LIVE_MIN_FREE_GB

    def on_training_event(self, event: ev.Event) -> None:
        self.on_event(event)
        if isinstance(event, ev.CheckpointSaved) and not self.should_stop() and self._live():
            from pipeline.assessment.assess import AssessmentError, assess_lora

            try:
                result = assess_lora(self.generator(), event.path, self.plan,
                                     out_dir=self.out_dir / f"step_{event.step:06d}", on_event=self._progress,
                                     should_stop=self.should_stop)
            except AssessmentError:
                if self.should_stop():  # stopped before its first test image: the training stops at its next step
                    return
                raise
            if self.should_stop():  # stopped part-way: a score of some of the prompts is not this checkpoint's
                return
            self.results[event.step] = result
            self.checkpoint_paths[event.step] = Path(event.path)
            self.on_event(ev.CheckpointAssessed(event.step, result.likeness, result.overall))
            self._prune()

    def _progress(self, event: ev.Event) -> None:
        # Each test image's progress line (the log shows the assessment is under way); its summary line is left out:
        # CheckpointAssessed says the same once it is recorded.
        if isinstance(event, ev.Progress):
            self.on_event(event)

    def _prune(self) -> None:
        """Test images of checkpoints that training has already deleted (it keeps ``keep_checkpoints``) go too:
        they could never be chosen, and a long run would otherwise leave one folder of images per checkpoint. Their
        scores stay in the training log and the likeness curve."""
        for step, path in list(self.checkpoint_paths.items()):
            if not path.exists():
                shutil.rmtree(self.out_dir / f"step_{step:06d}", ignore_errors=True)
                del self.checkpoint_paths[step]
                self.results.pop(step, None)

    def choose(self, result: TrainResult) -> CheckpointChoice | None:
        """Assess what is not measured yet, then choose the best checkpoint and LoRA scale; None when ``should_stop``
        ended the assessment first (a choice among some checkpoints, or of some prompts, is no choice)."""
        from pipeline.assessment.assess import AssessmentError, assess_checkpoints

        # Checkpoints by step; the final LoRA stands for the last step (it carries the full metadata).
        by_step = {c.step: Path(c.path) for c in result.checkpoints}
        by_step[result.steps_done] = Path(result.lora_path)
        steps = sorted(by_step.items())
        try:
            best_step, best_scale, results = assess_checkpoints(
                self.generator(), steps, self.plan, out_dir=self.out_dir, on_event=self.on_event, known=self.results,
                should_stop=self.should_stop)
        except AssessmentError:
            if self.should_stop():  # stopped before a checkpoint's first test image
                return None
            raise
        if self.should_stop():
            return None
        for step, measured in sorted(results.items()):
            if step not in self.results:
                self.on_event(ev.CheckpointAssessed(step, measured.likeness, measured.overall))
        best = results[best_step]
        checkpoints = tuple({"step": s, "path": str(p), "scores": {"overall": results[s].overall,
                                                                   "likeness": results[s].likeness}}
                            for s, p in steps if s in results)
        self.on_event(ev.Message(f"best checkpoint: step {best_step} at LoRA scale {best_scale:g} — "
                                 f"{best.verdict_text}"))
        kohya = None
        if best_step != result.steps_done:
            # The download must carry the chosen checkpoint in both formats, not the last step's kohya file.
            from pipeline.models.base_info import family_trained_on
            from pipeline.models.lora_formats import convert_to_kohya, read_metadata

            # In the kohya names of the family the header records (its base's name can be a relative folder).
            kohya = convert_to_kohya(by_step[best_step],
                                     Path(result.lora_path).with_name("lora_best_kohya.safetensors"),
                                     family_trained_on(read_metadata(by_step[best_step])).kohya_layout())
        return CheckpointChoice(scores=ModelScores.from_assessment(best, results), checkpoints=checkpoints,
                                best_checkpoint_step=best_step, best_lora_scale=best_scale,
                                lora_path=by_step[best_step], kohya_path=kohya, sample_grid=best.grid)


@dataclass(frozen=True)
class JobOutcome:
    """What the compute of a job returns to the app: the training's result and, when it completed, the choice."""

    result: TrainResult
    choice: CheckpointChoice | None = None


class WorkerLost(JobInterrupted):
    """The process or machine running a job went away mid-run; the job goes back to the queue and resumes from
    its last checkpoint."""


def train_and_choose(spec: TrainingJobSpec, model_folder: Path, shared_dir: Path, generators: Generators, *,
                     device: str | None, on_event: ev.EventCallback, should_stop: ev.StopCheck) -> JobOutcome:
    """A job's compute, wherever it runs (in the app, or on a Ray worker that sees the same data dir): train,
    measuring each checkpoint as it lands, then choose the best. Touches no library: the app records the outcome."""
    from pipeline.models.base_model import default_test_generate_settings, is_embedded
    from pipeline.training.trainer import train_lora

    settings = spec.settings
    dataset = Dataset.load(Path(model_folder) / spec.dataset)
    # Assessed at the main resolution, not the finishing one: likeness is measured on the face, and 1024 px test
    # images have 4x the pixels to denoise at every checkpoint.
    assessor = CheckpointAssessor(
        lambda: generators.get(spec.base_model), trigger_word=settings.trigger_word, dataset=dataset,
        settings=default_test_generate_settings(spec.base_model, settings.resolution),
        out_dir=Path(model_folder) / "assessment", embedded=is_embedded(spec.base_model), on_event=on_event,
        prompts=settings.test_prompts, should_stop=should_stop)
    result = train_lora(dataset, settings, Path(model_folder) / "lora", base_model=spec.base_model,
                        data_dir=shared_dir, on_event=assessor.on_training_event, should_stop=should_stop,
                        device=device)
    generators.place_again_when_better(spec.base_model)
    if result.status == Status.COMPLETED and should_stop():  # stopped as the last step ended
        return JobOutcome(dataclasses.replace(result, status=Status.CANCELLED))
    if result.status != Status.COMPLETED:
        return JobOutcome(result)
    on_event(ev.AssessmentStarted(result.lora_path, result.kohya_path,
                                  tuple(ev.CheckpointSaved(c.step, c.path) for c in result.checkpoints)))
    choice = assessor.choose(result)
    if choice is None:  # stopped during the assessment: Resume measures the checkpoints again
        return JobOutcome(dataclasses.replace(result, status=Status.CANCELLED))
    return JobOutcome(result, choice)


@dataclass(frozen=True)
class NodeView:
    node_id: str
    address: str
    alive: bool
    cpus: float
    gpus: float


@dataclass(frozen=True)
class ClusterView:
    """What the Training tab shows of the cluster."""

    address: str
    nodes: tuple[NodeView, ...]

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes if n.alive)

    @property
    def cpus(self) -> float:
        return sum(n.cpus for n in self.nodes if n.alive)


Placement = Callable[[Mapping[str, Any]], None]  # where a job runs: {"node", "task", "pid"} on a cluster


class Executor(Protocol):
    """Where a job's compute runs: this process (``LocalExecutor``) or a cluster (``pipeline.training.ray_cluster``)."""

    local: bool  # runs on this machine's devices (its speeds are this machine's)

    def slots(self) -> tuple[str, ...] | None:
        """The job queue's worker slots (None: one per local device)."""

    def run(self, spec: TrainingJobSpec, model_folder: Path, *, device: str | None, on_event: ev.EventCallback,
            should_stop: ev.StopCheck, on_placed: Placement) -> JobOutcome:
        """Run the compute; raises WorkerLost when whatever ran it went away."""

    def close(self) -> None:
        """Let go of what the executor holds (a cluster connection)."""

    def view(self) -> ClusterView | None:
        """The cluster's nodes, for the Training tab; None when trainings run in this process."""


@dataclass
class LocalExecutor:
    """The embedded default: the job's compute runs in the queue's worker thread, on its device."""

    generators: Generators
    shared_dir: Path
    local: bool = True

    def slots(self) -> tuple[str, ...] | None:
        return None

    def run(self, spec: TrainingJobSpec, model_folder: Path, *, device: str | None, on_event: ev.EventCallback,
            should_stop: ev.StopCheck, on_placed: Placement) -> JobOutcome:
        return train_and_choose(spec, model_folder, self.shared_dir, self.generators, device=device,
                                on_event=on_event, should_stop=should_stop)

    def close(self) -> None:
        pass

    def view(self) -> ClusterView | None:
        return None


@dataclass
class TrainingRunner:
    """Runs training jobs against one library: the job's compute on the executor, its bookkeeping here."""

    library: Library
    executor: Executor
    monitor: Callable[[str], TrainingMonitor]  # the monitor of a model id
    speeds: SpeedLog  # the machine's measured speeds, for the estimate
    notify: Notifier | None = None
    min_free_disk_gb: float = 0.0  # 0: by the base model (0.2 GB embedded, 2 GB otherwise)
    disk_quota_gb: float = 0.0  # the person's disk quota (0: none), measured as the training writes its files

    def run(self, spec: TrainingJobSpec, *, device: str | None, should_stop: ev.StopCheck,
            shutting_down: Callable[[], bool], on_placed: Placement = lambda _place: None,
            last_attempt: bool = False) -> None:
        """Train → measure each checkpoint → keep the best → ready (and tell the person).

        ``should_stop`` ends the run at its next step, or its next test image while a checkpoint is assessed;
        ``shutting_down()`` then says whether the app is stopping (the job goes back to the queue and resumes later)
        rather than the person cancelling. A lost worker sends the job back to the queue too, unless this was its
        ``last_attempt``. The person's disk quota, measured after each file the run writes, stops it as failed with
        the reason; any failure raises once the model is marked, so the queue records the job failed as well.
        """
        record = self.library.get(spec.model_id)
        monitor = self.monitor(record.id)
        settings = spec.settings
        self._check_settings(record.id, settings)
        self._check_free_disk(record.id, spec.base_model)
        quota = DiskQuota(self.library.data_dir, int(self.disk_quota_gb * 1e9))

        def stop() -> bool:
            return bool(quota.reason) or should_stop()

        self.library.update(record.id, status=Status.TRAINING)
        monitor.note(f"training '{record.name}' on {spec.base_model}: {settings.steps} steps at "
                     f"{' then '.join(str(r) for r in settings.resolutions)} px", status=Status.TRAINING)
        steps: list[ev.TrainStep] = []  # this session's steps, for the machine's speed record

        def on_event(event: ev.Event) -> None:
            if isinstance(event, ev.AssessmentStarted):
                self.library.update(record.id, status=Status.ASSESSING, lora_path=event.lora_path,
                                    kohya_path=event.kohya_path,
                                    checkpoints=[{"step": c.step, "path": str(c.path)} for c in event.checkpoints])
                monitor.note("assessing: test generations, likeness and quality per checkpoint",
                             status=Status.ASSESSING)
                return
            if isinstance(event, ev.TrainStep):
                steps.append(event)
            monitor.on_event(event)
            if _follows_a_write(event) and not quota.reason and quota.check():
                monitor.note(f"⚠ {quota.reason}")

        try:
            outcome = self.executor.run(spec, Path(record.folder), device=device, on_event=on_event,
                                        should_stop=stop, on_placed=on_placed)
        except WorkerLost as exc:
            with contextlib.suppress(ModelNotFound):
                if should_stop() and not shutting_down():  # the person had pressed Stop: it stays stopped
                    self._finish(record.id, status=Status.CANCELLED, error=f"stopped ({exc})")
                    return
                if last_attempt:
                    self._finish(record.id, status=Status.FAILED, error=f"{exc}, again: press Resume to try once more")
                    raise RuntimeError(str(exc)) from exc
                self.library.update(record.id, status=Status.QUEUED)
                monitor.note(f"⚠ {exc}: the training goes back to the queue and resumes from its last checkpoint",
                             status=Status.QUEUED)
            raise
        except Exception as exc:  # the job must end with a reason the user can read, whatever failed
            with contextlib.suppress(ModelNotFound):  # deleted while it trained: nothing left to mark
                if shutting_down():  # e.g. the cluster connection closed under it: it resumes at the next start
                    self.library.update(record.id, status=Status.QUEUED)
                    monitor.note(f"interrupted by shutdown ({type(exc).__name__}): will resume from the last "
                                 "checkpoint", status=Status.QUEUED)
                    raise JobInterrupted(str(exc)) from exc
                logger.exception("training of model %s failed", spec.model_id)
                error = (self._disk_text(as_os_error(exc), spec.base_model) if is_disk_error(exc)
                         else f"{type(exc).__name__}: {exc}")
                self._finish(record.id, status=Status.FAILED, error=error)
            raise
        result = outcome.result
        checkpoints = [{"step": c.step, "path": str(c.path)} for c in result.checkpoints]
        if result.status == Status.CANCELLED and shutting_down():
            # The app is shutting down: the job goes back to the queue and resumes from its last checkpoint.
            self.library.update(record.id, status=Status.QUEUED, checkpoints=checkpoints)
            monitor.note("interrupted by shutdown: will resume from the last checkpoint", status=Status.QUEUED)
            return
        if quota.reason and outcome.choice is None:  # the quota stopped it: not the person, so not "stopped"
            self._finish(record.id, status=Status.FAILED, error=quota.reason, checkpoints=checkpoints)
            raise TrainingFailed(quota.reason)
        if outcome.choice is None:
            error = result.error or result.status
            if result.status == Status.FAILED:
                error = self._readable_failure(error, spec.base_model)
            self._finish(record.id, status=result.status, error=error, checkpoints=checkpoints)
            if result.status == Status.FAILED:
                raise TrainingFailed(error)
            return
        if steps and steps[0].step == 1 and self.executor.local:  # a resumed run's time covers only part of the steps
            per_step = sorted(s.seconds_per_step for s in steps)[len(steps) // 2]
            self.speeds.record(speed_key(spec.base_model, device_name()[0], settings),
                               Speed(per_step, result.seconds - per_step * len(steps)))
        self._finish(record.id, status=Status.READY, **outcome.choice.library_fields())

    def _check_settings(self, model_id: str, settings: TrainSettings) -> None:
        """A job queued before a setting had its limit (10 000 test prompts) fails at once with the field named,
        instead of holding the only slot for hours after every restart."""
        try:
            settings.validate()
        except SettingsError as exc:
            message = f"{exc}: start a new training with settings inside the limits"
            self._finish(model_id, status=Status.FAILED, error=message)
            raise TrainingNotStarted(message) from exc

    def _needed_gb(self, base_model: str) -> float:
        from pipeline.models.base_model import is_embedded

        return self.min_free_disk_gb or (0.2 if is_embedded(base_model) else 2.0)

    def _disk_text(self, exc: OSError, base_model: str) -> str:
        return disk_error_text(exc, self.library.data_dir, "go on with the training",
                               needed_gb=self._needed_gb(base_model), then="press Resume")

    def _readable_failure(self, error: str, base_model: str) -> str:
        """The trainer's reason, said as a disk problem where it was one: its text names an errno of a write the
        disk refused, or the disk is nearly full now (torch's own writer says only "file write failed")."""
        if is_disk_error(error):
            return self._disk_text(as_os_error(error), base_model)
        if free_mb(self.library.data_dir) < self._needed_gb(base_model) * 1e3:
            return f"{self._disk_text(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), base_model)} ({error})"
        return error

    def _check_free_disk(self, model_id: str, base_model: str) -> None:
        """Fail a training before it starts when the data dir's disk is nearly full (a full disk mid-run used to
        leave the model "training" for ever)."""
        needed = self._needed_gb(base_model)
        free = shutil.disk_usage(self.library.data_dir).free / 1e9
        if free < needed:
            message = (f"only {free:.2f} GB free on the disk holding the data dir, and a training needs about "
                       f"{needed:g} GB: free some space (delete old models on the Models tab), then press Resume")
            self._finish(model_id, status=Status.FAILED, error=message)
            raise TrainingNotStarted(message)

    def _finish(self, model_id: str, *, status: Status, **fields: Any) -> ModelRecord:
        # The library stamps finished_at for a finishing status, in its one timestamp format. An end the disk refuses
        # stays in the library's memory (shown as it is, saved once there is room): never "training" for ever.
        record = self.library.record_end(model_id, status=status, **fields)
        monitor = self.monitor(model_id)
        monitor.note(f"{status}" + (f": {record.error}" if record.error else ""), status=status)
        if model_id in self.library.unsaved_ends:
            monitor.note(f"⚠ the disk did not take this end ({free_mb(self.library.data_dir):.0f} MB free): the app "
                         "keeps it in memory and saves it once there is room; free some space before pressing Resume")
        if self.notify is not None:
            try:
                monitor.note(self.notify(record))
            except Exception as exc:  # a mail server problem must not turn a finished model into a failure
                logger.warning("could not send the e-mail: %s", exc)
                monitor.note(f"⚠ could not send the e-mail: {exc}")
        return record

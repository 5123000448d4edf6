"""How long a training will take and how much memory it needs, said before it starts (the Settings tab), and how
long it still takes while it runs (the live ETA).

Time is everything the person waits for between Train and a ready model, part by part (:class:`RunParts`): the
queue ahead, loading, the steps, the sample images, each checkpoint's test generations, and the final assessment
with its LoRA-scale trials. The parts' unit costs come from this machine where it has trained the same way before
(the training measures its loading, samples and checkpoints as it runs and notes them when its last step ends; the
runner's record, made once the model is chosen, adds the final assessment's time and the median step: all in the
shared data dir), else from the project's bench figures, and say which. Memory is pipeline.models.memory's first-order
estimate for FLUX.1-dev, the bench's peak for the embedded models.

The live ETA (:class:`LiveEta`) is the time to a ready model from the run's own measurements, smoothed so that it
moves like a countdown: a busy spell on a shared machine used to swing it between 6 and 17 minutes (issue 33).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

from pipeline.events import duration_text
from pipeline.models.families import BaseVariant, FamilyId, families, sized_variant
from pipeline.models.families.flux1 import FLUX1_DEV
from pipeline.settings import TrainSettings

logger = logging.getLogger(__name__)

SPEED_FILE = "training_speed.json"
# Wall seconds per step where this machine has not trained yet (bench/results): the embedded models on the 2-core
# CPU (tiny: bench/train.py; micro: bench/micro_likeness.py at 96 px, 0.24–0.30 s/step with the checks at each
# checkpoint through peft's LoRA layers, times 0.73 with the merged-weight ones: bench/merged_lora.py), and
# FLUX.1-dev on an H100 by memory mode at 512 and 1024 px (bench/results/train_gpu_h100*.json); other hub models are
# scaled from these by their step's FLOPs, and sized for memory by their own transformer (families' TrainingCost).
REFERENCE = {
    "tiny": 0.05,
    "micro": 0.2,
    ("bf16", 512): 0.37, ("bf16", 1024): 0.64,
    ("fp8", 512): 0.66, ("fp8", 1024): 1.13,
    ("nf4", 512): 0.9, ("nf4", 1024): 1.5,  # not measured (no bitsandbytes on the device): fp8's, plus dequantising
    ("offload", 512): 1.83, ("offload", 1024): 1.95,
}
EMBEDDED_MEMORY_GB = 1.0  # peak host RAM of a training on the embedded models (bench/train.py: 0.91 GB)
DEFAULT_TEST_PROMPT_COUNT = 8  # len(pipeline.generation.generator.DEFAULT_TEST_PROMPTS), without importing torch here
PENDING = "pending"  # the speed file's entry for trainings whose steps ended and whose assessment runs now
PENDING_MAX_AGE_S = 24 * 3600  # a note older than this belonged to a run that never reached the record


@dataclass(frozen=True)
class RunTimes:
    """The unit costs of one training, as a finished run measured them (seconds of wall time)."""

    seconds_per_step: float  # the median step
    preparing: float = 0.0  # Train pressed (the photos already classified) → queued: the dataset's crops and captions
    loading: float = 0.0  # the training's start to its first step: models, caches, LoRA layers
    sample_round: float = 0.0  # one round of sample images (one per sample prompt)
    checkpoint: float = 0.0  # one checkpoint: saved, and its test generations where they run beside the training
    final: float = 0.0  # after the last step: the checkpoints not measured yet, the LoRA-scale trials, the choice
    test_prompts: int = DEFAULT_TEST_PROMPT_COUNT  # the checkpoint's and final part's test images are one per prompt

    def for_prompts(self, count: int) -> RunTimes:
        """The costs with ``count`` test prompts: a checkpoint's and the final assessment's time is its images'."""
        ratio = max(1, count) / max(1, self.test_prompts)
        return dataclasses.replace(self, checkpoint=self.checkpoint * ratio, final=self.final * ratio,
                                   test_prompts=max(1, count))


def assessment_prompts(settings: TrainSettings) -> int:
    """The test images per checkpoint: one per test prompt (the built-in set where none are given)."""
    return len(settings.test_prompts) or DEFAULT_TEST_PROMPT_COUNT


# Unit costs where this machine has not trained yet, for the embedded models on the 2-core CPU, with the built-in
# eight test prompts. tiny: bench/estimate.py (bench/results/estimate_cpu.json: 50 steps beside other jobs, load
# 6-9 on 2 cores). micro: the full default run (bench/results/estimate_micro_default_cpu.json: 5000 steps, 16 photos,
# 18 min 42 s Train -> ready with other jobs on the machine now and then: 7 s to the first step, 1066 s of steps,
# samples and five checkpoints with their tests, 49 s after the last step), the 30-step runs of
# estimate_micro_cpu.json (87-328 s after the last step: the first run here pays one-off caches) and issue 33's
# default run on a busy machine (34 min 52 s). The final part is taken between the default run's and the short ones'.
REFERENCE_TIMES = {
    "tiny": RunTimes(REFERENCE["tiny"], preparing=4.0, loading=5.0, sample_round=0.4, checkpoint=5.0, final=20.0),
    "micro": RunTimes(0.2, preparing=5.0, loading=10.0, sample_round=5.0, checkpoint=20.0, final=120.0),
}


@dataclass(frozen=True)
class RunParts:
    """The time between Train and a ready model, part by part (seconds)."""

    queue: float
    preparing: float
    loading: float
    steps: float
    samples: float
    checkpoints: float
    final: float
    queue_ahead: int = 0  # trainings that run or wait before this one

    @property
    def total(self) -> float:
        return self.queue + self.preparing + self.loading + self.steps + self.samples + self.checkpoints + self.final

    def lines(self, settings: TrainSettings, seconds_per_step: float) -> list[str]:
        """One line per part, in the order the person waits for them."""
        rounds, checkpoints = sample_rounds(settings), checkpoint_count(settings)
        lines = [f"preparing the photos (crops, captions): {duration_text(self.preparing)}"]
        if self.queue_ahead:
            lines.append(f"queue: {duration_text(self.queue)} ({self.queue_ahead} training(s) ahead, each taken "
                         "as long as this one)")
        lines += [f"loading: {duration_text(self.loading)}",
                  f"{settings.steps} steps: {duration_text(self.steps)} ({seconds_per_step:.2f} s per step)",
                  f"{rounds} round(s) of sample images: {duration_text(self.samples)}",
                  f"{checkpoints} checkpoint(s), each saved and tested: {duration_text(self.checkpoints)}",
                  f"final assessment and LoRA-scale trials: {duration_text(self.final)}"]
        return lines


@dataclass(frozen=True)
class TrainingEstimate:
    seconds: float | None  # None: no figure for this hardware; else ``parts.total``
    memory_gb: float | None
    device: str  # in words: "this CPU (2 cores)", "NVIDIA H200"
    basis: str  # where the time comes from
    parts: RunParts | None = None  # None: only the steps are known (FLUX.1-dev before a run here)
    seconds_per_step: float | None = None
    settings: TrainSettings | None = None

    def text(self) -> str:
        time_ = f"about {duration_text(self.seconds)}" if self.seconds is not None else "no time estimate"
        until = " from Train to a ready model" if self.parts is not None else ""
        memory = f", about {self.memory_gb:.1f} GB of memory" if self.memory_gb is not None else ""
        return f"Estimate on {self.device}: {time_}{until}{memory} ({self.basis})."

    def breakdown(self) -> list[str]:
        """The parts, one line each (empty when only the steps are known)."""
        if self.parts is None or self.settings is None or self.seconds_per_step is None:
            return []
        return self.parts.lines(self.settings, self.seconds_per_step)

    def with_queue(self, running: int, waiting: int) -> TrainingEstimate:
        """The estimate behind ``running`` trainings under way and ``waiting`` queued: each is taken as long as this
        one (other people's settings are not known), a running one as half done."""
        if self.parts is None or self.seconds is None or not running + waiting:
            return self
        alone = self.parts.total - self.parts.queue
        parts = dataclasses.replace(self.parts, queue=alone * (0.5 * running + waiting),
                                    queue_ahead=running + waiting)
        return dataclasses.replace(self, parts=parts, seconds=parts.total)


def sample_rounds(settings: TrainSettings) -> int:
    """Rounds of sample images a run draws: every ``sample_every`` steps and at the last step."""
    if settings.sample_every <= 0 or not settings.sample_prompts:
        return 0
    return settings.steps // settings.sample_every + (1 if settings.steps % settings.sample_every else 0)


def checkpoint_count(settings: TrainSettings) -> int:
    """Checkpoints a run saves: every ``checkpoint_every`` steps before the last, and the last step's."""
    return (settings.steps - 1) // settings.checkpoint_every + 1


def run_parts(times: RunTimes, settings: TrainSettings) -> RunParts:
    """The parts of a run of ``settings`` at ``times``' unit costs (no queue)."""
    times = times.for_prompts(assessment_prompts(settings))
    return RunParts(queue=0.0, preparing=times.preparing, loading=times.loading,
                    steps=times.seconds_per_step * settings.steps, samples=times.sample_round * sample_rounds(settings),
                    checkpoints=times.checkpoint * checkpoint_count(settings), final=times.final)


def speed_key(base_model: str, device: str, settings: TrainSettings) -> str:
    """What makes runs comparable: the model, the hardware, the sizes, the LoRA's rank and layers, how memory is held.

    (The layers joined the key in 2026-12: a micro run with the outer layers does more work per step than one without,
    so speeds logged before do not match any key now and the next run measures again.)"""
    return "|".join(str(v) for v in (base_model, device, settings.resolution, settings.finish_resolution,
                                     settings.batch_size, settings.rank, settings.memory_mode, settings.optimizer,
                                     settings.lora_modulation, settings.lora_outer_layers))


@dataclass(frozen=True)
class Speed:
    seconds_per_step: float  # the median step
    overhead_seconds: float  # the rest of the run's wall time: loading, caching, checkpoints and their checks


_RUN_FIELDS = {f.name for f in dataclasses.fields(RunTimes)}
_locks: defaultdict[Path, threading.Lock] = defaultdict(threading.Lock)  # one per file: every workspace shares it


class SpeedLog:
    """Speeds measured by finished trainings on this machine, by :func:`speed_key` (the last five runs).

    A run is written in two halves: the training notes its loading, samples and checkpoints when its last step ends
    (:meth:`note_training`); the runner's :meth:`record`, once the checkpoint is chosen, completes it with the median
    step, and the time since that note is the final assessment's. Entries written before the parts were kept are
    ``[seconds per step, overhead]`` pairs and still count for the step."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder).resolve() / SPEED_FILE

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write(self, data: dict) -> None:
        try:
            handle, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".speed-", suffix=".tmp")
            with os.fdopen(handle, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.path)
        except OSError as exc:  # an estimate is not worth failing a finished training for
            logger.warning("cannot record the training speed: %s", exc)

    def note_training(self, key: str, times: RunTimes) -> None:
        """The training's half of a run (its ``final`` is unknown yet): kept until :meth:`record` completes it."""
        with _locks[self.path]:
            data = self._read()
            pending = data.get(PENDING) if isinstance(data.get(PENDING), dict) else {}
            pending[key] = {**dataclasses.asdict(times), "ended": time.time()}
            data[PENDING] = pending
            self._write(data)

    def record(self, key: str, speed: Speed) -> None:
        if not speed.seconds_per_step > 0:
            return
        with _locks[self.path]:
            data = self._read()
            entry: list | dict = [round(speed.seconds_per_step, 4), round(max(0.0, speed.overhead_seconds), 1)]
            pending = data.get(PENDING) if isinstance(data.get(PENDING), dict) else {}
            noted = pending.pop(key, None)
            if isinstance(noted, dict) and 0 <= time.time() - noted.get("ended", 0) < PENDING_MAX_AGE_S:
                # Recorded as the model is chosen: the time since the last step is the final assessment's.
                parts = {name: round(float(noted.get(name, 0.0)), 3)
                         for name in ("preparing", "loading", "sample_round", "checkpoint")}
                parts["test_prompts"] = int(noted.get("test_prompts", DEFAULT_TEST_PROMPT_COUNT))
                entry = {"seconds_per_step": round(speed.seconds_per_step, 4), **parts,
                         "final": round(time.time() - noted["ended"], 1),
                         "overhead": round(max(0.0, speed.overhead_seconds), 1)}
            if pending:
                data[PENDING] = pending
            else:
                data.pop(PENDING, None)
            data[key] = [*data.get(key, [])[-4:], entry]
            self._write(data)

    def _runs(self, key: str) -> list:
        return [r for r in self._read().get(key, []) if (isinstance(r, list) and len(r) == 2)
                or (isinstance(r, dict) and "seconds_per_step" in r)]

    def get(self, key: str) -> Speed | None:
        runs = [(r["seconds_per_step"], r.get("overhead", 0.0)) if isinstance(r, dict) else tuple(r)
                for r in self._runs(key)]
        if not runs:
            return None
        runs.sort()
        return Speed(*runs[len(runs) // 2])

    def times(self, key: str) -> RunTimes | None:
        """Each unit cost's median over the last runs that measured the parts; None before one did."""
        runs = [dataclasses.asdict(RunTimes(**{k: v for k, v in r.items() if k in _RUN_FIELDS}).for_prompts(
            DEFAULT_TEST_PROMPT_COUNT)) for r in self._runs(key) if isinstance(r, dict)]
        if not runs:
            return None

        def median(name: str) -> float:
            values = sorted(float(r.get(name, 0.0)) for r in runs)
            return values[len(values) // 2]

        return RunTimes(median("seconds_per_step"), preparing=median("preparing"), loading=median("loading"),
                        sample_round=median("sample_round"), checkpoint=median("checkpoint"), final=median("final"))


def device_name() -> tuple[str, str]:
    """(kind, words): ("cuda", "NVIDIA H200") or ("cpu", "this CPU (2 cores)")."""
    from pipeline.models.hardware import gpu_may_be_present

    if gpu_may_be_present():
        import torch

        if torch.cuda.is_available():
            return "cuda", torch.cuda.get_device_name(0)
    return "cpu", f"this CPU ({os.cpu_count()} cores)"


def expected_times(settings: TrainSettings, base_model: str, speeds: SpeedLog, *,
                   embedded: str | None) -> tuple[RunTimes | None, str]:
    """The unit costs a run of ``settings`` should take here, and where they come from: this machine's runs like it,
    else the bench's figures for the embedded models; None for FLUX.1-dev before a run here."""
    measured = speeds.times(speed_key(base_model, device_name()[0], settings))
    if measured is not None:
        return measured.for_prompts(assessment_prompts(settings)), "measured here"
    if embedded:
        return REFERENCE_TIMES[embedded].for_prompts(assessment_prompts(settings)), "the project's bench"
    return None, ""


def estimate_training(settings: TrainSettings, base_model: str, speeds: SpeedLog, *,
                      embedded: str | None) -> TrainingEstimate:
    """The estimate for ``settings`` on this machine; ``embedded``: "tiny" or "micro" for those models."""
    kind, words = device_name()
    key = speed_key(base_model, kind, settings)
    memory_gb = _memory(settings, kind, embedded, base_model)
    times = speeds.times(key)
    if times is not None:
        parts = run_parts(times, settings)
        return TrainingEstimate(parts.total, memory_gb, words,
                                f"measured here: {times.seconds_per_step:.2f} s per step, the rest part by part, "
                                "on the last runs like this", parts, times.seconds_per_step, settings)
    measured = speeds.get(key)  # a run from before the parts were kept: its steps, and the rest as one figure
    if measured is not None:
        return TrainingEstimate(measured.overhead_seconds + measured.seconds_per_step * settings.steps, memory_gb,
                                words, f"measured here: {measured.seconds_per_step:.2f} s per step and "
                                f"{duration_text(measured.overhead_seconds)} around them on the last runs like this "
                                "(the final assessment not included)")
    if embedded:
        times = REFERENCE_TIMES[embedded]
        parts = run_parts(times, settings)
        return TrainingEstimate(parts.total, EMBEDDED_MEMORY_GB, words,
                                f"the project's bench on a 2-core CPU: {times.seconds_per_step:.2f} s per step; "
                                "a busy machine takes longer, and the first run here measures it",
                                parts, times.seconds_per_step, settings)
    variant = _costed(base_model)
    if kind == "cpu":
        name = "FLUX.1-dev" if variant is FLUX1_DEV else variant.name
        return TrainingEstimate(None, memory_gb, words, f"{name} is not practical to train on a CPU: use a GPU")
    mode = _mode(settings, variant)
    seconds = _h100_steps_seconds(settings, mode, variant)
    scaled = "" if variant is FLUX1_DEV else (
        f", scaled to {variant.name} by its step's FLOPs ({_step_ratio(variant, settings.resolution):.2f} of "
        "FLUX.1-dev's, counted on the meta device)")
    return TrainingEstimate(seconds, memory_gb, words,
                            f"the project's bench on an H100 in {mode} mode{scaled}, the steps alone (loading, samples "
                            "and the assessment not included); other GPUs differ until one run here measures this one")


def _costed(base_model: str) -> BaseVariant:
    """The hub model's own figures where they are counted (klein base 4B/9B, FLUX.1; a local folder of one of them by
    its transformer's size), else FLUX.1-dev's (another folder or hub id: what every base was estimated as before
    families)."""
    return sized_variant(base_model) or FLUX1_DEV


def _h100_steps_seconds(settings: TrainSettings, mode: str, variant: BaseVariant) -> float:
    """The run's steps on an H100 in ``mode``: FLUX.1-dev's bench per resolution stage, scaled to ``variant``."""
    final = settings.finish_resolution if settings.finish_resolution > settings.resolution else settings.resolution
    main = REFERENCE.get((mode, 1024 if settings.resolution > 512 else 512), REFERENCE[("bf16", 512)])
    late = REFERENCE.get((mode, 1024 if final > 512 else 512), main)
    quarter = settings.steps // 4 if final != settings.resolution else 0
    return (main * _step_ratio(variant, settings.resolution) * (settings.steps - quarter)
            + late * _step_ratio(variant, final) * quarter)


def _step_ratio(variant: BaseVariant, resolution: int) -> float:
    """The variant's step cost against FLUX.1-dev's, whose H100 times REFERENCE holds (1.0 for FLUX.1)."""
    assert variant.cost is not None and FLUX1_DEV.cost is not None
    if variant.cost == FLUX1_DEV.cost:
        return 1.0
    return variant.cost.step_tflop(resolution) / FLUX1_DEV.cost.step_tflop(resolution)


@dataclass(frozen=True)
class BaseModelChoice:
    """A base model one could train on instead (``--base-model``), sized for a run of the given settings."""

    variant: BaseVariant
    family: FamilyId
    memory_gb: dict[str, float]  # GPU memory of the training step per memory mode, at the run's largest size
    h100_seconds: float  # the steps alone, in bf16 on an H100 (FLUX.1-dev's bench, scaled by the step's FLOPs)


def base_model_choices(settings: TrainSettings) -> tuple[BaseModelChoice, ...]:
    """Every trainable hub model of every family with its figures counted, for a run of ``settings``."""
    from pipeline.models.memory import MODES, variant_memory

    final = max(settings.resolution, settings.finish_resolution)
    choices = []
    for family in families():
        for variant in family.variants:
            if not (variant.implemented and variant.for_training and variant.cost is not None):
                continue
            memory = {mode: round(variant_memory(variant, mode, resolution=final, rank=settings.rank,
                                                 batch_size=settings.batch_size,
                                                 optimizer=settings.optimizer).total_gb, 1) for mode in MODES}
            choices.append(BaseModelChoice(variant, family.id, memory, _h100_steps_seconds(settings, "bf16", variant)))
    return tuple(choices)


def _mode(settings: TrainSettings, variant: BaseVariant) -> str:
    """The memory mode a run of ``settings`` on ``variant`` gets here (auto: by the model's own thresholds)."""
    from pipeline.models.memory import auto_thresholds, choose_mode, free_gpu_gb  # torch: not for the embedded models

    return choose_mode(settings.memory_mode, free_gpu_gb(), auto_thresholds(variant))[0]


def _memory(settings: TrainSettings, kind: str, embedded: str | None, base_model: str = "") -> float | None:
    if embedded:
        return EMBEDDED_MEMORY_GB
    from pipeline.models.memory import variant_memory

    variant = _costed(base_model)
    mode = "cpu" if kind == "cpu" else _mode(settings, variant)
    figure = variant_memory(variant, mode, resolution=max(settings.resolution, settings.finish_resolution),
                            rank=settings.rank, batch_size=settings.batch_size, optimizer=settings.optimizer)
    return round(figure.total_gb, 1)


def left_after(settings: TrainSettings, step: int) -> tuple[int, int]:
    """(sample rounds, checkpoints) still to come when step ``step`` has been taken but not yet sampled or saved."""
    samples = 0
    if settings.sample_every > 0 and settings.sample_prompts:
        every = settings.sample_every
        samples = settings.steps // every - (step - 1) // every + (1 if settings.steps % every else 0)
    every = settings.checkpoint_every
    checkpoints = (settings.steps - 1) // every - (step - 1) // every + 1  # the saves before the last, and the last
    return samples, checkpoints


class LiveEta:
    """A running training's time to a ready model, from its own measurements, smoothed like a countdown.

    The step speed is the median of the last ``window_steps`` steps: a few slow steps (another job taking the core)
    do not move it, a lasting change does within half a window. Samples and checkpoints cost what this run's took so
    far, else what ``expected`` (earlier runs here, or the bench) says; the final assessment what ``expected`` says.
    What is shown counts down between updates and moves towards the fresh figure with a ``smoothing_s`` time
    constant, never faster than ``max_rate`` of itself per second: so two polls a second apart never differ by half.
    """

    def __init__(self, expected: RunTimes | None, *, window_steps: int = 100, smoothing_s: float = 30.0,
                 max_rate: float = 0.2) -> None:
        self.expected = expected
        self.step_times: deque[float] = deque(maxlen=window_steps)
        self.sample_times: list[float] = []
        self.checkpoint_times: list[float] = []
        self.loading: float | None = None
        self.smoothing_s = smoothing_s
        self.max_rate = max_rate
        self.shown: float | None = None
        self.at = 0.0

    def add_step(self, seconds: float) -> None:
        self.step_times.append(seconds)

    def seconds_per_step(self) -> float:
        ordered = sorted(self.step_times)
        return ordered[len(ordered) // 2] if ordered else (self.expected.seconds_per_step if self.expected else 0.0)

    def _cost(self, own: list[float], expected: float) -> float:
        return sum(own) / len(own) if own else expected

    def left(self, steps_seconds: float, samples_left: int, checkpoints_left: int) -> float:
        """The unsmoothed time to a ready model, given the steps' own time left."""
        expected = self.expected or RunTimes(0.0)
        return (steps_seconds + samples_left * self._cost(self.sample_times, expected.sample_round)
                + checkpoints_left * self._cost(self.checkpoint_times, expected.checkpoint) + expected.final)

    def smooth(self, now: float, raw: float) -> float:
        """What to show at ``now`` (seconds, any clock) given the fresh figure ``raw``."""
        if self.shown is None:
            self.shown, self.at = raw, now
            return raw
        dt = max(0.0, now - self.at)
        predicted = max(0.0, self.shown - dt)
        target = predicted + (1 - math.exp(-dt / self.smoothing_s)) * (raw - predicted)
        limit = self.max_rate * dt * max(predicted, 1.0)
        self.shown, self.at = min(max(target, predicted - limit), predicted + limit), now
        return self.shown

    def measured(self, settings: TrainSettings, preparing: float = 0.0) -> RunTimes:
        """What this run of ``settings`` measured of its unit costs (its final assessment is not known to it)."""
        return RunTimes(self.seconds_per_step(), preparing=preparing, loading=self.loading or 0.0,
                        test_prompts=assessment_prompts(settings),
                        sample_round=self._cost(self.sample_times, 0.0),
                        checkpoint=self._cost(self.checkpoint_times, 0.0))


def embedded_kind(base_model: str) -> str | None:
    """"tiny" or "micro" for the embedded models (their bench figures), None for FLUX.1-dev."""
    from pipeline.models.base_model import is_micro, is_tiny

    return "micro" if is_micro(base_model) else "tiny" if is_tiny(base_model) else None


def preparing_seconds(model_folder: Path) -> float:
    """The time a model's dataset took to build, between the files the workflow writes on Train: the classification
    (written as the model is created, before the dataset) and the job spec (written as the job is queued). 0 where
    they are not both there (a training run outside the workflow)."""
    try:
        return max(0.0, (Path(model_folder) / "job.json").stat().st_mtime
                   - (Path(model_folder) / "classification.json").stat().st_mtime)
    except OSError:
        return 0.0

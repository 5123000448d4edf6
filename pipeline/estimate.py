"""How long a training will take and how much memory it needs, said before it starts (the Settings tab).

Time comes from this machine where it has trained the same way before (every finished run records its median time
per step and the rest of its wall time — loading, checkpoints, their checks — in the shared data dir), else from
the project's bench figures, and says which. Memory is pipeline.memory's first-order estimate for FLUX.1-dev, the
bench's peak for the embedded models.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pipeline.events import duration_text
from pipeline.settings import TrainSettings

logger = logging.getLogger(__name__)

SPEED_FILE = "training_speed.json"
# Wall seconds per step where this machine has not trained yet (bench/results): the embedded models on the 2-core
# CPU (tiny: bench/train.py; micro: bench/micro_likeness.py at 96 px, 0.24–0.30 s/step with the checks at each
# checkpoint through peft's LoRA layers, times 0.73 with the merged-weight ones: bench/merged_lora.py), and
# FLUX.1-dev on an H100 by memory mode at 512 and 1024 px (bench/results/train_gpu_h100*.json).
REFERENCE = {
    "tiny": 0.05,
    "micro": 0.2,
    ("bf16", 512): 0.37, ("bf16", 1024): 0.64,
    ("fp8", 512): 0.66, ("fp8", 1024): 1.13,
    ("nf4", 512): 0.9, ("nf4", 1024): 1.5,  # not measured (no bitsandbytes on the device): fp8's, plus dequantising
    ("offload", 512): 1.83, ("offload", 1024): 1.95,
}
# FLUX.1-dev's transformer, for the memory estimate (pipeline/memory.py, bench/train.py).
FLUX_PARAMETERS, FLUX_LORA_RANK16, FLUX_HIDDEN, FLUX_BLOCKS = 11_901_408_320, 65_372_160, 3072, 57
EMBEDDED_MEMORY_GB = 1.0  # peak host RAM of a training on the embedded models (bench/train.py: 0.91 GB)


@dataclass(frozen=True)
class TrainingEstimate:
    seconds: float | None  # None: no figure for this hardware
    memory_gb: float | None
    device: str  # in words: "this CPU (2 cores)", "NVIDIA H200"
    basis: str  # where the time comes from

    def text(self) -> str:
        time = f"about {duration_text(self.seconds)}" if self.seconds is not None else "no time estimate"
        memory = f", about {self.memory_gb:.1f} GB of memory" if self.memory_gb is not None else ""
        return f"Estimate on {self.device}: {time}{memory} ({self.basis})."


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


_locks: defaultdict[Path, threading.Lock] = defaultdict(threading.Lock)  # one per file: every workspace shares it


class SpeedLog:
    """Speeds measured by finished trainings on this machine, by :func:`speed_key` (the last five runs)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder).resolve() / SPEED_FILE

    def _read(self) -> dict[str, list]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def record(self, key: str, speed: Speed) -> None:
        if not speed.seconds_per_step > 0:
            return
        with _locks[self.path]:
            data = self._read()
            entry = [round(speed.seconds_per_step, 4), round(max(0.0, speed.overhead_seconds), 1)]
            data[key] = [*data.get(key, [])[-4:], entry]
            try:
                handle, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".speed-", suffix=".tmp")
                with os.fdopen(handle, "w") as f:
                    json.dump(data, f)
                os.replace(tmp, self.path)
            except OSError as exc:  # an estimate is not worth failing a finished training for
                logger.warning("cannot record the training speed: %s", exc)

    def get(self, key: str) -> Speed | None:
        runs = [r for r in self._read().get(key, []) if isinstance(r, list) and len(r) == 2]
        if not runs:
            return None
        runs.sort()
        return Speed(*runs[len(runs) // 2])


def device_name() -> tuple[str, str]:
    """(kind, words): ("cuda", "NVIDIA H200") or ("cpu", "this CPU (2 cores)")."""
    from pipeline.hardware import gpu_may_be_present

    if gpu_may_be_present():
        import torch

        if torch.cuda.is_available():
            return "cuda", torch.cuda.get_device_name(0)
    return "cpu", f"this CPU ({os.cpu_count()} cores)"


def estimate_training(settings: TrainSettings, base_model: str, speeds: SpeedLog, *,
                      embedded: str | None) -> TrainingEstimate:
    """The estimate for ``settings`` on this machine; ``embedded``: "tiny" or "micro" for those models."""
    kind, words = device_name()
    measured = speeds.get(speed_key(base_model, kind, settings))
    if measured is not None:
        return TrainingEstimate(measured.overhead_seconds + measured.seconds_per_step * settings.steps,
                                _memory(settings, kind, embedded), words,
                                f"measured here: {measured.seconds_per_step:.2f} s per step and "
                                f"{duration_text(measured.overhead_seconds)} around them on the last runs like this")
    if embedded:
        per_step = REFERENCE[embedded]
        return TrainingEstimate(per_step * settings.steps, EMBEDDED_MEMORY_GB, words,
                                f"the project's bench on a 2-core CPU: {per_step:.2f} s per step")
    if kind == "cpu":
        return TrainingEstimate(None, _memory(settings, kind, embedded), words,
                                "FLUX.1-dev is not practical to train on a CPU: use a GPU")
    mode = _mode(settings)
    final = settings.finish_resolution if settings.finish_resolution > settings.resolution else settings.resolution
    main = REFERENCE.get((mode, 1024 if settings.resolution > 512 else 512), REFERENCE[("bf16", 512)])
    late = REFERENCE.get((mode, 1024 if final > 512 else 512), main)
    quarter = settings.steps // 4 if final != settings.resolution else 0
    seconds = main * (settings.steps - quarter) + late * quarter
    return TrainingEstimate(seconds, _memory(settings, kind, embedded), words,
                            f"the project's bench on an H100 in {mode} mode; other GPUs differ until one run here "
                            "measures this one")


def _mode(settings: TrainSettings) -> str:
    from pipeline.memory import choose_mode, free_gpu_gb  # torch: only for FLUX.1-dev, not the embedded models

    return choose_mode(settings.memory_mode, free_gpu_gb())[0]


def _memory(settings: TrainSettings, kind: str, embedded: str | None) -> float | None:
    if embedded:
        return EMBEDDED_MEMORY_GB
    from pipeline.memory import estimate_memory

    mode = "cpu" if kind == "cpu" else _mode(settings)
    final = max(settings.resolution, settings.finish_resolution)
    figure = estimate_memory(mode, base_parameters=FLUX_PARAMETERS,
                             lora_parameters=FLUX_LORA_RANK16 * settings.rank // 16, hidden_size=FLUX_HIDDEN,
                             num_blocks=FLUX_BLOCKS, image_tokens=(final // 16) ** 2, text_tokens=512,
                             batch_size=max(1, settings.batch_size), optimizer=settings.optimizer)
    return round(figure.total_gb, 1)

"""Time and memory said before a training starts: the bench's figure at first, then what this machine measured."""

from __future__ import annotations

from pathlib import Path

import photo_factory
import pytest

from pipeline.estimate import REFERENCE, SPEED_FILE, SpeedLog, estimate_training
from pipeline.settings import FLUX_DEV, AppSettings, TrainSettings
from pipeline.workflow import Workflow


def test_a_finished_training_makes_the_next_estimate_a_measurement(tmp_path: Path) -> None:
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"))
    try:
        workflow.add_photos(photo_factory.portrait_set(tmp_path / "photos", 4))
        settings = TrainSettings.quick(name="timed", steps=12, checkpoint_every=12, sample_every=1000)
        before = workflow.estimate(settings)
        assert before.seconds == pytest.approx(REFERENCE["tiny"] * 12) and "bench" in before.basis
        assert before.memory_gb and "CPU" in before.device

        record = workflow.wait_for(workflow.start_training(settings, anyway=True).id, timeout=300)
        assert record.status == "ready"
        after = workflow.estimate(settings)
        assert "measured here" in after.basis and after.seconds != before.seconds
        per_step = after.seconds / 12
        assert 0.001 < per_step < 30
        assert (tmp_path / "data" / SPEED_FILE).is_file()  # the machine's, beside the base models
        assert "measured here" not in workflow.estimate(TrainSettings.quick(steps=12, rank=8)).basis  # not alike
        assert f"{per_step:.2f} s per step" in after.text()
    finally:
        workflow.close()


def test_flux_on_a_cpu_says_so_and_still_sizes_the_memory(tmp_path: Path) -> None:
    estimate = estimate_training(TrainSettings(), FLUX_DEV, SpeedLog(tmp_path), embedded=None)
    assert estimate.seconds is None and "not practical" in estimate.basis
    assert estimate.memory_gb > 40  # 11.9 B float32 weights on a CPU alone are 44 GB
    bigger = estimate_training(TrainSettings(rank=64), FLUX_DEV, SpeedLog(tmp_path), embedded=None)
    assert bigger.memory_gb > estimate.memory_gb

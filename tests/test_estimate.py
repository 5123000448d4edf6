"""Time and memory said before a training starts: the bench's figure at first, then what this machine measured."""

from __future__ import annotations

import json
from pathlib import Path

import photo_factory
import pytest

from pipeline.estimate import REFERENCE, SPEED_FILE, SpeedLog, device_name, estimate_training
from pipeline.settings import FLUX_DEV, AppSettings, TrainSettings
from pipeline.workflow import Workflow


def test_a_finished_training_makes_the_next_estimate_a_measurement(tmp_path: Path) -> None:
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"))
    try:
        workflow.add_photos(photo_factory.portrait_set(tmp_path / "photos", 4))
        settings = TrainSettings.quick(name="timed", steps=12, checkpoint_every=12, sample_every=1000)
        before = workflow.estimate(settings)
        assert before.seconds == pytest.approx(REFERENCE["tiny"] * 12) and "bench" in before.basis
        assert before.memory_gb and before.device == device_name()[1]

        record = workflow.wait_for(workflow.start_training(settings, anyway=True).id, timeout=300)
        assert record.status == "ready"
        after = workflow.estimate(settings)
        assert "measured here" in after.basis
        measured = SpeedLog(tmp_path / "data").get(next(iter(
            json.loads((tmp_path / "data" / SPEED_FILE).read_text()))))
        # the median step, as the run itself reported it, and the rest of the run's time around the steps
        reported = workflow.training_view(record.id).last_step.seconds_per_step
        assert reported / 3 < measured.seconds_per_step < reported * 3
        assert after.seconds == pytest.approx(measured.overhead_seconds + 12 * measured.seconds_per_step)
        longer = workflow.estimate(TrainSettings.quick(name="timed", steps=1200, checkpoint_every=12,
                                                       sample_every=1000))
        assert longer.seconds == pytest.approx(measured.overhead_seconds + 1200 * measured.seconds_per_step)
        assert "measured here" not in workflow.estimate(TrainSettings.quick(steps=12, rank=8)).basis  # not alike
        assert "measured here" not in workflow.estimate(TrainSettings.quick(steps=12, lora_outer_layers=True)).basis
        assert f"{measured.seconds_per_step:.2f} s per step" in after.text()
    finally:
        workflow.close()


def test_flux_on_a_cpu_says_so_and_still_sizes_the_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.estimate.device_name", lambda: ("cpu", "this CPU (2 cores)"))  # also on a GPU box
    estimate = estimate_training(TrainSettings(), FLUX_DEV, SpeedLog(tmp_path), embedded=None)
    assert estimate.seconds is None and "not practical" in estimate.basis
    assert estimate.memory_gb > 40  # 11.9 B float32 weights on a CPU alone are 44 GB
    bigger = estimate_training(TrainSettings(rank=64), FLUX_DEV, SpeedLog(tmp_path), embedded=None)
    assert bigger.memory_gb > estimate.memory_gb

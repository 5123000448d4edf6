"""The Training tab's handlers on a recorded run (its journal, as a real run writes it): what one poll sends stays
the same size however long the run, and a stopped run points to Resume."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import events as ev
from pipeline.settings import AppSettings
from pipeline.status import Status
from pipeline.training.job import TrainingMonitor
from pipeline.workflow import Workflow
from ui.training import LOG_LINES, LOSS_EXACT, _render, _status


@pytest.fixture()
def workflow(tmp_path: Path) -> Iterator[Workflow]:
    flow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), start_worker=False)
    yield flow
    flow.close()


def recorded_run(workflow: Workflow, steps: int, *, checkpoint_every: int = 0, status: Status = Status.TRAINING,
                 name: str = "long run") -> str:
    """A model whose journal holds ``steps`` steps' events (loss, log lines, checkpoints), written by the monitor
    as a real run writes it; the workflow reads it back as after a restart."""
    record = workflow.library.create(name, "tiny", {"steps": steps})
    monitor = TrainingMonitor(record.id, journal=Path(record.folder) / "training_log.jsonl")
    for step in range(1, steps + 1):
        loss = 0.5 + 0.4 * math.exp(-step / 500) + 0.1 * math.sin(step * 1.7)  # falling, noisy
        monitor.on_event(ev.TrainStep(step=step, total_steps=steps, loss=loss, loss_smooth=0.5 + 0.4 * math.exp(
            -step / 500), learning_rate=1e-4, seconds_per_step=0.05, eta_seconds=(steps - step) * 0.05,
            phase="initial learning"))
        if checkpoint_every and step % checkpoint_every == 0:
            monitor.on_event(ev.CheckpointSaved(step=step, path=Path(record.folder) / f"checkpoint-{step}"))
    workflow.library.update(record.id, status=status)
    return record.id


def _sent(rendered: tuple) -> int:
    """The bytes one poll's outputs take as JSON (the status, the log, both charts' rows, the samples)."""
    status, log, loss, likeness, samples = rendered
    return len(json.dumps([status, log, loss.values.tolist(), likeness.values.tolist(), samples]))


def test_one_poll_costs_the_same_at_step_2000_and_at_step_20000(workflow: Workflow) -> None:
    short, long = recorded_run(workflow, 2000, name="short"), recorded_run(workflow, 20_000, name="long")
    _, log, loss, _, _ = rendered = _render(workflow, long)
    assert len(loss) <= 480  # 20 000 steps were 40 000 rows
    assert len(log.splitlines()) == LOG_LINES
    assert log.splitlines()[0].startswith("step 20000/20000")  # newest first
    # The latest steps as reported; the whole run's noise band still drawn.
    raw = loss[loss.series == "loss"]
    monitor = workflow.training_view(long)
    assert raw.step.tolist()[-LOSS_EXACT:] == [s for s, _, _ in monitor.losses[-LOSS_EXACT:]]
    assert raw.loss.tolist()[-LOSS_EXACT:] == [r for _, r, _ in monitor.losses[-LOSS_EXACT:]]
    assert raw.loss.min() == min(r for _, r, _ in monitor.losses)
    assert raw.loss.max() == max(r for _, r, _ in monitor.losses)
    assert loss.step.min() <= 64 and loss.step.max() == 20_000  # from the start to now
    # Ten times the steps, about the same bytes (only the step numbers grow a digit).
    assert _sent(rendered) < 1.15 * _sent(_render(workflow, short))
    assert _sent(rendered) < 40_000


@pytest.mark.parametrize(("checkpoint_every", "expected"), [
    (250, "Press **Resume** to go on from its last checkpoint (step 750)."),
    (0, "Press **Resume** to go on from the start (no checkpoint was saved yet)."),
])
def test_a_stopped_run_points_to_resume(workflow: Workflow, checkpoint_every: int, expected: str) -> None:
    """Resume is the button that applies after Stop (it used to say "Press Train", which starts over)."""
    model_id = recorded_run(workflow, 800, checkpoint_every=checkpoint_every, status=Status.CANCELLED)
    status = _render(workflow, model_id)[0]
    assert f"⏹ Stopped. {expected}" in status
    assert "Press Train" not in status


def test_the_log_and_a_failure_show_no_server_path(workflow: Workflow) -> None:
    """A visitor sees file names, not where the data dir lies (issue 32): the trainer's "LoRA saved to /srv/…" line
    and a failure's reason, both full paths in the journal, reach the page cut to their last part."""
    model_id = recorded_run(workflow, 20)
    record = workflow.model(model_id)
    monitor = TrainingMonitor(model_id, journal=Path(record.folder) / "training_log.jsonl")
    saved = Path(record.folder) / "lora" / "lora.safetensors"
    monitor.on_event(ev.Message(f"training finished: 20 steps, LoRA saved to {saved}"))
    workflow.library.update(model_id, status=Status.FAILED, error=f"could not write {saved}: disk full")
    status, log, *_ = _render(workflow, model_id)
    assert "LoRA saved to lora.safetensors" in log and "could not write lora.safetensors" in status
    assert str(workflow.data_dir) not in log + status and record.folder.name not in log + status


def test_the_final_assessment_says_what_it_does_and_counts_the_time_down(workflow: Workflow) -> None:
    """No step comes while the final assessment runs (minutes on the micro model): the status names its test image
    and the time left keeps falling (issue 33: the ETA stood still there), then says when it runs over."""
    model_id = recorded_run(workflow, 50, status=Status.ASSESSING)
    now = [1000.0]
    monitor = TrainingMonitor(model_id, clock=lambda: now[0])
    monitor.on_event(ev.TrainStep(step=50, total_steps=50, loss=0.5, loss_smooth=0.5, learning_rate=1e-4,
                                  seconds_per_step=0.2, eta_seconds=300.0, phase="final optimisation"))
    monitor.note("assessing", status=Status.ASSESSING)
    monitor.on_event(ev.Progress("assess", 2, 8, "test image 3 of 8: a portrait photo of ohwx"))
    first = _status(workflow, monitor)
    now[0] += 70
    later = _status(workflow, monitor)
    assert "🔎 Final assessment: test image 3 of 8: a portrait photo of ohwx · about 5 min 00 s left" in first
    assert "ETA 5 min 00 s" in first and "ETA 3 min 50 s" in later and "about 3 min 50 s left" in later
    now[0] += 600
    assert "taking longer than estimated" in _status(workflow, monitor)
    # Once it is ready there is nothing left to count.
    workflow.library.update(model_id, status=Status.READY)
    assert "ETA" not in _status(workflow, monitor) and "Final assessment" not in _status(workflow, monitor)

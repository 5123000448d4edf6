"""The training job on its own: a versioned spec written once, and a runner that needs no workflow."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import photo_factory
import pytest

from pipeline import events as ev
from pipeline.estimate import SpeedLog
from pipeline.generators import Generators
from pipeline.library import Library, ModelRecord
from pipeline.settings import AppSettings, TrainSettings
from pipeline.status import JOB_STATUSES, MODEL_STATUSES, RESULT_STATUSES, Status
from pipeline.training_job import SPEC_VERSION, LocalExecutor, TrainingJobSpec, TrainingMonitor, TrainingRunner
from pipeline.workflow import Workflow


def test_a_spec_reads_back_what_it_wrote_and_old_payloads_still_run() -> None:
    spec = TrainingJobSpec(model_id="abc123", workspace="local", base_model="tiny",
                           settings=TrainSettings.quick(name="anna", steps=7, resolution=96, finish_resolution=128))
    data = json.loads(json.dumps(spec.to_dict()))  # through JSON, as the queue and job.json keep it
    assert data["version"] == SPEC_VERSION and TrainingJobSpec.from_dict(data) == spec

    # A payload queued before specs existed: settings and workspace only, no finish_resolution then.
    old_settings = {k: v for k, v in data["settings"].items() if k != "finish_resolution"}
    old = TrainingJobSpec.from_dict({"settings": old_settings, "workspace": "user-anna-1"}, model_id="m1",
                                    base_model="micro")
    assert (old.model_id, old.workspace, old.base_model) == ("m1", "user-anna-1", "micro")
    assert old.settings.finish_resolution == 0 and old.settings.steps == 7  # trained at one size, as it was queued

    with pytest.raises(ValueError, match="newer Likeness"):
        TrainingJobSpec.from_dict({**data, "version": SPEC_VERSION + 1})


def test_one_status_vocabulary_reads_the_strings_older_files_hold() -> None:
    assert {Status(s) for s in ("queued", "running", "done", "failed", "cancelled")} == set(JOB_STATUSES)
    assert {Status(s) for s in ("queued", "training", "assessing", "ready", "failed", "cancelled")} == \
        set(MODEL_STATUSES)
    assert set(RESULT_STATUSES) == {Status.COMPLETED, Status.FAILED, Status.CANCELLED}
    assert json.dumps({"status": Status.READY}) == '{"status": "ready"}'


def test_a_runner_trains_a_queued_job_with_only_what_it_is_given(tmp_path: Path) -> None:
    """Queue a training (the workflow writes the spec), then run it with a runner built by hand: library,
    generators, monitors, a notifier — no Workflow, no queue worker."""
    data_dir = tmp_path / "data"
    queued = Workflow(AppSettings(data_dir=data_dir, base_model="tiny"), start_worker=False)
    try:
        queued.add_photos(photo_factory.portrait_set(tmp_path / "photos", 6))
        record = queued.start_training(TrainSettings.quick(name="by-hand", steps=4, checkpoint_every=2,
                                                           sample_every=1000, test_prompts=("{trigger}",)),
                                       anyway=True)
        [job] = queued.jobs.list()
    finally:
        queued.close()
    # Written once: the queue's payload is job.json, and the record's settings are its settings.
    assert json.loads((Path(record.folder) / "job.json").read_text()) == job.payload
    assert record.settings == job.payload["settings"] and job.payload["settings"]["trigger_word"] == \
        record.trigger_word

    library = Library(data_dir)
    monitors: dict[str, TrainingMonitor] = {}
    told: list[ModelRecord] = []

    def monitor(model_id: str) -> TrainingMonitor:
        return monitors.setdefault(model_id, TrainingMonitor(model_id))

    def notify(finished: ModelRecord) -> str:
        told.append(finished)
        return "told"

    runner = TrainingRunner(library, LocalExecutor(Generators(data_dir), data_dir), monitor, SpeedLog(data_dir),
                            notify=notify)
    spec = TrainingJobSpec.from_dict(job.payload)
    runner.run(spec, device="cpu", should_stop=ev.never, shutting_down=lambda: False)

    done = library.get(record.id)
    assert done.status == Status.READY and done.lora_path.is_file()
    assert done.scores is not None and set(done.scores.by_checkpoint) == {2, 4}
    assert done.best_checkpoint_step in (2, 4) and done.scores.overall == done.scores.by_checkpoint[
        done.best_checkpoint_step]
    assert [r.status for r in told] == [Status.READY] and monitors[record.id].log[-1] == "told"
    assert [step for step, _likeness, _overall in monitors[record.id].assessments] == [2, 4]

    # Stopped by a shutdown: the model waits in the queue again instead of being marked cancelled.
    again = dataclasses.replace(spec, settings=dataclasses.replace(spec.settings, steps=8))
    runner.run(again, device="cpu", should_stop=lambda: True, shutting_down=lambda: True)
    assert library.get(record.id).status == Status.QUEUED and len(told) == 1


def test_resume_runs_where_the_model_lives_now_with_its_trigger_word_now(tmp_path: Path) -> None:
    """A stopped model's data moved (e.g. into an account's workspace) and its trigger word changed: the resumed job
    names the workspace and the word it has now, not those in job.json."""
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), start_worker=False)
    try:
        workflow.add_photos(photo_factory.portrait_set(tmp_path / "photos", 6))
        record = workflow.start_training(TrainSettings.quick(name="moved", steps=4), anyway=True)
        workflow.cancel_training(record.id)  # a queued job ends at once
        saved = json.loads((Path(record.folder) / "job.json").read_text())
        (Path(record.folder) / "job.json").write_text(json.dumps({**saved, "workspace": "user-elsewhere"}))
        workflow.set_trigger_word(record.id, "zqvx")
        workflow.resume_training(record.id)
        resumed = [job for job in workflow.jobs.list() if job.status == Status.QUEUED]
    finally:
        workflow.close()
    [job] = resumed
    spec = TrainingJobSpec.from_dict(job.payload)
    assert spec.workspace == workflow.workspace and spec.settings.trigger_word == "zqvx"
    assert spec.settings.steps == 4 and spec.model_id == record.id

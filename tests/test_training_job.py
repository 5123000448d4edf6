"""The training job on its own: a versioned spec written once, and a runner that needs no workflow."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import photo_factory
import pytest

from pipeline import events as ev
from pipeline.generation.generators import Generators
from pipeline.library.catalog import Library, ModelRecord
from pipeline.settings import MAX_TEST_PROMPTS, AppSettings, SettingsError, TrainSettings
from pipeline.status import JOB_FINISHED, JOB_STATUSES, MODEL_FINISHED, MODEL_STATUSES, RESULT_STATUSES, Status
from pipeline.storage.disk import folder_size
from pipeline.training.estimate import SpeedLog
from pipeline.training.job import (
    SPEC_VERSION,
    LocalExecutor,
    TrainingJobSpec,
    TrainingMonitor,
    TrainingNotStarted,
    TrainingRunner,
)
from pipeline.workflow import Workflow

FULL_DISK_SCENARIO = Path(__file__).with_name("full_disk_scenario.py")


def _wait(condition: Callable[[], bool], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


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


def test_the_time_left_counts_down_through_the_final_assessment_which_sends_no_steps() -> None:
    now = [100.0]
    monitor = TrainingMonitor("m", clock=lambda: now[0])
    assert monitor.time_left() is None  # nothing to count from before the first step
    monitor.on_event(ev.Progress("assess", 7, 8, "test image 8 of 8: a checkpoint's, while training"))
    monitor.on_event(ev.TrainStep(step=50, total_steps=50, loss=0.5, loss_smooth=0.5, learning_rate=1e-4,
                                  seconds_per_step=0.1, eta_seconds=90.0, phase="final optimisation"))
    monitor.note("assessing", status=Status.ASSESSING)
    assert monitor.assessing is None  # the live checkpoint test's last image is not the final assessment's
    now[0] += 30
    monitor.on_event(ev.Progress("assess", 2, 8, "test image 3 of 8: a portrait"))
    assert monitor.time_left() == 60.0 and monitor.assessing.message == "test image 3 of 8: a portrait"
    now[0] += 120  # longer than estimated: never below zero
    assert monitor.time_left() == 0.0
    # Replayed from the journal (after a restart) it has no clock to count from: the step's own figure.
    assert dataclasses.replace(monitor, step_at=None).time_left() == 90.0


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
    # The final assessment's own progress reached the monitor (the Training tab shows it while no step comes).
    final = monitors[record.id].assessing
    assert final is not None and final.stage == "assess" and final.done == final.total > 0

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


@pytest.mark.slow
@pytest.mark.parametrize(("steps", "folder"), [(4, "step_000002"), (2, "step_000002_x0.8")],
                         ids=["checkpoint-during-training", "final-choice"])
def test_stop_during_a_checkpoint_assessment_ends_the_job_within_seconds(tmp_path: Path, steps: int,
                                                                        folder: str) -> None:
    """As many test prompts as the settings allow; Stop pressed once the first test image of an assessment is on
    disk (a checkpoint's while training runs, or the best one's at another LoRA scale once it is done): the job ends
    "cancelled" in the library and the queue within seconds, most of that assessment's images never drawn."""
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"))
    prompts = tuple(f"{{trigger}}, portrait number {i}" for i in range(MAX_TEST_PROMPTS))
    try:
        workflow.add_photos(photo_factory.portrait_set(tmp_path / "photos", 6))
        record = workflow.start_training(TrainSettings.quick(name="assessed", steps=steps, checkpoint_every=2,
                                                             sample_every=1000, test_prompts=prompts), anyway=True)
        images = Path(record.folder) / "assessment" / folder
        _wait(lambda: any(images.glob("*.png")))
        asked = time.monotonic()
        workflow.cancel_training(record.id)
        _wait(lambda: workflow.model(record.id).status in MODEL_FINISHED
              and all(job.status in JOB_FINISHED for job in workflow.jobs.for_model(record.id)), 120)
        seconds = time.monotonic() - asked
        [job] = workflow.jobs.for_model(record.id)
        ended = workflow.model(record.id)
    finally:
        workflow.close()
    drawn = len(list(images.glob("*.png")))
    print(f"stopped {seconds:.1f} s after Stop, {drawn} of {MAX_TEST_PROMPTS} test images drawn")
    assert ended.status == Status.CANCELLED and job.status == Status.CANCELLED
    assert seconds < 10 and drawn < MAX_TEST_PROMPTS // 2
    assert ended.scores is None  # a score of some of the prompts is not the checkpoint's


def test_a_job_queued_before_the_limits_fails_at_once_with_the_field_named_and_is_not_queued_again(
        tmp_path: Path) -> None:
    """A job written when test prompts had no limit (the queue, job.json and the record hold 100 of them): run after a
    restart it fails in seconds naming the field, where it held the slot for one assessment per checkpoint; Resume
    refuses it the same way."""
    data_dir = tmp_path / "data"
    workflow = Workflow(AppSettings(data_dir=data_dir, base_model="tiny"), start_worker=False)
    try:
        workflow.add_photos(photo_factory.portrait_set(tmp_path / "photos", 6))
        record = workflow.start_training(TrainSettings.quick(name="unbounded", steps=2), anyway=True)
        [job] = workflow.jobs.list()
        unbounded = {**job.payload["settings"], "test_prompts": ["{trigger}"] * 100}
        workflow.library.update(record.id, settings=unbounded)
        runner = workflow.training_runner()
        started = time.monotonic()
        with pytest.raises(TrainingNotStarted, match="^test_prompts: at most 32"):
            runner.run(TrainingJobSpec.from_dict({**job.payload, "settings": unbounded}), device="cpu",
                       should_stop=ev.never, shutting_down=lambda: False)
        seconds = time.monotonic() - started
        failed = workflow.model(record.id)
        with pytest.raises(SettingsError, match="^test_prompts:"):
            workflow.resume_training(record.id)
    finally:
        workflow.close()
    assert seconds < 10 and failed.status == Status.FAILED and failed.error.startswith("test_prompts: at most 32")


def _mount_namespace() -> list[str]:
    """``unshare -m`` as root, ``unshare -rm`` (a user namespace) elsewhere; skip where neither may mount a tmpfs
    (a container may allow the namespace and still refuse the mount)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small tmpfs as the full disk")
    probe = 'd="$(mktemp -d)" || exit 1; mount -t tmpfs likeness-probe "$d"; ok=$?; umount "$d"; rmdir "$d"; exit $ok'
    for command in (["unshare", "-m"], ["unshare", "-rm"]):
        if subprocess.run([*command, "--", "sh", "-c", probe], capture_output=True, timeout=60).returncode == 0:
            return command
    pytest.skip("this machine allows no tmpfs mount in a private mount namespace (unshare -m / -rm)")


def _full_disk(mode: str, tmp_path: Path) -> dict[str, Any]:
    if mode == "tmpfs":
        disk = tmp_path / "disk"
        disk.mkdir()
        command = [*_mount_namespace(), "--", "sh", "-c", 'mount -t tmpfs -o size=32m likeness-full "$0" && exec "$@"',
                   str(disk), sys.executable, str(FULL_DISK_SCENARIO), mode, str(disk)]
    else:
        command = [sys.executable, str(FULL_DISK_SCENARIO), mode, str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tmpfs", "fsize"])
def test_a_disk_that_fills_mid_training_ends_it_failed_everywhere_and_resume_works_once_there_is_room(
        tmp_path: Path, mode: str) -> None:
    """tests/full_disk_scenario.py: a 32 MB tmpfs filled up, or a file-size limit below the library's file, once a
    training has begun. Neither the library nor the queue can write the end, and it ends anyway."""
    facts = _full_disk(mode, tmp_path)
    print({key: facts[key] for key in ("seconds_to_end", "model", "job", "stored_while_full")})
    assert facts["began"]
    # Failed in seconds, in what the library and the queue show, while their files still say "training": the end is
    # kept in memory.
    assert facts["model"]["status"] == "failed" and facts["seconds_to_end"] < 30
    assert facts["job"] == ["failed"] and facts["kept_in_memory"] and facts["stored_while_full"] == ["training"]
    reason = "the data disk is full: 0 MB free" if mode == "tmpfs" else "a file is larger than the app may write"
    assert reason in facts["model"]["error"] and "press Resume" in facts["model"]["error"]
    # What the page and the API answer meanwhile: what failed and what to free (not {"error": null}), no server path.
    for answer in facts["answers"].values():
        assert answer["type"] == "DiskError", answer
        assert answer["text"].startswith("could not ") and reason in answer["text"] and "free some" in answer["text"]
        assert str(tmp_path) not in answer["text"]
    # Room again: the ends are written, and Resume trains the model to the end.
    assert facts["saved_once_room"] and facts["job_saved_once_room"]
    assert facts["resume"]["type"] == "ok" and facts["after_resume"] == "ready"


@pytest.mark.slow
def test_the_disk_quota_is_measured_as_a_training_writes_and_stops_it_with_the_reason(tmp_path: Path) -> None:
    """A person's 3 MB quota; the training's checkpoints and test images would take ~6 MB: it stops at the quota,
    failed with the reason, where it used to grow the workspace past it unchecked."""
    quota_gb = 0.003
    person = tmp_path / "person"
    workflow = Workflow(AppSettings(data_dir=tmp_path / "shared", base_model="tiny", disk_per_person_gb=quota_gb),
                        workspace="user-anna", folder=person)
    try:
        workflow.add_photos(photo_factory.portrait_set(tmp_path / "photos", 6))
        record = workflow.start_training(TrainSettings.quick(name="big", steps=40, checkpoint_every=5,
                                                             keep_checkpoints=50, sample_every=1000), anyway=True)
        queued = folder_size(person)
        ended = workflow.wait_for(record.id, timeout=600)
        [job] = workflow.jobs.for_model(record.id)
        used = folder_size(person)
    finally:
        workflow.close()
    print(f"workspace {queued / 1e6:.2f} MB when queued, {used / 1e6:.2f} MB at the end, quota {quota_gb * 1e3:g} MB")
    assert queued < quota_gb * 1e9 / 2
    assert ended.status == Status.FAILED and job.status == Status.FAILED
    assert "disk quota" in ended.error and "press Resume" in ended.error
    assert used <= quota_gb * 1e9

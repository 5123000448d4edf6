"""The workflow on the tiny model: one training at a time, a queue that survives a restart, cancel, e-mail."""

from __future__ import annotations

import email
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from email import policy
from pathlib import Path

import photo_factory
import pytest
from aiosmtpd.controller import Controller

from pipeline.settings import AppSettings, SmtpSettings, TrainSettings
from pipeline.workflow import Workflow


@pytest.fixture()
def photos(tmp_path: Path) -> list[Path]:
    return photo_factory.portrait_set(tmp_path / "photos", 6)


def _workflow(data_dir: Path, photos: list[Path], **kwargs) -> Workflow:
    workflow = Workflow(AppSettings(data_dir=data_dir, base_model="tiny", **kwargs))
    if not workflow.list_photos():
        workflow.add_photos(photos)
    return workflow


def _quick(**overrides: object) -> TrainSettings:
    """The tiny model's quick run, its checkpoints assessed on one test prompt instead of eight: these tests are
    about the queue and the files, not the scores (the test of test prompts below keeps its own)."""
    return TrainSettings.quick(**{"test_prompts": ("{trigger}",), **overrides})


def _wait(condition, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_one_training_at_a_time_and_the_queue_survives_a_restart(tmp_path: Path, photos: list[Path]) -> None:
    data_dir = tmp_path / "data"
    workflow = _workflow(data_dir, photos)
    classification = workflow.classify()
    # 100 steps: long enough that it is still running when the test shuts down at step 15 (its checks are quick).
    first = workflow.start_training(_quick(name="first", steps=100, checkpoint_every=10,
                                                        sample_every=1000), classification=classification, anyway=True)
    second = workflow.start_training(_quick(name="second", steps=5, checkpoint_every=5,
                                                         sample_every=1000), classification=classification, anyway=True)

    def first_step() -> int:
        step = workflow.training_view(first.id).last_step
        return step.step if step else 0

    _wait(lambda: first_step() >= 15)
    assert workflow.jobs_ahead(second.id) == 1
    assert workflow.library.get(second.id).status == "queued"

    # Shut down mid-training: the model waits again instead of being marked cancelled.
    workflow.close()
    assert workflow.library.get(first.id).status == "queued"

    restarted = _workflow(data_dir, photos)
    try:
        assert restarted.wait_for(first.id, timeout=300).status == "ready"
        assert restarted.wait_for(second.id, timeout=300).status == "ready"
        log = "\n".join(restarted.training_view(first.id).log)
        assert "resuming from the checkpoint at step" in log
        # What was logged before the restart is still there (the journal on disk), and the loss curve goes on.
        assert "interrupted by shutdown" in log
        steps = [step for step, _, _ in restarted.training_view(first.id).losses]
        assert steps[0] == 1 and steps[-1] == 100
        jobs = {job.model_id: job for job in restarted.jobs.list()}
        # The interrupted training ran again first, and the two never overlapped.
        assert jobs[first.id].finished_at <= jobs[second.id].started_at
    finally:
        restarted.close()


def test_cancel_a_queued_and_a_running_training(tmp_path: Path, photos: list[Path]) -> None:
    workflow = _workflow(tmp_path / "data", photos)
    try:
        classification = workflow.classify()
        running = workflow.start_training(_quick(name="long", steps=500, checkpoint_every=5,
                                                              sample_every=1000),
                                          classification=classification, anyway=True)
        waiting = workflow.start_training(_quick(name="waiting", steps=5),
                                          classification=classification, anyway=True)
        _wait(lambda: 5 in workflow.training_view(running.id).checkpoints)
        workflow.cancel_training(waiting.id)
        assert workflow.library.get(waiting.id).status == "cancelled"
        workflow.cancel_training(running.id)
        record = workflow.wait_for(running.id, timeout=120)
        assert record.status == "cancelled"
        # The last checkpoint is kept on disk.
        assert [c["step"] for c in record.checkpoints]
        assert all((workflow.data_dir / c["path"]).exists() or Path(c["path"]).exists() for c in record.checkpoints)
        with pytest.raises(ValueError, match="only a stopped or failed"):
            workflow.resume_training(workflow.library.create("other", "tiny", {}).id)
        # Resume: shorten the run so the test ends soon; it continues from the kept checkpoint.
        last = max(c["step"] for c in record.checkpoints)
        workflow.library.update(running.id, settings={**record.settings, "steps": last + 5})
        workflow.resume_training(running.id)
        assert workflow.wait_for(running.id, timeout=240).status == "ready"
        assert f"resuming from the checkpoint at step {last}" in "\n".join(workflow.training_view(running.id).log)
    finally:
        workflow.close()


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's hook name
        self.messages.append(email.message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


def test_an_email_arrives_when_training_ends(tmp_path: Path, photos: list[Path]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        smtp = SmtpSettings(host="127.0.0.1", port=port, starttls=False, sender="likeness@localhost",
                            recipient="me@example.org")
        workflow = _workflow(tmp_path / "data", photos, smtp=smtp)
        try:
            prompts = ("{trigger} at the beach", "a pencil sketch of {trigger}")
            record = workflow.start_training(TrainSettings.quick(name="mailed", steps=6, checkpoint_every=3,
                                                                 test_prompts=prompts), anyway=True)
            assert workflow.wait_for(record.id, timeout=240).status == "ready"
            # The user's test prompts, not the built-in set, were generated for each checkpoint.
            step_dir = Path(record.folder) / "assessment" / "step_000003"
            made = sorted(p.name for p in step_dir.glob("*.png") if p.name != "grid.png")
            assert len(made) == len(prompts), made
            _wait(lambda: inbox.messages, timeout=30)
        finally:
            workflow.close()
    finally:
        controller.stop()
    message = inbox.messages[0]
    assert "mailed" in message["Subject"]
    assert message["To"] == "me@example.org"
    body = message.get_body(("plain",)).get_content()
    assert record.trigger_word in body


def test_an_earlier_best_checkpoint_is_what_the_library_serves_in_both_formats(tmp_path: Path,
                                                                              photos: list[Path]) -> None:
    """When the measurement prefers an earlier checkpoint, the model's LoRA and its kohya file are that one."""
    import dataclasses

    from pipeline.events import CheckpointAssessed, CheckpointSaved
    from pipeline.intake.dataset import Dataset
    from pipeline.models.base_model import is_embedded
    from pipeline.models.lora_formats import read_metadata
    from pipeline.status import Status
    from pipeline.training.job import CheckpointAssessor
    from pipeline.training.trainer import CheckpointInfo, TrainResult

    workflow = _workflow(tmp_path / "data", photos)
    try:
        record = workflow.start_training(TrainSettings.quick(name="early", steps=6, checkpoint_every=3,
                                                             test_prompts=("{trigger}",)), anyway=True)
        record = workflow.wait_for(record.id, timeout=240)
        assert record.status == "ready"
        folder = Path(record.folder)
        lora = folder / "lora" / "lora.safetensors"
        early = next(Path(c["path"]) for c in record.checkpoints if c["step"] == 3)
        early = early if early.is_absolute() else workflow.data_dir / early
        result = TrainResult(status=Status.COMPLETED, lora_path=lora,
                             kohya_path=folder / "lora" / "lora_kohya.safetensors",
                             checkpoints=(CheckpointInfo(3, early), CheckpointInfo(6, lora)), steps_done=6,
                             final_loss=None, losses=())
        seen = []
        assessor = CheckpointAssessor(workflow.generator, trigger_word=record.trigger_word,
                                      dataset=Dataset.load(folder / "dataset"),
                                      settings=workflow.test_generate_settings(64), out_dir=folder / "assessment",
                                      embedded=is_embedded(workflow.base_model), on_event=seen.append,
                                      prompts=("{trigger}",))
        assessor.on_training_event(CheckpointSaved(3, early))
        assert seen[-1] == CheckpointAssessed(3, assessor.results[3].likeness, assessor.results[3].overall)
        assessor.results[3] = dataclasses.replace(assessor.results[3], overall=99.0)  # step 3 measured best
        chosen = assessor.choose(result)
    finally:
        workflow.close()
    assert chosen.best_checkpoint_step == 3 and chosen.scores.by_checkpoint[3] == 99.0
    assert chosen.lora_path == early
    kohya = chosen.kohya_path
    assert kohya.name == "lora_best_kohya.safetensors" and kohya.is_file()
    assert read_metadata(kohya)["likeness.trigger_word"] == record.trigger_word


def test_a_training_without_disk_space_fails_with_the_reason_and_the_queue_goes_on(tmp_path: Path,
                                                                                  photos: list[Path]) -> None:
    import dataclasses

    full = _workflow(tmp_path / "data", photos, min_free_disk_gb=1e9)  # more than any disk has: "the disk is full"
    try:
        record = full.start_training(_quick(name="no-room", steps=2, sample_every=1000), anyway=True)
        record = full.wait_for(record.id, timeout=120)
        assert record.status == "failed" and "GB free" in record.error and "Resume" in record.error
        assert full.jobs.for_model(record.id)[0].status == "failed"
        assert full.jobs.running  # the worker is still there for the next training
    finally:
        full.close()
    # With room again, Resume trains it to the end.
    roomy = Workflow(dataclasses.replace(full.settings, min_free_disk_gb=0.0))
    try:
        roomy.resume_training(record.id)
        assert roomy.wait_for(record.id, timeout=240).status == "ready"
    finally:
        roomy.close()


def test_a_lora_write_the_disk_refuses_says_what_failed_and_what_to_free(tmp_path: Path) -> None:
    """safetensors' writer under a real file-size limit (RLIMIT_FSIZE) raises SafetensorError, a plain Exception
    with "(os error 27)" only in its text: a method that writes to the data dir says so as a DiskError."""
    script = textwrap.dedent(
        f"""
        import json, resource
        from pathlib import Path
        import torch
        from pipeline.storage.disk import DiskError
        from pipeline.models.lora_formats import save_lora_file
        from pipeline.settings import AppSettings
        from pipeline.workflow import Workflow, _writes

        class SavesALora(Workflow):
            @_writes("save the model")
            def save_lora(self) -> None:
                save_lora_file(self.data_dir / "lora.safetensors", {{"w": torch.zeros(4096)}}, {{}})

        workflow = SavesALora(AppSettings(data_dir=Path({str(tmp_path / "data")!r}), base_model="tiny"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
        try:
            workflow.save_lora()
            answer = None
        except DiskError as exc:
            answer = [str(exc), type(exc.__cause__).__name__]
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        workflow.close()
        print(json.dumps(answer))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    text, cause = json.loads(run.stdout.strip().splitlines()[-1])
    assert cause == "SafetensorError"
    assert text.startswith("could not save the model: a file is larger than the app may write") and "free some" in text
    assert str(tmp_path) not in text


@pytest.mark.parametrize("damage", [b"", b'{"models": []}', bytes(range(256)) * 4, b"[1, 2, 3]"])
def test_a_damaged_library_is_set_aside_and_rebuilt_from_the_model_folders(tmp_path: Path, photos: list[Path],
                                                                           damage: bytes) -> None:
    data_dir = tmp_path / "data"
    workflow = _workflow(data_dir, photos)
    try:
        record = workflow.start_training(_quick(name="Zoë's model", steps=4, checkpoint_every=2,
                                                             sample_every=1000), anyway=True)
        record = workflow.wait_for(record.id, timeout=240)
        assert record.status == "ready"
    finally:
        workflow.close()
    (data_dir / "library.json").write_bytes(damage)

    restarted = _workflow(data_dir, photos)
    try:
        backups = list(data_dir.glob("library.json.damaged-*"))
        assert len(backups) == 1 and backups[0].read_bytes() == damage  # the bytes are kept for a person to read
        assert any("library.json" in n and "recovered" in n for n in restarted.notices), restarted.notices
        again = restarted.library.get(record.id)
        assert (again.name, again.trigger_word, again.status) == ("Zoë's model", record.trigger_word, "ready")
        # The final LoRA (which checkpoint was best lived in the lost library; the notice says scores are gone).
        assert again.lora_path == record.folder / "lora" / "lora.safetensors" and again.lora_path.is_file()
        assert again.base_model == "tiny"
    finally:
        restarted.close()


def test_a_lost_queue_marks_waiting_models_failed_so_they_can_resume(tmp_path: Path, photos: list[Path]) -> None:
    data_dir = tmp_path / "data"
    workflow = _workflow(data_dir, photos)
    workflow.jobs.stop()  # nothing runs: the model stays queued
    record = workflow.start_training(_quick(name="waiting", steps=2, sample_every=1000), anyway=True)
    (data_dir / "jobs.json").write_bytes(b"\x00garbage")
    restarted = _workflow(data_dir, photos)
    try:
        assert list(data_dir.glob("jobs.json.damaged-*"))
        failed = restarted.library.get(record.id)
        assert failed.status == "failed" and "Resume" in failed.error
        assert any("jobs.json" in n for n in restarted.notices) and any("waiting" in n for n in restarted.notices)
        restarted.resume_training(record.id)
        assert restarted.wait_for(record.id, timeout=240).status == "ready"
    finally:
        restarted.close()


def test_test_images_of_deleted_checkpoints_are_pruned_with_them(tmp_path: Path, photos: list[Path]) -> None:
    workflow = _workflow(tmp_path / "data", photos)
    try:
        record = workflow.start_training(_quick(name="pruned", steps=10, checkpoint_every=2,
                                                             keep_checkpoints=2, sample_every=1000), anyway=True)
        assert workflow.wait_for(record.id, timeout=300).status == "ready"
        folder = Path(record.folder)
        kept = sorted(int(p.name.split("-")[1]) for p in (folder / "lora" / "checkpoints").iterdir())
        assessed = sorted(int(p.name.split("_")[1]) for p in (folder / "assessment").iterdir()
                          if p.name.startswith("step_"))
        assert kept == [8, 10]
        assert set(assessed) <= {8, 10} and 10 in assessed  # not one folder per checkpoint ever made (2, 4, 6)
        # The live curve still shows every checkpoint that was measured.
        assert [s for s, _, _ in workflow.training_view(record.id).assessments][:5] == [2, 4, 6, 8, 10]
    finally:
        workflow.close()


def test_a_set_that_is_not_ready_is_refused_with_the_reason(tmp_path: Path, photos: list[Path]) -> None:
    from pipeline.workflow import NotReady

    workflow = _workflow(tmp_path / "data", photos)
    try:
        with pytest.raises(NotReady, match="Not ready: only 6 usable photo"):
            workflow.start_training(TrainSettings.quick(name="too-few", steps=2))
        assert workflow.library.list() == [] and workflow.jobs.list() == []  # nothing was created or queued
    finally:
        workflow.close()


def test_the_disk_quota_is_checked_photo_by_photo_as_an_upload_is_stored(tmp_path: Path, photos: list[Path]) -> None:
    """A 0.25 MB quota and six ~75 KB photos in one upload: the photos that fit are stored, the rest refused with the
    reason, where the whole batch used to be stored once the workspace was under the quota when it began."""
    from pipeline.workflow import folder_size

    quota_gb = 0.00025
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny", disk_per_person_gb=quota_gb))
    try:
        result = workflow.add_photos(photos)
        used = folder_size(workflow.data_dir)
    finally:
        workflow.close()
    assert 0 < len(result.accepted) < len(photos)
    assert {r.code for r in result.rejected} == {"over_quota"} and len(result.rejected) == len(photos) - len(
        result.accepted)
    assert "past the 0.00025 GB each person may use" in result.rejected[0].message
    assert used <= quota_gb * 1e9

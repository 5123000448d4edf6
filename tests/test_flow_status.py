"""The step guide's content, from a real workspace: photos, their check, the user's decisions, the models, the
devices (issue 33, item 3: each statement it got wrong has its test here)."""

from __future__ import annotations

from pathlib import Path

import photo_factory
import pytest

from pipeline.flow_status import Step, flow_status, guide_state, where_trainings_run
from pipeline.intake.classify import photos_to_add
from pipeline.jobs.queue import JobQueue
from pipeline.models.hardware import gpu_may_be_present
from pipeline.settings import AppSettings, ClassifySettings, TrainSettings
from pipeline.status import Status
from pipeline.workflow import Workflow
from ui.steps import render, tab_labels


def _blurred(path: Path, seed: int) -> Path:
    path.write_bytes(photo_factory.jpeg_bytes(photo_factory.blurred(
        photo_factory.portrait_variants(photo_factory.astronaut(), photo_factory.ASTRONAUT_FACE, 1, seed=seed)[0])))
    return path


def _check(workflow: Workflow) -> None:
    """What the Upload tab does after every upload: the set is checked, so a check says nothing about Review."""
    workflow.last_classification = workflow.classify()


@pytest.mark.parametrize(("devices", "words"), [(("cpu",), "the CPU"), (("cuda:0",), "the GPU"),
                                                 (("cuda:0", "cuda:1"), "2 GPUs"), (("ray-0", "ray-1"),
                                                                                    "the Ray cluster")])
def test_the_device_in_words(devices: tuple[str, ...], words: str) -> None:
    assert where_trainings_run(devices) == words


@pytest.mark.parametrize("devices", [("cpu",), ("cuda:0",)])
def test_a_queued_training_waits_for_the_queues_own_device(tmp_path: Path, devices: tuple[str, ...]) -> None:
    """It said "waiting for the GPU" on a machine with no GPU."""
    queue = JobQueue(tmp_path / "data", lambda job, stop: None, autostart=True, devices=devices)
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), jobs=queue)
    try:
        workflow.library.create("waiting", "tiny", {})  # a model in "queued" (no job: the worker leaves it be)
        training = guide_state(workflow).state(Step.TRAINING)
        assert training.note == f"waiting for {where_trainings_run(devices)}" and not training.done
    finally:
        workflow.close()
        queue.stop()


def test_before_the_queue_starts_the_device_is_this_machines(tmp_path: Path) -> None:
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), start_worker=False)
    try:
        note = guide_state(workflow).state(Step.TRAINING).note
        if not gpu_may_be_present():  # this machine, as pipeline.models.hardware sees it
            assert note == "not started; trains on the CPU"
        assert "trains on the " in note
    finally:
        workflow.close()


def test_the_guide_numbers_its_steps_as_the_tabs_are_numbered(tmp_path: Path) -> None:
    """It numbered its own steps 1–4 (Photos, Review, Train, Model) beside tabs numbered 1–6."""
    import app
    from pipeline.people.workspaces import Workspaces
    from ui.people import People

    workspaces = Workspaces(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), start_worker=False)
    try:
        demo = app.build_app(People(workspaces, per_person=False))
        labels = tab_labels(demo)
        assert labels == {Step.UPLOAD: "1 · Upload", Step.REVIEW: "3 · Review", Step.TRAINING: "4 · Training",
                          Step.MODELS: "6 · Models"}
        line = render(guide_state(workspaces.local), labels)
        wide, narrow = line.split("</div>", 1)
        for label in labels.values():
            assert label in wide and label in narrow  # the wide line, and the phone's folded list
        assert "👉 <strong>1 · Upload</strong>" in wide and "<summary>👉 <strong>1 · Upload</strong>" in narrow
    finally:
        workspaces.close()


def test_the_guide_counts_what_the_tabs_count(tmp_path: Path) -> None:
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), start_worker=False)
    try:
        status = guide_state(workflow)
        assert status.current is Step.UPLOAD and status.steps[0].note == "add 15–20 photos of one person"

        # Ten good photos, checked as every upload is checked.
        workflow.add_photos(photo_factory.portrait_set(tmp_path / "good", 10))
        _check(workflow)
        assert len(workflow.last_classification.selected) == 10
        status = guide_state(workflow)
        # Not ticked: the person has not been near the Review tab (it was ticked here, before Review was opened).
        review = status.state(Step.REVIEW)
        assert not review.done and review.note == "10 selected: look them over, then train"

        # Two blurred ones: left out by the check, nothing waits for the person's decision.
        workflow.add_photos([_blurred(tmp_path / "blurred_a.jpg", 9), _blurred(tmp_path / "blurred_b.jpg", 11)])
        _check(workflow)
        result = workflow.last_classification
        assert len(result.selected) == 10 and len(result.records) == 12
        status = guide_state(workflow)
        review = status.state(Step.REVIEW)
        assert review.note == "10 selected, 2 left out: look them over, then train"  # was "2 photos need your decision"
        assert "decision" not in render(status, {})

        # The photos still to add: the usable ones count, as in the summary the Upload tab shows (the guide
        # counted uploads: "12 photos: 3 more recommended" beside "add 5 more").
        missing = photos_to_add(10, ClassifySettings())
        assert missing == 5 and f"add {missing} more" in result.report.summary
        upload = status.state(Step.UPLOAD)
        assert upload.note == "12 photos, 10 usable: add 5 more" and not upload.done

        # Review is done once a training took this selection; the queue here has not started: this machine's device.
        record = workflow.start_training(TrainSettings.quick(name="guide", steps=3, checkpoint_every=3,
                                                             sample_every=1000))
        status = guide_state(workflow)
        assert status.state(Step.REVIEW).done and status.state(Step.REVIEW).note == "10 selected, 2 left out"
        assert status.state(Step.TRAINING).note.startswith("waiting for the ")
        if not gpu_may_be_present():
            assert status.state(Step.TRAINING).note == "waiting for the CPU"

        # A photo more: that training's selection is no longer the set's, so Review waits for a look again.
        workflow.add_photos(photo_factory.portrait_set(tmp_path / "more", 1, seed=5))
        assert guide_state(workflow).state(Step.REVIEW).note == "check the photos"  # that check was of another set
        _check(workflow)
        assert not guide_state(workflow).state(Step.REVIEW).done

        workflow.library.update(record.id, status=Status.READY)
        status = guide_state(workflow)
        assert status.state(Step.TRAINING).done and status.state(Step.MODELS).note == "1 model ready"
        assert status.current is Step.UPLOAD  # photos still missing: that step is current
    finally:
        workflow.close()


def test_not_ready_says_so_and_how_many_to_add() -> None:
    """A set too small to train on: the guide gives the summary's "at least" and its number."""
    from pipeline.intake.classify import ClassificationResult, DatasetReport, PhotoRecord, Readiness

    names = [f"p{i}.jpg" for i in range(8)]
    records = tuple(PhotoRecord(file=n, path=None, verdict="keep" if i < 6 else "reject", reasons=(), score=None)
                    for i, n in enumerate(names))
    result = ClassificationResult(records, tuple(names[:6]), DatasetReport(
        total=8, counts={}, reasons={}, readiness=Readiness.NOT_READY, summary=""))
    status = flow_status(names, result, [], runs_on="the CPU")
    assert status.state(Step.UPLOAD).note == "8 photos, 6 usable: add at least 9 more"
    assert status.state(Step.REVIEW).note == "not ready: 6 selected, 2 left out"


@pytest.mark.parametrize(("status", "note"), [(Status.TRAINING, "training on the GPU…"),
                                              (Status.ASSESSING, "assessing on the GPU…"),
                                              (Status.QUEUED, "waiting for the GPU"),
                                              (Status.FAILED, "the last run failed: see why there")])
def test_a_trainings_state_names_where_it_runs(tmp_path: Path, status: Status, note: str) -> None:
    from pipeline.library.catalog import ModelRecord

    model = ModelRecord(id="m1", name="m", trigger_word="w", base_model="tiny", status=status, folder=tmp_path,
                        created_at="2026-12-07T06:00:00")
    assert flow_status([], None, [model], runs_on="the GPU").state(Step.TRAINING).note == note

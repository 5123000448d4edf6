"""A video is a job on the GPU queue (issue 36): a real tiny training and real tiny clips on one queue run one
after the other in the order they were asked for; a queued clip can be cancelled; a restart does not run a clip
again; and a clip can start from one of the person's own generations, never from a file outside their workspace."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import face_probes
import numpy as np
import photo_factory
import pytest
import torch
from lora_factory import make_lora

from pipeline.assessment.assess import reference_embeddings
from pipeline.assessment.likeness import save_person
from pipeline.events import Progress
from pipeline.generation.generator import Generator
from pipeline.jobs.queue import Job, JobKind, JobNotFound, JobQueue
from pipeline.settings import AppSettings, GenerateSettings, TrainSettings
from pipeline.status import Status
from pipeline.video import i2v
from pipeline.video.i2v import VideoModels
from pipeline.video.job import VideoMonitor, waiting_text
from pipeline.workflow import QueueEntry, Workflow

Run = tuple[JobKind, str, float, float]  # kind, job id, start, end (monotonic)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny models on one thread (quicker on two busy cores), and the thread count given back afterwards: the
    tests after these in the same process keep theirs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ready_model(workflow: Workflow, name: str = "astro") -> str:
    """A ready model in seconds: a random LoRA and the astronaut as its person (as tests/test_video_i2v.py)."""
    record = workflow.library.create(name, "tiny", {})
    lora = make_lora(workflow.generator().pipeline, Path(record.folder) / "lora")
    person = reference_embeddings(face_probes.reference_views("astronaut", 3)).mean(axis=0)
    save_person(Path(record.folder), person / np.linalg.norm(person), name)
    workflow.library.update(record.id, status=Status.READY, lora_path=lora)
    return record.id


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[Workflow, JobQueue, list[Run]]]:
    """A workflow on the tiny model whose queue (one worker, not started yet) records when each job ran: the
    workflow's own runner, timed."""
    runs: list[Run] = []
    flows: list[Workflow] = []

    def timed(job: Job, should_stop) -> None:
        start = time.monotonic()
        try:
            flows[0].run_job(job, should_stop)
        finally:
            runs.append((job.kind, job.id, start, time.monotonic()))

    data_dir = tmp_path / "data"
    queue = JobQueue(data_dir, timed, autostart=False, devices=("cpu",))
    flows.append(Workflow(AppSettings(data_dir=data_dir, base_model="tiny"), jobs=queue, start_worker=False))
    yield flows[0], queue, runs
    flows[0].close()


def test_a_video_and_a_training_queued_together_run_one_after_the_other(
        recorded: tuple[Workflow, JobQueue, list[Run]], tmp_path: Path) -> None:
    workflow, queue, runs = recorded
    model_id = _ready_model(workflow)
    workflow.add_photos(photo_factory.portrait_set(tmp_path / "photos", 6))
    clip = {"prompt": "a portrait photo of {trigger}", "prompt_b": "turns head slowly", "frames": 5, "fps": 5,
            "video_model": "tiny"}
    # Asked for in this order: a clip, a training, a clip, and one more clip that is cancelled while it waits.
    first = workflow.queue_video(model_id, **clip)
    training = workflow.start_training(TrainSettings.quick(name="t", steps=4, checkpoint_every=2, sample_every=1000,
                                                           test_prompts=("{trigger}",)), anyway=True)
    second = workflow.queue_video(model_id, **clip, seed=3)
    cancelled = workflow.queue_video(model_id, **clip, seed=4)
    assert [job.kind for job in queue.list()] == [JobKind.VIDEO, JobKind.TRAIN, JobKind.VIDEO, JobKind.VIDEO]
    queue.start()

    seen: list[str] = []
    for update in workflow.follow_video(second.id, poll=0.05):
        seen.append(update.text)
        if update.text == "waiting: a training is running, position 1" and seen.count(update.text) == 1:
            # Cancel while it waits: it ends at once, and its page is told so.
            assert workflow.cancel_video(cancelled.id).status == Status.CANCELLED
            told = list(workflow.follow_video(cancelled.id))
            assert [u.status for u in told] == [Status.CANCELLED] and "nothing was kept" in told[0].error
    result = update.result
    assert update.status == Status.DONE, update.error
    assert update.status == Status.DONE and result is not None and result.video.is_file()
    assert "waiting: a training is running, position 1" in seen  # the clip said what it waited for
    assert queue.wait_idle(120)

    # Run in the order asked for, one at a time: each starts after the one before it ended; the cancelled one never.
    assert [(kind, job_id) for kind, job_id, _s, _e in runs] == [
        (JobKind.VIDEO, first.id), (JobKind.TRAIN, _train_job(queue)), (JobKind.VIDEO, second.id)]
    assert all(before[3] <= after[2] for before, after in itertools.pairwise(runs))
    assert {job.id: job.status for job in queue.list()} == {first.id: Status.DONE, _train_job(queue): Status.DONE,
                                                           second.id: Status.DONE, cancelled.id: Status.CANCELLED}
    assert workflow.model(training.id).status == Status.READY
    assert len(list((workflow.data_dir / "videos").glob("*.mp4"))) == 2  # the cancelled clip left no file
    # A video waits in line but is no training: the Training tab's count and per-person limit leave it out.
    assert workflow.jobs_ahead(model_id) is None


def _train_job(queue: JobQueue) -> str:
    [job] = [job for job in queue.list() if job.kind == JobKind.TRAIN]
    return job.id


def test_cancel_stops_a_running_clip_between_two_steps(tmp_path: Path) -> None:
    """Cancel pressed while the clip runs (here: as its second step is asked whether to stop): it ends there, the
    queue records it cancelled, the page is told, and no file is left."""
    flows: list[Workflow] = []
    asked: list[int] = []

    def runner(job: Job, should_stop) -> None:
        def stop() -> bool:
            asked.append(1)
            if len(asked) == 2:
                flows[0].cancel_video(job.id)  # the page's Cancel, from the worker's thread at a known point
            return should_stop()
        flows[0].run_job(job, stop)

    data_dir = tmp_path / "data"
    queue = JobQueue(data_dir, runner, autostart=False, devices=("cpu",))
    flows.append(Workflow(AppSettings(data_dir=data_dir, base_model="tiny"), jobs=queue, start_worker=False))
    workflow = flows[0]
    try:
        picked = workflow.generate(None, GenerateSettings(prompt="a face", steps=2, width=64, height=64))[0]
        job = workflow.queue_video(None, prompt="a face", frames=5, fps=5, video_model="tiny",
                                   still=picked.relative_to(data_dir).as_posix())  # no still to draw: steps only
        queue.start()
        *_, last = workflow.follow_video(job.id, poll=0.05)
        assert last.status == Status.CANCELLED and "video stopped after step 2 of 4" in last.error
        assert queue.wait_idle(30) and queue.get(job.id).status == Status.CANCELLED
        assert not list((data_dir / "videos").glob("*"))
    finally:
        workflow.close()


def test_a_morph_cancelled_while_it_runs_keeps_nothing_and_its_monitors_are_freed(tmp_path: Path) -> None:
    """A morph writes its MP4 frame by frame: Cancel at its second frame ends it there, and the queue, the page and
    the videos folder agree: cancelled, nothing kept. A clip nobody follows leaves no monitor behind once made."""
    flows: list[Workflow] = []
    asked: list[int] = []
    cancelled_at = threading.Event()

    def runner(job: Job, should_stop) -> None:
        def stop() -> bool:
            if job.id == followed.id:
                asked.append(1)
                if len(asked) == 2:
                    flows[0].cancel_video(job.id)  # the page's Cancel, from the worker's thread at a known point
                    cancelled_at.set()
            return should_stop()
        flows[0].run_job(job, stop)

    data_dir = tmp_path / "data"
    queue = JobQueue(data_dir, runner, autostart=False, devices=("cpu",))
    video_models = VideoModels(data_dir)
    flows.append(Workflow(AppSettings(data_dir=data_dir, base_model="tiny"), jobs=queue, start_worker=False,
                          video_models=video_models))
    workflow = flows[0]
    try:
        unfollowed = workflow.queue_video(None, prompt="a face", frames=3, fps=5, video_model="morph")
        followed = workflow.queue_video(None, prompt="a face", frames=6, fps=5, video_model="morph")
        queue.start()
        *_, last = workflow.follow_video(followed.id, poll=0.05)
        assert cancelled_at.is_set()
        assert last.status == Status.CANCELLED and last.result is None
        assert "video stopped (2 of 6 frames made): nothing was kept" in last.error
        assert queue.wait_idle(60) and queue.get(followed.id).status == Status.CANCELLED
        assert queue.get(unfollowed.id).status == Status.DONE
        assert len(list((data_dir / "videos").glob("*.mp4"))) == 1  # the unfollowed clip's; none of the cancelled
        assert unfollowed.id not in video_models.monitors and followed.id not in video_models.monitors
    finally:
        workflow.close()


def test_a_clip_is_not_run_again_after_a_restart_a_training_is(tmp_path: Path) -> None:
    """Chosen: a clip waiting or running when the app stopped is marked failed with why (the page that asked for it
    is gone, and it would hold the GPU for minutes before the trainings behind it); a training resumes."""
    release = threading.Event()

    def hold(job: Job, should_stop) -> None:
        while not should_stop() and not release.is_set():
            time.sleep(0.01)

    before = JobQueue(tmp_path, hold, devices=("cpu",))
    running = before.submit("m1", {"workspace": "local"}, JobKind.VIDEO)
    waiting = before.submit("m1", {"workspace": "local"}, JobKind.VIDEO)
    training = before.submit("m2", {"workspace": "local"})
    deadline = time.monotonic() + 10
    while before.get(running.id).status != Status.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert before.stop(timeout=10)  # the app stops: the running clip is interrupted

    ran: list[JobKind] = []
    after = JobQueue(tmp_path, lambda job, _stop: ran.append(job.kind), devices=("cpu",))
    try:
        assert after.wait_idle(10)
    finally:
        after.stop()
    for job_id in (running.id, waiting.id):
        job = after.get(job_id)
        assert job.status == Status.FAILED and "restarted before this video job finished" in job.error
    assert after.get(training.id).status == Status.DONE and ran == [JobKind.TRAIN]


def test_a_running_clip_says_its_step_and_the_time_left() -> None:
    now = [10.0]
    monitor = VideoMonitor(clock=lambda: now[0])
    assert monitor.update().text == "starting"
    monitor.on_event(Progress("generate", 1, 4, "step 1 of 4"))
    now[0] += 30
    monitor.on_event(Progress("video", 1, 4, "video model: step 1 of 4"))  # a new stage: its own clock
    assert monitor.seconds_left() is None  # one report: step 1's time is not known (it began before the report)
    now[0] += 6
    monitor.on_event(Progress("video", 2, 4, "video model: step 2 of 4"))
    update = monitor.update()
    assert (update.status, update.done, update.total) == (Status.RUNNING, 2, 4)
    assert update.text == "video model: step 2 of 4 · about 12 s left"  # 6 s a step (1 to 2), 2 steps to go


def test_waiting_text_names_what_runs_and_the_place_in_line() -> None:
    assert waiting_text([JobKind.TRAIN], 2) == "waiting: a training is running, position 2"
    assert waiting_text([JobKind.VIDEO], 1) == "waiting: another video is being made, position 1"
    assert waiting_text([JobKind.TRAIN, JobKind.TRAIN, JobKind.VIDEO], 1) == \
        "waiting: 2 trainings are running and another video is being made, position 1"
    assert waiting_text([], 1) == "waiting: starting, position 1"


def test_a_clip_starts_from_the_persons_own_generation_and_nothing_outside(tmp_path: Path) -> None:
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), start_worker=False)
    try:
        model_id, other_id = _ready_model(workflow), _ready_model(workflow, "other")
        drawn = GenerateSettings(prompt="a portrait photo of {trigger}", seed=7, steps=2, width=64, height=64)
        [mine] = workflow.generate(model_id, drawn)
        workflow.generate(other_id, drawn)
        workflow.generate(None, drawn)
        # Each model's list holds only the generations its LoRA drew.
        [still] = workflow.stills(model_id)
        assert still.ref == mine.relative_to(workflow.data_dir).as_posix() and still.seed == "7"
        assert len(workflow.stills(other_id)) == 1 and len(workflow.stills(None)) == 1
        assert {s.ref for s in workflow.stills(other_id)}.isdisjoint({still.ref})

        events: list = []
        result = workflow.video(model_id, prompt="ignored: the still is drawn", prompt_b="turns head slowly", frames=5,
                                fps=5, video_model="tiny", still=still.ref, on_event=events.append)
        data = json.loads(result.likeness_json.read_text())
        assert data["still"] == still.ref and data["seed"] == 7 and "sks" not in data["prompt_b"]
        assert data["why"].startswith(f"your generation {still.ref}, animated by the image-to-video model 'tiny'")
        assert data["prompt"] == f"a portrait photo of {workflow.model(model_id).trigger_word}"  # what drew the still
        stages = {e.stage for e in events if isinstance(e, Progress)}
        assert "generate" not in stages and "video" in stages  # no new still was drawn

        outside = tmp_path / "elsewhere.png"
        outside.write_bytes(mine.read_bytes())
        for ref in (str(outside), "../elsewhere.png", "generations/../../elsewhere.png", "photos/x.png",
                    f"generations/{'a' * 300}.png", "generations/x\x00.png"):  # names the file system refuses
            with pytest.raises(ValueError, match="still: .* is not one of your generations"):
                workflow.queue_video(model_id, prompt="p", frames=5, fps=5, video_model="tiny", still=ref)
        with pytest.raises(ValueError, match="still: there is no generation"):
            workflow.video(model_id, prompt="p", frames=5, fps=5, video_model="tiny", still="generations/x/00.png")
        with pytest.raises(ValueError, match="still: a morph"):
            workflow.queue_video(model_id, prompt="p", frames=5, fps=5, video_model="", still=still.ref)
        assert workflow.jobs.list() == []  # nothing refused was queued
        with pytest.raises(JobNotFound):
            workflow.cancel_video("nope")
    finally:
        workflow.close()


def test_cancel_training_leaves_the_models_clips_deleting_the_model_cancels_them(tmp_path: Path) -> None:
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), start_worker=False)
    try:
        model_id = _ready_model(workflow)
        clip = workflow.queue_video(model_id, prompt="a face", frames=5, fps=5, video_model="morph")
        workflow.cancel_training(model_id)  # the Training tab's Cancel on this model: no training of it runs
        assert workflow.jobs.get(clip.id).status == Status.QUEUED
        assert workflow.model(model_id).status == Status.READY
        workflow.delete_model(model_id)  # its LoRA goes: a clip of it could not be made
        assert workflow.jobs.get(clip.id).status == Status.CANCELLED
    finally:
        workflow.close()


def test_an_image_generation_waits_while_a_clip_animates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One user of the GPU at a time: a Generate asked for while a clip animates draws only once the clip's frames
    are made (the real tiny models; each span recorded around the real call)."""
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), start_worker=False)
    spans: dict[str, list[tuple[float, float]]] = {"animate": [], "render": []}
    animating, rendering = threading.Event(), threading.Event()
    real_animate, real_render = i2v.animate, Generator.render

    def timed(name: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            return call(*args, **kwargs)
        finally:
            spans[name].append((start, time.monotonic()))

    def animate(*args: Any, **kwargs: Any) -> Any:
        animating.set()
        rendering.wait(2)  # long enough for the Generate to draw, were it let in
        return timed("animate", real_animate, *args, **kwargs)

    def render(self: Generator, *args: Any, **kwargs: Any) -> Any:
        if animating.is_set():
            rendering.set()
        return timed("render", real_render, self, *args, **kwargs)

    monkeypatch.setattr(i2v, "animate", animate)
    monkeypatch.setattr(Generator, "render", render)
    drawn: list[Path] = []
    generate = threading.Thread(target=lambda: animating.wait(30) and drawn.extend(workflow.generate(
        None, GenerateSettings(prompt="a face", steps=2, width=64, height=64))))
    try:
        generate.start()
        workflow.video(None, prompt="a face", frames=5, fps=5, video_model="tiny")
        generate.join(60)
        assert drawn and len(spans["animate"]) == 1 and len(spans["render"]) == 2  # the still, then the Generate
        (start, end), = spans["animate"]
        assert all(r_end <= start or r_start >= end for r_start, r_end in spans["render"]), spans
    finally:
        workflow.close()



def test_clips_in_line_are_not_counted_as_trainings_and_a_base_model_clip_is_mine(tmp_path: Path) -> None:
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), start_worker=False)
    try:
        clip = workflow.queue_video(None, prompt="a face", frames=5, fps=5, video_model="morph")
        record = workflow.library.create("t", "tiny", {})
        workflow.jobs.submit(record.id, {"workspace": workflow.workspace})  # a training, behind the clip
        assert workflow.jobs_ahead(record.id) == 0  # next among the trainings: the clip costs minutes, not a training
        assert workflow.trainings_in_line() == (0, 1)  # what the Settings tab's estimate waits behind
        # The Training tab names the person's own clip of the bare base model (it said "another person's video").
        assert workflow.queue()[0] == QueueEntry("base model", Status.QUEUED, "", JobKind.VIDEO)
        assert workflow.jobs.get(clip.id).status == Status.QUEUED
    finally:
        workflow.close()

"""The job queue on a real tinydb file with real worker threads (and, for the crash, a real killed process)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pipeline.jobs.queue import MAX_ATTEMPTS, Job, JobInterrupted, JobNotFound, JobQueue, QueueBusy
from pipeline.storage.jsondb import lock_for


class Recorder:
    """A runner that records when each job started and stopped; it can block until released or stopped."""

    def __init__(self, seconds: float = 0.0, block: bool = False, fail_on: str = "") -> None:
        self.seconds = seconds
        self.block = block
        self.fail_on = fail_on
        self.runs: list[tuple[str, float, float, str]] = []  # model_id, start, end, device
        self.started = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    def __call__(self, job: Job, should_stop) -> None:
        start = time.monotonic()
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.started.set()
        try:
            deadline = start + self.seconds
            while (self.block and not self.release.is_set()) or time.monotonic() < deadline:
                if should_stop():
                    return
                time.sleep(0.01)
            if job.model_id == self.fail_on:
                raise RuntimeError(f"out of memory while training {job.model_id}")
        finally:
            with self.lock:
                self.active -= 1
            self.runs.append((job.model_id, start, time.monotonic(), job.device))


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_runs_one_job_at_a_time_in_submission_order(tmp_path):
    runner = Recorder(seconds=0.15)
    queue = JobQueue(tmp_path, runner, devices=["cpu"])
    try:
        jobs = [queue.submit(f"m{i}", {"steps": 50}) for i in range(4)]
        assert queue.wait_idle(20)
    finally:
        queue.stop()
    assert [r[0] for r in runner.runs] == ["m0", "m1", "m2", "m3"]
    assert runner.max_active == 1
    for earlier, later in zip(runner.runs, runner.runs[1:], strict=False):
        assert later[1] >= earlier[2]  # next starts only after the previous stopped
    for job in jobs:
        done = queue.get(job.id)
        assert done.status == "done" and done.device == "cpu" and done.attempts == 1
        assert done.started_at and done.finished_at and done.payload == {"steps": 50}


def test_one_worker_per_device_runs_jobs_side_by_side(tmp_path):
    runner = Recorder(seconds=0.3)
    queue = JobQueue(tmp_path, runner, devices=["cuda:0", "cuda:1"])
    try:
        for i in range(4):
            queue.submit(f"m{i}", {})
        assert queue.wait_idle(20)
    finally:
        queue.stop()
    assert runner.max_active == 2
    assert {r[3] for r in runner.runs} == {"cuda:0", "cuda:1"}


def test_a_failing_job_records_the_reason_and_the_queue_goes_on(tmp_path):
    changes: list[tuple[str, str]] = []
    queue = JobQueue(tmp_path, Recorder(fail_on="bad"), devices=["cpu"],
                     on_change=lambda job: changes.append((job.model_id, job.status)))
    try:
        bad = queue.submit("bad", {})
        good = queue.submit("good", {})
        assert queue.wait_idle(10)
    finally:
        queue.stop()
    failed = queue.get(bad.id)
    assert failed.status == "failed" and "out of memory while training bad" in failed.error
    assert queue.get(good.id).status == "done"
    assert ("bad", "running") in changes and ("bad", "failed") in changes and ("good", "done") in changes


def test_an_interrupted_job_runs_again_before_newer_ones_and_fails_after_its_last_attempt(tmp_path):
    """A runner whose machine went away raises JobInterrupted: the job goes back to the front of the queue."""
    runs: list[tuple[str, int]] = []

    def runner(job: Job, should_stop) -> None:
        runs.append((job.model_id, job.attempts))
        if job.model_id == "lost-once" and job.attempts == 1 or job.model_id == "always-lost":
            raise JobInterrupted("the worker running it went away")

    queue = JobQueue(tmp_path, runner, devices=["cpu"], autostart=False)
    try:
        once = queue.submit("lost-once", {})
        queue.submit("next", {})
        queue.start()
        assert queue.wait_idle(10)
        assert runs == [("lost-once", 1), ("lost-once", 2), ("next", 1)]
        assert queue.get(once.id).status == "done" and queue.get(once.id).attempts == 2

        always = queue.submit("always-lost", {})
        assert queue.wait_idle(10)
    finally:
        queue.stop()
    gone = queue.get(always.id)
    assert gone.status == "failed" and gone.attempts == MAX_ATTEMPTS and "went away" in gone.error


def test_a_job_whose_end_cannot_be_written_leaves_the_worker_alive(tmp_path):
    """A full or broken disk while a job ends (ENOSPC writing jobs.json) used to kill the worker thread: the job
    stayed "running" and every later training waited for a restart."""
    db = tmp_path / "jobs.json"
    aside = tmp_path / "jobs.json.aside"
    broken = threading.Event()

    def break_the_disk(job: Job, should_stop) -> None:
        if job.model_id == "a":
            os.replace(db, aside)
            db.mkdir()  # every read and write of jobs.json now fails with an OSError, as on a broken disk
            (db / "x").write_text("")
            broken.set()

            def repair() -> None:
                time.sleep(1.0)
                # Under the queue's own lock: between rmdir and replace a worker's write would make a new, empty
                # jobs.json that the test then read (JobNotFound: failed 1 run in a few on a busy machine).
                with lock_for(db):
                    (db / "x").unlink()
                    db.rmdir()
                    os.replace(aside, db)

            threading.Thread(target=repair, daemon=True).start()
            raise OSError(28, "No space left on device")

    queue = JobQueue(tmp_path, break_the_disk, devices=["cpu"], autostart=False)
    first, second = queue.submit("a", {}), queue.submit("b", {})
    queue.start()
    try:
        # Poll only once the disk is broken: before that, jobs.json could turn into a folder between the test's
        # is_file() and its read (a race that failed one run of the suite).
        assert broken.wait(20)
        _wait_for(lambda: db.is_file() and queue.get(second.id).status == "done", timeout=20)
        ended = queue.get(first.id)
        assert ended.status == "failed" and "could not be saved" in ended.error and "resume" in ended.error
        assert queue.running
    finally:
        queue.stop()


def test_cancel_a_queued_job_and_positions(tmp_path):
    runner = Recorder(block=True)
    queue = JobQueue(tmp_path, runner, devices=["cpu"])
    try:
        first, second, third = (queue.submit(m, {}) for m in ("m1", "m2", "m3"))
        assert runner.started.wait(5)
        _wait_for(lambda: queue.get(first.id).status == "running")
        assert [queue.position(j.id) for j in (first, second, third)] == [0, 1, 2]
        assert queue.cancel(second.id).status == "cancelled"
        assert queue.position(third.id) == 1 and queue.position(second.id) == -1
        assert [j.id for j in queue.list()] == [first.id, third.id, second.id]
        runner.release.set()
        assert queue.wait_idle(10)
    finally:
        queue.stop()
    assert [r[0] for r in runner.runs] == ["m1", "m3"]
    assert queue.get(second.id).status == "cancelled"
    with pytest.raises(JobNotFound, match="no job 'nope'"):
        queue.get("nope")


def test_cancel_a_running_job_stops_it_and_starts_the_next(tmp_path):
    runner = Recorder(block=True)
    queue = JobQueue(tmp_path, runner, devices=["cpu"])
    try:
        running = queue.submit("m1", {})
        waiting = queue.submit("m2", {})
        assert runner.started.wait(5)
        assert not queue.cancel_requested(running.id)
        queue.cancel(running.id)
        assert queue.cancel_requested(running.id) and not queue.interrupting
        _wait_for(lambda: queue.get(running.id).status == "cancelled")
        _wait_for(lambda: queue.get(waiting.id).status == "running")
        queue.cancel(waiting.id)
        assert queue.wait_idle(10)
    finally:
        queue.stop()
    assert [r[0] for r in runner.runs] == ["m1", "m2"]
    assert queue.get(waiting.id).status == "cancelled"


def test_cancel_through_another_queue_object_reaches_the_running_job(tmp_path):
    runner = Recorder(block=True)
    queue = JobQueue(tmp_path, runner, devices=["cpu"])
    try:
        job = queue.submit("m1", {})
        assert runner.started.wait(5)
        JobQueue(tmp_path, Recorder(), autostart=False).cancel(job.id)  # e.g. the CLI
        _wait_for(lambda: queue.get(job.id).status == "cancelled", timeout=5)
    finally:
        queue.stop()


def test_queued_jobs_survive_a_restart(tmp_path):
    queue = JobQueue(tmp_path, Recorder(), autostart=False)
    ids = [queue.submit(f"m{i}", {"i": i}).id for i in range(3)]
    reopened = JobQueue(tmp_path, Recorder(), autostart=False)
    assert [j.id for j in reopened.list()] == ids
    assert reopened.get(ids[2]).payload == {"i": 2}


def test_stop_interrupts_the_running_job_and_it_resumes_first_after_restart(tmp_path):
    first_runner = Recorder(block=True)
    queue = JobQueue(tmp_path, first_runner, devices=["cpu"])
    interrupted = queue.submit("m1", {})
    later = queue.submit("m2", {})
    assert first_runner.started.wait(5)
    assert not queue.interrupting
    assert queue.stop(timeout=5)
    assert queue.interrupting and not queue.cancel_requested(interrupted.id)  # what a runner tells apart
    assert queue.get(interrupted.id).status == "queued"
    assert queue.position(interrupted.id) == 0

    second_runner = Recorder()
    restarted = JobQueue(tmp_path, second_runner, devices=["cpu"])
    try:
        assert restarted.wait_idle(10)
    finally:
        restarted.stop()
    assert [r[0] for r in second_runner.runs] == ["m1", "m2"]
    assert restarted.get(interrupted.id).attempts == 2 and restarted.get(later.id).status == "done"


def test_a_job_running_when_the_process_was_killed_is_requeued_first(tmp_path):
    marker = tmp_path / "started"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from pipeline.jobs.queue import JobQueue

        def runner(job, should_stop):
            Path({str(marker)!r}).write_text(job.id)
            time.sleep(600)

        queue = JobQueue(Path({str(tmp_path)!r}), runner, autostart=False, devices=["cpu"])
        queue.submit("crashed", {{}})
        queue.submit("waiting", {{}})
        queue.start()
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        _wait_for(marker.exists, timeout=30)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    crashed_id = marker.read_text()

    runner = Recorder()
    queue = JobQueue(tmp_path, runner, autostart=False, devices=["cpu"])
    assert queue.get(crashed_id).status == "running"  # what the killed process left behind
    queue.submit("newer", {})
    queue.start()
    try:
        assert queue.wait_idle(10)
    finally:
        queue.stop()
    assert [r[0] for r in runner.runs] == ["crashed", "waiting", "newer"]
    assert queue.get(crashed_id).attempts == 2


def test_a_second_queue_on_the_same_data_dir_refuses_to_start(tmp_path):
    queue = JobQueue(tmp_path, Recorder(), devices=["cpu"])
    try:
        with pytest.raises(QueueBusy, match="already running jobs"):
            JobQueue(tmp_path, Recorder(), devices=["cpu"])
    finally:
        queue.stop()
    JobQueue(tmp_path, Recorder(), devices=["cpu"]).stop()  # free again once stopped


def test_an_end_the_disk_refuses_is_shown_at_once_and_written_once_there_is_room(tmp_path):
    """The runner ends while the process may write no file past 100 bytes (RLIMIT_FSIZE, as a full disk refuses
    jobs.json): the job reads "done" at once, not "running", and jobs.json says so as soon as the limit is lifted."""
    script = textwrap.dedent(
        f"""
        import json, resource, time
        from pathlib import Path
        from pipeline.jobs.queue import JobQueue

        def runner(job, should_stop):
            resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.RLIM_INFINITY))

        def stored():
            rows = json.loads(Path({str(tmp_path)!r}, "jobs.json").read_text())["jobs"].values()
            return [row["status"] for row in rows]

        queue = JobQueue(Path({str(tmp_path)!r}), runner, devices=["cpu"])
        job = queue.submit("m", {{}})
        deadline = time.monotonic() + 10
        while queue.get(job.id).status == "queued" or (queue.get(job.id).status == "running"
                                                       and time.monotonic() < deadline):
            time.sleep(0.05)
        full = (queue.get(job.id).status, stored())
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        deadline = time.monotonic() + 10
        while stored() != ["done"] and time.monotonic() < deadline:
            time.sleep(0.05)
        queue.stop()
        print(json.dumps({{"while_full": full, "once_room": stored()}}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert facts["while_full"] == ["done", ["running"]]  # shown from memory, while the file cannot say it
    assert facts["once_room"] == ["done"]

"""A training whose data disk fills up mid-run, run by tests/test_training_job.py in a process of its own.

``tmpfs DIR``: DIR is a small tmpfs (the test mounts it in a private mount namespace): once the training has begun a
file fills the disk, and deleting it makes room again. ``fsize DIR``: the process's file-size limit (RLIMIT_FSIZE) is
lowered below the size of the library's and the queue's files instead, and raised again. Either way the trainer, the
library and the job queue meet real failed writes. Prints what it saw as one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import photo_factory

from pipeline.settings import AppSettings, TrainSettings
from pipeline.status import JOB_FINISHED, MODEL_FINISHED
from pipeline.workflow import Workflow

FSIZE_LIMIT = 1024  # bytes: below library.json and jobs.json once a training is queued, above nothing it reads


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def fill(root: Path) -> None:
    """Write a file until the disk takes no more."""
    with open(root / "filler", "wb", buffering=0) as handle:  # unbuffered: closing it has nothing left to write
        for chunk in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * chunk)


def stored(path: Path, table: str) -> list[str]:
    """The statuses a state file holds on disk (not what the app keeps in memory)."""
    return [row["status"] for row in json.loads(path.read_text())[table].values()]


def attempt(action: Callable[[], Any]) -> dict[str, str]:
    """What an API call answered: its error's type and text (what the web page shows), or "ok"."""
    try:
        action()
    except Exception as exc:  # the answer is what is recorded
        return {"type": type(exc).__name__, "text": str(exc)}
    return {"type": "ok", "text": ""}


def main(mode: str, root: Path) -> dict[str, Any]:
    facts: dict[str, Any] = {"mode": mode}
    data = root / "data"
    # min_free_disk_gb: the tmpfs is 32 MB; a training's own start check is not what this scenario is about.
    workflow = Workflow(AppSettings(data_dir=data, base_model="tiny", min_free_disk_gb=0.001))
    try:
        workflow.add_photos(photo_factory.portrait_set(root / "photos", 6))
        record = workflow.start_training(TrainSettings.quick(name="filled", steps=60, checkpoint_every=20,
                                                             sample_every=1000, test_prompts=("{trigger}",)),
                                         anyway=True)
        more = photo_factory.portrait_set(root / "more", 1, seed=7)  # a new photo, uploaded while the disk is full
        facts["began"] = wait_for(lambda: workflow.training_view(record.id).last_step is not None, 120)

        if mode == "tmpfs":
            fill(root)
        else:
            resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, resource.RLIM_INFINITY))
        full_at = time.monotonic()
        # The library's end and the queue's: the runner marks the model, then the queue's worker the job (a moment
        # later; on a busy machine the job still read "running" when only the model was waited for).
        ended = wait_for(lambda: workflow.model(record.id).status in MODEL_FINISHED
                         and all(job.status in JOB_FINISHED for job in workflow.jobs.for_model(record.id)), 120)
        facts["seconds_to_end"] = round(time.monotonic() - full_at, 1)
        model = workflow.model(record.id)
        facts["model"] = {"status": model.status, "error": model.error, "ended": ended}
        facts["job"] = [job.status for job in workflow.jobs.for_model(record.id)]
        facts["kept_in_memory"] = record.id in getattr(workflow.library, "unsaved_ends", ())  # () before it existed
        facts["stored_while_full"] = stored(data / "library.json", "models")
        # What the web page and the API answer while the disk is full.
        facts["answers"] = {
            "rename": attempt(lambda: workflow.rename_model(record.id, "renamed")),
            "resume": attempt(lambda: workflow.resume_training(record.id)),
            "upload": attempt(lambda: workflow.add_photos(more)),
        }

        if mode == "tmpfs":
            (root / "filler").unlink()
        else:
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        # Anyone looking at the library (the page polls it) saves the end kept in memory; the queue's worker saves
        # the job's on its next turn.
        facts["saved_once_room"] = wait_for(
            lambda: bool(workflow.models()) and stored(data / "library.json", "models") == ["failed"], 30)
        facts["job_saved_once_room"] = wait_for(lambda: stored(data / "jobs.json", "jobs") == ["failed"], 30)
        facts["resume"] = attempt(lambda: workflow.resume_training(record.id))
        if facts["resume"]["type"] == "ok":
            facts["after_resume"] = workflow.wait_for(record.id, timeout=300).status
    finally:
        workflow.close()
    return facts


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2])), default=str))

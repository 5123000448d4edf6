"""A job's files between the app and a cluster node without its disk: what goes out, what comes back, and paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import events as ev
from pipeline.jobs import files as job_files
from pipeline.status import Status
from pipeline.training.trainer import CheckpointInfo, TrainResult


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture()
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "app" / "models" / "m1"
    _write(folder / "job.json", b'{"version": 1}')
    _write(folder / "dataset" / "dataset.json", b"{}")
    _write(folder / "dataset" / "aspect" / "a.png", b"png-a")
    _write(folder / "lora" / "checkpoints" / "step-000010" / "lora.safetensors", b"lora-10")
    _write(folder / "lora" / "checkpoints" / "step-000010" / "training_state.pt", b"state-10")
    _write(folder / "lora" / "checkpoints" / ".corrupt-step-000020" / "lora.safetensors", b"bad")
    _write(folder / "lora" / "checkpoints" / ".step-000030.tmp" / "lora.safetensors", b"half")
    _write(folder / "assessment" / "step_000010" / "0.png", b"test image")
    _write(folder / "training_log.jsonl", b"{}\n")
    return folder


def test_a_job_takes_its_spec_dataset_and_complete_checkpoints_only(model_folder: Path) -> None:
    _write(model_folder / "old-dataset" / "dataset.json", b"{}")  # a dataset the spec does not name
    packed = job_files.pack_inputs(model_folder)
    assert sorted(packed) == ["dataset/aspect/a.png", "dataset/dataset.json", "job.json",
                              "lora/checkpoints/step-000010/lora.safetensors",
                              "lora/checkpoints/step-000010/training_state.pt"]
    assert packed["lora/checkpoints/step-000010/training_state.pt"] == b"state-10"


def test_the_app_folder_mirrors_what_the_node_writes_and_deletes(model_folder: Path, tmp_path: Path) -> None:
    node = tmp_path / "node" / "jobs" / "k1"
    job_files.unpack(job_files.pack_inputs(model_folder), node)
    mirror = job_files.FolderMirror(node)
    assert mirror.changes() is None  # what it was given is not sent back

    # The node trains on: a new checkpoint, the old one pruned, a sample, the LoRA.
    _write(node / "lora" / "checkpoints" / "step-000020" / "lora.safetensors", b"lora-20")
    _write(node / "lora" / "checkpoints" / "step-000020" / "training_state.pt", b"state-20")
    for name in ("lora.safetensors", "training_state.pt"):
        (node / "lora" / "checkpoints" / "step-000010" / name).unlink()
    (node / "lora" / "checkpoints" / "step-000010").rmdir()
    _write(node / "lora" / "samples" / "step_000020_0.png", b"sample")
    changes = mirror.changes()
    assert changes is not None and sorted(changes.written) == [
        "lora/checkpoints/step-000020/lora.safetensors", "lora/checkpoints/step-000020/training_state.pt",
        "lora/samples/step_000020_0.png"]
    assert changes.deleted == ("lora/checkpoints/step-000010/lora.safetensors",
                               "lora/checkpoints/step-000010/training_state.pt")
    job_files.apply(changes, model_folder)

    assert (model_folder / "lora" / "checkpoints" / "step-000020" / "training_state.pt").read_bytes() == b"state-20"
    assert (model_folder / "lora" / "samples" / "step_000020_0.png").read_bytes() == b"sample"
    assert not (model_folder / "lora" / "checkpoints" / "step-000010").exists()  # its emptied folder went too
    assert (model_folder / "dataset" / "aspect" / "a.png").read_bytes() == b"png-a"  # untouched
    assert (model_folder / "assessment" / "step_000010" / "0.png").exists()  # what the node never had stays
    assert not [p for p in model_folder.rglob("*.tmp") if p.is_file()]  # each file was swapped in whole

    _write(node / "lora" / "samples" / "step_000020_0.png", b"sample, redrawn")  # rewritten: sent again
    again = mirror.changes()
    assert again is not None and list(again.written) == ["lora/samples/step_000020_0.png"]
    assert mirror.changes() is None


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/passwd", "lora/../../outside.txt", ""])
def test_a_file_named_outside_the_model_folder_is_refused(model_folder: Path, name: str) -> None:
    with pytest.raises(ValueError, match="outside its model folder"):
        job_files.apply(job_files.FileChanges({name: b"x"}), model_folder)
    with pytest.raises(ValueError, match="outside its model folder"):
        job_files.apply(job_files.FileChanges({}, (name,)), model_folder)
    assert not (model_folder.parent / "outside.txt").exists()


def test_events_and_results_name_the_apps_files(tmp_path: Path) -> None:
    node, app = tmp_path / "node" / "jobs" / "k1", tmp_path / "app" / "models" / "m1"
    event = ev.AssessmentStarted(node / "lora" / "lora.safetensors", None,
                                 (ev.CheckpointSaved(10, node / "lora" / "checkpoints" / "step-000010" / "x"),))
    moved = job_files.rebase(event, node, app)
    assert moved.lora_path == app / "lora" / "lora.safetensors" and moved.kohya_path is None
    assert moved.checkpoints[0].path == app / "lora" / "checkpoints" / "step-000010" / "x"

    result = TrainResult(status=Status.COMPLETED, lora_path=node / "lora" / "lora.safetensors", kohya_path=None,
                         steps_done=10, final_loss=0.5, losses=(0.5,),
                         checkpoints=(CheckpointInfo(10, node / "lora" / "c.safetensors"),))
    assert job_files.rebase(result, node, app).checkpoints[0].path == app / "lora" / "c.safetensors"
    # Strings (the records' checkpoint lists) too; a path elsewhere, or one only starting alike, stays.
    assert job_files.rebase({"path": f"{node}/a.png", "other": f"{node}-x/a.png", "n": 3}, node, app) == {
        "path": f"{app}/a.png", "other": f"{node}-x/a.png", "n": 3}
    assert job_files.rebase(Path("/elsewhere/a.png"), node, app) == Path("/elsewhere/a.png")
    assert job_files.rebase(str(node), node, app) == str(app)


def test_a_node_sweeps_the_folders_of_killed_jobs_but_not_of_running_ones(tmp_path: Path) -> None:
    import fcntl

    from pipeline.training.ray_cluster import sweep_left_behind

    jobs = tmp_path / "jobs"
    for key in ("killed", "running"):
        _write(jobs / key / "lora" / "x.safetensors", b"x")
        (jobs / f"{key}.lock").touch()
    with (jobs / "running.lock").open("w") as held:  # as the running job's process holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        sweep_left_behind(jobs)
    assert sorted(p.name for p in jobs.iterdir()) == ["running", "running.lock"]

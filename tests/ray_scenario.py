"""Trainings on a real local Ray cluster, run by tests/test_ray_cluster.py inside a private network namespace.

Starts a head and one worker node (CPU only, small object stores, their own temp dir), points the app's workflow at
the head, runs two short trainings through the workflow's API, then one stopped and resumed. Then a second cluster
whose trainings run only on nodes that do not see the app's data dir (each in its own mount namespace, an empty
tmpfs over it): a node joins while the app runs, and the node running a training is killed mid-training. Prints
what it saw as one JSON line. Stops only the nodes it started.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import photo_factory
from local_ray import LocalCluster
from safetensors.torch import load_file

from pipeline.settings import AppSettings, TrainSettings
from pipeline.workflow import Workflow
from ui.training import cluster_text  # the Training tab's view of the cluster

TIMEOUT = 300.0


def wait_for(condition, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def lora_shapes(path: str) -> dict[str, list[int]]:
    return {name: list(tensor.shape) for name, tensor in load_file(path).items()}


def main(root: Path) -> dict:
    facts: dict = {"seconds": {}}
    began = time.monotonic()

    def lap(name: str) -> None:  # where the time goes, for the log
        facts["seconds"][name] = round(time.monotonic() - began, 1)

    photos = photo_factory.portrait_set(root / "photos", 6)
    with LocalCluster(workers=1) as cluster:
        lap("cluster up")
        import ray

        # The same training on the local backend, for the LoRA's shape.
        settings = TrainSettings.quick(name="local", steps=4, checkpoint_every=2, sample_every=1000,
                                       test_prompts=("{trigger}",))
        local = Workflow(AppSettings(data_dir=root / "local", base_model="tiny"))
        try:
            local.add_photos(photos)
            record = local.wait_for(local.start_training(settings, anyway=True).id, timeout=TIMEOUT)
            facts["local"] = {"status": record.status, "shapes": lora_shapes(record.lora_path)}
            lap("local training")
        finally:
            local.close()

        app = Workflow(AppSettings(data_dir=root / "cluster", base_model="tiny", ray_address=cluster.address))
        try:
            wait_for(lambda: len([n for n in ray.nodes() if n["Alive"]]) == 2, "two live nodes", 60)
            facts["nodes"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
            facts["slots"] = list(app.executor.slots())
            app.add_photos(photos)
            first = app.start_training(TrainSettings.quick(name="first", steps=4, checkpoint_every=2,
                                                           sample_every=1000, test_prompts=("{trigger}",)),
                                       anyway=True)
            second = app.start_training(TrainSettings.quick(name="second", steps=4, checkpoint_every=2,
                                                            sample_every=1000, test_prompts=("{trigger}",)),
                                        anyway=True)
            runs = []
            for model in (first, second):
                record = app.wait_for(model.id, timeout=TIMEOUT)
                [job] = app.jobs.for_model(model.id)
                runs.append({"status": record.status, "node": job.node, "task": job.task, "pid": job.pid,
                             "shapes": lora_shapes(record.lora_path) if record.lora_path else {},
                             "assessed": [s for s, _l, _o in app.training_view(model.id).assessments]})
            facts["runs"] = runs
            lap("two trainings on ray")
            view = app.cluster()
            facts["view"] = {"nodes": len(view.nodes), "cpus": view.cpus}

            # Stop on the page reaches the worker; Resume goes on from the checkpoint it saved when it stopped.
            stopped = app.start_training(TrainSettings.quick(name="stopped", steps=500, checkpoint_every=50,
                                                             sample_every=1000, test_prompts=("{trigger}",)),
                                         anyway=True)
            wait_for(lambda: (app.training_view(stopped.id).last_step or 0) and
                     app.training_view(stopped.id).last_step.step >= 12, "the stopped run's step 12")
            app.cancel_training(stopped.id)
            cancelled = app.wait_for(stopped.id, timeout=60)
            at_stop = app.training_view(stopped.id).last_step.step
            # Resume a shorter run so the test ends soon; it continues from the kept checkpoint.
            app.library.update(stopped.id, settings={**cancelled.settings, "steps": at_stop + 5})
            app.resume_training(stopped.id)
            resumed = app.wait_for(stopped.id, timeout=TIMEOUT)
            facts["stopped"] = {"status_after_stop": cancelled.status, "stopped_at": at_stop,
                                "checkpoints_after_stop": [c["step"] for c in cancelled.checkpoints],
                                "status_after_resume": resumed.status,
                                "resumed_lines": [line for line in app.training_view(stopped.id).log
                                                  if line.startswith("resuming from the checkpoint at step")]}

            lap("stopped and resumed")
            # Stop while the task still waits for a node with room (it asks for more CPUs than any node has).
            from pipeline.training.job import TrainingJobSpec
            from pipeline.training.ray_cluster import RayExecutor

            greedy = RayExecutor(cluster.address, root / "cluster", cpus_per_training=8)
            spec = TrainingJobSpec.load(Path(first.folder))
            asked = time.monotonic()
            outcome = greedy.run(spec, Path(first.folder), device=None, on_event=lambda _e: None,
                                 should_stop=lambda: time.monotonic() - asked > 2, on_placed=lambda _p: None)
            facts["unplaced_stop"] = {"status": outcome.result.status, "seconds": round(time.monotonic() - asked, 1)}
        finally:
            app.close()
        lap("app closed")
    lap("cluster stopped")
    facts["no_shared_disk"] = without_a_shared_disk(root, photos, facts["local"]["shapes"])
    lap("cluster without a shared disk")
    return facts


def _ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:
        return True


def without_a_shared_disk(root: Path, photos: list[Path], local_shapes: dict) -> dict:
    """The head (where the app runs) takes no trainings; its worker nodes see an empty folder at the data dir."""
    import ray

    import pipeline.jobs.queue

    pipeline.jobs.queue.RECOUNT_SECONDS = 1.0  # the queue looks for new nodes every second here (10 s in the app)
    data = root / "nodisk"
    data.mkdir()
    facts: dict = {"seconds": {}}
    began = time.monotonic()

    def lap(name: str) -> None:
        facts["seconds"][name] = round(time.monotonic() - began, 1)

    with LocalCluster(workers=0, head_cpus=0) as cluster:
        lap("cluster up")
        cluster.add_worker(hide=data, tmpdir=root / "nodes-tmp")  # the nodes' own files (one machine here)
        app = Workflow(AppSettings(data_dir=data, base_model="tiny", ray_address=cluster.address))
        try:
            facts["workers_at_start"] = list(app.jobs.workers)
            token = data / ".cluster-disk-token"
            facts["node_sees_data_dir"] = ray.get(ray.remote(num_cpus=1)(os.path.exists).remote(str(token)))
            facts["app_sees_data_dir"] = token.exists()
            cluster.add_worker(hide=data, tmpdir=root / "nodes-tmp")  # the cluster grows while the app runs
            wait_for(lambda: len(app.jobs.workers) == 2, "a second queue worker for the new node", 60)
            facts["workers_after_join"] = list(app.jobs.workers)
            lap("second node joined")

            app.add_photos(photos)
            long = app.start_training(TrainSettings.quick(name="killed", steps=150, checkpoint_every=10,
                                                          sample_every=1000, test_prompts=("{trigger}",)),
                                      anyway=True)

            def step() -> int:
                last = app.training_view(long.id).last_step
                return last.step if last else 0

            # Step 12 is reported after the checkpoint at step 10 reached the app's disk (the channel keeps order).
            wait_for(lambda: step() >= 12 and app.jobs.for_model(long.id)[0].pid, "the long run's step 12")
            [job] = app.jobs.for_model(long.id)
            killed_pid, killed_node = job.pid, job.node
            facts["cluster_text"] = cluster_text(app)
            facts["status_at_kill"] = app.jobs.get(job.id).status
            # The whole node goes: its raylet (the worker's parent) with its process group, and the worker.
            raylet = int(Path(f"/proc/{killed_pid}/stat").read_text().rpartition(")")[2].split()[1])
            os.killpg(os.getpgid(raylet), signal.SIGKILL)
            os.kill(killed_pid, signal.SIGKILL)
            lap("killed")
            record = app.wait_for(long.id, timeout=TIMEOUT)
            lap("resumed and ready")
            [job] = app.jobs.for_model(long.id)
            log = app.training_view(long.id).log
            folder = Path(record.folder)
            facts["killed"] = {
                "status": record.status, "killed_pid": killed_pid, "pid_after": job.pid,
                "node_before": killed_node, "node_after": job.node, "attempts": job.attempts,
                "resumed_lines": [line for line in log if line.startswith("resuming from the checkpoint at step")],
                "went_away": any("went away" in line for line in log),
                "object_store_lines": sum("does not see the app's data dir" in line for line in log),
                "lora_in_data_dir": Path(record.lora_path).is_relative_to(data) and Path(record.lora_path).is_file(),
                "shapes": lora_shapes(record.lora_path),
                "checkpoints": sorted(p.name for p in (folder / "lora" / "checkpoints").iterdir()),
                "recorded_checkpoints_on_disk": all(Path(c["path"]).is_file() for c in record.checkpoints),
                "test_images": len(list((folder / "assessment").rglob("*.png"))),
                "grid": bool(record.sample_grid and Path(record.sample_grid).is_file()),
                "local_shapes_match": lora_shapes(record.lora_path) == local_shapes,
                # The killed process's folder on its node is swept by the next job there (the same scratch here).
                "left_on_nodes": sorted(p.name for p in (root / "nodes-tmp").glob("likeness-node/*/jobs/*")),
                "raylet_ended": _ended(raylet),
            }
        finally:
            app.close()
    lap("cluster stopped")
    return facts


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))

"""Trainings as tasks on a Ray cluster, when one GPU box is not enough.

The app stays the one web front end, the one job queue and the one library: each queue slot hands its job to Ray
as a task asking for one GPU (one CPU on a CPU-only cluster), and Ray places it on any free node. The task runs the
job's compute (``training_job.train_and_choose``) there; its events come back through a small channel actor, and so
does a stop request, both polled about once a second. Photos, crops, checkpoints and LoRAs are read and written in
the data dir, which every node must see at the same path (a shared disk). A worker process or node that goes away
mid-training raises ``WorkerLost``: the job goes back to the front of the queue and resumes from its last checkpoint
on whichever node is free.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline import events as ev
from pipeline.status import Status
from pipeline.training_job import (
    ClusterView,
    JobOutcome,
    NodeView,
    Placement,
    TrainingJobSpec,
    WorkerLost,
    train_and_choose,
)

logger = logging.getLogger(__name__)

NAMESPACE = "likeness"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Passed on to the workers: where the app reads no model hub (offline, its cache), neither do they.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
POLL_SECONDS = 0.5


class _Channel:
    """Events from the running tasks to the app, and stop requests back, by job key. One per app, owned by it."""

    def __init__(self) -> None:
        self.events: dict[str, list[Any]] = {}
        self.places: dict[str, dict[str, Any]] = {}
        self.stops: set[str] = set()

    def put(self, key: str, event: Any) -> None:
        self.events.setdefault(key, []).append(event)

    def placed(self, key: str, place: dict[str, Any]) -> None:
        self.places[key] = place

    def flush(self, key: str) -> bool:
        """Answered after every earlier ``put`` of the same caller (an actor runs one caller's calls in order)."""
        return True

    def drain(self, key: str) -> tuple[list[Any], dict[str, Any] | None]:
        return self.events.pop(key, []), self.places.get(key)

    def stop(self, key: str) -> None:
        self.stops.add(key)

    def stopped(self, key: str) -> bool:
        return key in self.stops

    def forget(self, key: str) -> None:
        self.events.pop(key, None)
        self.places.pop(key, None)
        self.stops.discard(key)


# Per worker process: its loaded base models, reused by its next tasks (CPU tasks share worker processes; Ray gives
# each GPU task a fresh process, which also hands the GPU's memory back when it ends).
_WORKER_GENERATORS: dict[str, Any] = {}


def _compute(spec_data: dict[str, Any], model_folder: str, shared_dir: str, channel: Any, key: str) -> JobOutcome:
    """The Ray task: the job's compute on the node Ray chose, reporting through the channel."""
    import ray

    from pipeline.generators import Generators
    from pipeline.jobs import default_devices

    context = ray.get_runtime_context()
    channel.placed.remote(key, {"node": context.get_node_id(), "task": context.get_task_id() or "",
                                "pid": os.getpid()})
    generators = _WORKER_GENERATORS.setdefault(shared_dir, Generators(Path(shared_dir)))
    asked = [0.0, False]  # last poll time, stop seen

    def should_stop() -> bool:
        if not asked[1] and time.monotonic() - asked[0] >= 1.0:
            asked[0] = time.monotonic()
            asked[1] = bool(ray.get(channel.stopped.remote(key)))
        return bool(asked[1])

    try:
        return train_and_choose(TrainingJobSpec.from_dict(spec_data), Path(model_folder), Path(shared_dir),
                                generators, device=default_devices()[0],
                                on_event=lambda event: channel.put.remote(key, event), should_stop=should_stop)
    finally:
        ray.get(channel.flush.remote(key))  # every event is in the channel before the result is


def _check_reachable(address: str) -> None:
    """Ray waits minutes on an address where nothing listens: ask the head's port first, briefly."""
    import socket

    if address == "auto" or address.startswith("ray://"):
        return  # "auto" finds the local cluster's address itself and fails at once when there is none
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=3):
            pass
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"cannot reach {address}: {exc}") from exc


class RayExecutor:
    """Runs each job's compute as a Ray task; one queue slot per GPU of the cluster (per CPU when it has none)."""

    local = False

    def __init__(self, address: str, shared_dir: Path, *, cpus_per_training: float = 1.0) -> None:
        import ray

        self.address = address
        self.shared_dir = Path(shared_dir).resolve()
        self.cpus_per_training = cpus_per_training
        env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        # Workers import this project from the same path (each node has the app's checkout and environment).
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(PROJECT_ROOT), os.environ.get("PYTHONPATH"))))
        _check_reachable(address)
        if not ray.is_initialized():
            ray.init(address=address, namespace=NAMESPACE, runtime_env={"env_vars": env}, log_to_driver=False,
                     logging_level=logging.WARNING)
        self._channel = self._new_channel()
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        self._task = ray.remote(
            num_gpus=1 if self.gpus else 0, num_cpus=cpus_per_training, max_retries=0)(_compute)
        logger.info("ray: connected to %s (%s)", address, resources)

    @staticmethod
    def _new_channel() -> Any:
        """The channel lives on the app's own node: a worker node that goes away must not take it along."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        return ray.remote(num_cpus=0, scheduling_strategy=here)(_Channel).remote()

    def slots(self) -> tuple[str, ...]:
        """One queue slot per training the cluster can hold at once, as it is now (nodes that join later add
        room once the app restarts)."""
        import ray

        resources = ray.cluster_resources()
        count = self.gpus or int(resources.get("CPU", 1) // self.cpus_per_training)
        return tuple(f"ray-{index}" for index in range(max(1, count)))

    def view(self) -> ClusterView:
        import ray

        nodes = tuple(NodeView(node["NodeID"], node.get("NodeManagerAddress", ""), bool(node.get("Alive")),
                               float(node.get("Resources", {}).get("CPU", 0)),
                               float(node.get("Resources", {}).get("GPU", 0)))
                      for node in ray.nodes())
        return ClusterView(self.address, nodes)

    def run(self, spec: TrainingJobSpec, model_folder: Path, *, device: str | None, on_event: ev.EventCallback,
            should_stop: ev.StopCheck, on_placed: Placement) -> JobOutcome:
        import ray
        from ray import exceptions as rx

        from pipeline.base_model import resolve_base_model
        from pipeline.training import TrainResult, list_checkpoints

        resolve_base_model(spec.base_model, self.shared_dir)  # the tiny model is built here, not by two workers
        key = f"{spec.model_id}-{time.monotonic_ns()}"
        channel = self._channel
        ref = self._task.remote(spec.to_dict(), str(Path(model_folder).resolve()), str(self.shared_dir),
                                channel, key)
        placed: Mapping[str, Any] | None = None
        stop_sent = False
        try:
            while True:
                done, _ = ray.wait([ref], timeout=POLL_SECONDS)
                events, place = ray.get(channel.drain.remote(key), timeout=60)
                if place and place != placed:
                    placed = place
                    on_placed(place)
                for event in events:
                    on_event(event)
                if not done and should_stop():
                    if placed is None:
                        # Still waiting for a node (none has room, or the one it asked for left): nothing to save.
                        ray.cancel(ref, force=True)
                        return JobOutcome(TrainResult(
                            status=Status.CANCELLED, lora_path=None, kohya_path=None, steps_done=0, final_loss=None,
                            losses=(), checkpoints=list_checkpoints(Path(model_folder) / "lora")))
                    if not stop_sent:
                        channel.stop.remote(key)
                        stop_sent = True
                if done:
                    break
            try:
                return ray.get(ref)
            finally:
                for event in ray.get(channel.drain.remote(key), timeout=60)[0]:
                    on_event(event)
        except rx.RayActorError as exc:  # the channel went with its node: a new one for the next jobs
            self._channel = self._new_channel()
            ray.cancel(ref, force=True)
            raise WorkerLost(f"the app lost touch with the Ray worker running it ({type(exc).__name__})") from exc
        except (rx.WorkerCrashedError, rx.NodeDiedError, rx.LocalRayletDiedError, rx.ObjectLostError,
                rx.OutOfMemoryError, rx.TaskCancelledError) as exc:
            where = f"node {placed['node'][:8]}, process {placed['pid']}" if placed else "its node"
            raise WorkerLost(f"the Ray worker running it ({where}) went away: {type(exc).__name__}") from exc
        except rx.GetTimeoutError as exc:
            ray.cancel(ref, force=True)
            raise WorkerLost("the Ray cluster stopped answering") from exc
        except rx.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None
        finally:
            channel.forget.remote(key)

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()


"""Trainings as tasks on a Ray cluster, when one GPU box is not enough.

The app stays the one web front end, the one job queue and the one library: each queue slot hands its job to Ray
as a task asking for one GPU (one CPU on a CPU-only cluster), and Ray places it on any free node. The task runs the
job's compute (``training_job.train_and_choose``) there; its events come back through a small channel actor, and so
does a stop request, both polled about once a second. A node that sees the app's data dir at the same path (a shared
disk) reads and writes the job's files there; any other asks for them — the app puts them in Ray's object store —
and sends back what the job writes as it goes (``pipeline.jobs.files``). A worker process or node that goes away
mid-training raises ``WorkerLost``: the job goes back to the front of the queue and resumes from its last checkpoint
(on the app's disk either way) on whichever node is free.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline import events as ev
from pipeline.jobs import files as job_files
from pipeline.status import Status
from pipeline.storage.atomic_files import write_atomic
from pipeline.training.job import (
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
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Passed on to the workers: where the app reads no model hub (offline, its cache), neither do they.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
POLL_SECONDS = 0.5
# In the data dir: a node that reads the same token there shares the app's disk.
DISK_TOKEN_FILE = ".cluster-disk-token"
INPUTS_TIMEOUT_SECONDS = 300.0  # a node waits this long for a job's files before the job fails


class _Channel:
    """Events from the running tasks to the app, and stop requests back, by job key. One per app, owned by it."""

    def __init__(self) -> None:
        self.events: dict[str, list[Any]] = {}
        self.places: dict[str, dict[str, Any]] = {}
        self.stops: set[str] = set()
        self.wanted: set[str] = set()  # jobs whose node asked for their files
        self.inputs: dict[str, list[Any]] = {}  # the files' object ref, in a list so Ray passes the ref itself
        self.forgotten: set[str] = set()  # jobs the app let go of: a task still running must not refill them

    def put(self, key: str, event: Any) -> None:
        if key not in self.forgotten:
            self.events.setdefault(key, []).append(event)

    def placed(self, key: str, place: dict[str, Any]) -> None:
        self.places[key] = place

    def flush(self, key: str) -> bool:
        """Answered after every earlier ``put`` of the same caller (an actor runs one caller's calls in order)."""
        return True

    def drain(self, key: str) -> tuple[list[Any], dict[str, Any] | None, bool]:
        return self.events.pop(key, []), self.places.get(key), key in self.wanted

    def want_inputs(self, key: str) -> None:
        self.wanted.add(key)

    def give_inputs(self, key: str, ref: list[Any]) -> None:
        self.inputs[key] = ref
        self.wanted.discard(key)

    def get_inputs(self, key: str) -> list[Any] | None:
        return self.inputs.get(key)

    def release_inputs(self, key: str) -> None:
        self.inputs.pop(key, None)

    def stop(self, key: str) -> None:
        self.stops.add(key)

    def stopped(self, key: str) -> bool:
        return key in self.stops

    def forget(self, key: str) -> None:
        self.events.pop(key, None)
        self.places.pop(key, None)
        self.stops.discard(key)
        self.wanted.discard(key)
        self.inputs.pop(key, None)
        self.forgotten.add(key)


# Per worker process: its loaded base models, reused by its next tasks (CPU tasks share worker processes; Ray gives
# each GPU task a fresh process, which also hands the GPU's memory back when it ends).
_WORKER_GENERATORS: dict[str, Any] = {}


def _compute(spec_data: dict[str, Any], model_folder: str, shared_dir: str, disk_token: str, channel: Any,
             key: str) -> JobOutcome:
    """The Ray task: the job's compute on the node Ray chose, reporting through the channel."""
    import ray

    from pipeline.jobs.queue import default_devices

    context = ray.get_runtime_context()
    channel.placed.remote(key, {"node": context.get_node_id(), "task": context.get_task_id() or "",
                                "pid": os.getpid()})
    asked = [0.0, False]  # last poll time, stop seen

    def should_stop() -> bool:
        if not asked[1] and time.monotonic() - asked[0] >= 1.0:
            asked[0] = time.monotonic()
            asked[1] = bool(ray.get(channel.stopped.remote(key)))
        return bool(asked[1])

    spec = TrainingJobSpec.from_dict(spec_data)
    device = default_devices()[0]
    try:
        if _sees_disk(Path(shared_dir), disk_token):
            return train_and_choose(spec, Path(model_folder), Path(shared_dir), _worker_generators(shared_dir),
                                    device=device, on_event=lambda event: channel.put.remote(key, event),
                                    should_stop=should_stop)
        return _compute_elsewhere(spec, Path(model_folder), shared_dir, device, channel, key, should_stop)
    finally:
        ray.get(channel.flush.remote(key))  # every event is in the channel before the result is


def _sees_disk(shared_dir: Path, token: str) -> bool:
    try:
        return (shared_dir / DISK_TOKEN_FILE).read_text() == token
    except OSError:
        return False


def _worker_generators(folder: str) -> Any:
    from pipeline.generation.generators import Generators

    return _WORKER_GENERATORS.setdefault(folder, Generators(Path(folder)))


def _compute_elsewhere(spec: TrainingJobSpec, app_folder: Path, shared_dir: str, device: str, channel: Any,
                       key: str, should_stop: ev.StopCheck) -> JobOutcome:
    """On a node without the app's disk: the job's files come from the object store into a folder of this node's,
    what it writes goes back through the channel, and its events and result name the app's files."""
    import fcntl

    import ray

    from pipeline.models.base_model import resolve_base_model

    # This node's own data dir for the app (base models it builds, caches), and a folder for this job.
    scratch = Path(tempfile.gettempdir()) / "likeness-node" / hashlib.sha256(shared_dir.encode()).hexdigest()[:16]
    folder = scratch / "jobs" / key
    (scratch / "jobs").mkdir(parents=True, exist_ok=True)
    with _node_lock(scratch):  # no sweep between another job's start and its lock
        running = (scratch / "jobs" / f"{key}.lock").open("w")  # held while the job runs here; a kill lets it go
        fcntl.flock(running, fcntl.LOCK_EX)
        sweep_left_behind(scratch / "jobs")
    folder.mkdir()  # after its lock: a folder without one is never left behind
    try:
        channel.want_inputs.remote(key)
        deadline = time.monotonic() + INPUTS_TIMEOUT_SECONDS
        while (ref := ray.get(channel.get_inputs.remote(key))) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the app did not send the job's files within {INPUTS_TIMEOUT_SECONDS:.0f} s")
            time.sleep(0.2)
        job_files.unpack(ray.get(ref[0]), folder)
        with _node_lock(scratch):  # one build of the tiny model per node
            resolve_base_model(spec.base_model, scratch)
        mirror = job_files.FolderMirror(folder)

        def send_changes() -> None:
            changes = mirror.changes()
            if changes is not None:
                # Waited for: the files are on the app's side before any event names them (and a slow link slows
                # the training rather than piling up bytes).
                ray.get(channel.put.remote(key, changes))

        def on_event(event: ev.Event) -> None:
            if not isinstance(event, ev.TrainStep):  # the files an event names reach the app before it does
                send_changes()
            channel.put.remote(key, job_files.rebase(event, folder, app_folder))

        on_event(ev.Message("this node does not see the app's data dir: the job's files travel through Ray's "
                            "object store"))
        outcome = train_and_choose(spec, folder, scratch, _worker_generators(str(scratch)), device=device,
                                   on_event=on_event, should_stop=should_stop)
        send_changes()
        return job_files.rebase(outcome, folder, app_folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # what it wrote is in the channel's calls already
        (scratch / "jobs" / f"{key}.lock").unlink(missing_ok=True)
        running.close()


@contextlib.contextmanager
def _node_lock(scratch: Path) -> Iterator[None]:
    """One job at a time on this node between these lines (processes of the node share no memory)."""
    import fcntl

    scratch.mkdir(parents=True, exist_ok=True)
    with (scratch / ".node.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def sweep_left_behind(jobs: Path) -> None:
    """Remove the folders of jobs whose process was killed on this node (their lock is free); what they wrote had
    reached the app. Those running now hold their lock and stay."""
    import fcntl

    for lock_path in jobs.glob("*.lock"):
        with lock_path.open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a job running on this node now
            shutil.rmtree(lock_path.with_suffix(""), ignore_errors=True)
            lock_path.unlink(missing_ok=True)


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
        self.disk_token = self._new_disk_token()
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        self._task = ray.remote(
            num_gpus=1 if self.gpus else 0, num_cpus=cpus_per_training, max_retries=0)(_compute)
        logger.info("ray: connected to %s (%s)", address, resources)

    def _new_disk_token(self) -> str:
        """A new random token in the data dir at every start: the nodes that read it there share the app's disk (a
        node with an old copy of the data dir at the same path reads an old token, and gets the files sent)."""
        token = secrets.token_hex(16)
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.shared_dir / DISK_TOKEN_FILE, token.encode())
        return token

    @staticmethod
    def _new_channel() -> Any:
        """The channel lives on the app's own node: a worker node that goes away must not take it along."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        return ray.remote(num_cpus=0, scheduling_strategy=here)(_Channel).remote()

    def slots(self) -> tuple[str, ...]:
        """One queue slot per training the cluster can hold at once, as it is now (the queue asks again every
        ``jobs.RECOUNT_SECONDS``: nodes that join later add slots; slots of nodes that left wait in Ray for room)."""
        import ray

        resources = ray.cluster_resources()
        # Tasks ask for what the cluster had at the start: a GPU each, or CPUs where it had no GPU.
        count = (int(resources.get("GPU", 0)) if self.gpus
                 else int(resources.get("CPU", 1) // self.cpus_per_training))
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

        from pipeline.models.base_model import resolve_base_model
        from pipeline.training.trainer import TrainResult, list_checkpoints

        resolve_base_model(spec.base_model, self.shared_dir)  # the tiny model is built here, not by two workers
        key = f"{spec.model_id}-{time.monotonic_ns()}"
        channel = self._channel
        folder = Path(model_folder).resolve()
        ref = self._task.remote(spec.to_dict(), str(folder), str(self.shared_dir), self.disk_token, channel, key)
        placed: Mapping[str, Any] | None = None
        inputs: list[Any] = []  # the job's files in the object store, held until the job ends
        stop_sent = False

        def deliver(events: list[Any]) -> None:
            for event in events:
                if isinstance(event, job_files.FileChanges):  # from a node without the app's disk
                    job_files.apply(event, folder)
                else:
                    on_event(event)

        try:
            while True:
                done, _ = ray.wait([ref], timeout=POLL_SECONDS)
                events, place, wants_inputs = ray.get(channel.drain.remote(key), timeout=60)
                if place and place != placed:
                    placed = place
                    on_placed(place)
                if wants_inputs and not inputs:
                    inputs.append(ray.put(job_files.pack_inputs(folder, spec.dataset)))
                    channel.give_inputs.remote(key, inputs)
                elif inputs and events:  # the node has unpacked them (it reports only after): free the object store
                    channel.release_inputs.remote(key)
                    inputs.clear()
                deliver(events)
                if not done and should_stop():
                    if placed is None:
                        # Still waiting for a node (none has room, or the one it asked for left): nothing to save.
                        ray.cancel(ref, force=True)
                        return JobOutcome(TrainResult(
                            status=Status.CANCELLED, lora_path=None, kohya_path=None, steps_done=0, final_loss=None,
                            losses=(), checkpoints=list_checkpoints(folder / "lora")))
                    if not stop_sent:
                        channel.stop.remote(key)
                        stop_sent = True
                if done:
                    break
            try:
                return ray.get(ref)
            finally:
                deliver(ray.get(channel.drain.remote(key), timeout=60)[0])
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
        except BaseException:
            # The app's side failed (e.g. its disk is full): the task must not train on unseen beside the next job.
            ray.cancel(ref, force=True)
            raise
        finally:
            # A node that went away may have sent files (a checkpoint) the loop had not drained yet: keep them.
            try:
                deliver(ray.get(channel.drain.remote(key), timeout=10)[0])
            except Exception as exc:  # the job's own error is the one to raise
                logger.warning("ray: the last events of %s were not delivered: %s", spec.model_id, exc)
            channel.forget.remote(key)

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()


"""A throwaway Ray cluster on this machine, for tests/ray_scenario.py and bench/queue.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any


class LocalCluster:
    """A throwaway Ray cluster on this machine — a head and ``workers`` more nodes, CPU only, small object stores,
    in their own temp dir — for the tests and the bench. Stopping it stops only its own processes (``ray stop``
    would stop every Ray process of the user). Run it where only loopback is up (``unshare -n``): Ray binds its
    nodes to a routable address whenever one exists."""

    def __init__(self, *, workers: int = 1, cpus_per_node: int = 1, head_cpus: int | None = None,
                 object_store_bytes: int = 80_000_000) -> None:
        import socket
        import tempfile

        self.temp = Path(tempfile.mkdtemp(prefix="lr", dir="/tmp"))  # Ray's socket paths must stay short
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.workers = workers
        self.head_cpus = cpus_per_node if head_cpus is None else head_cpus
        self.common = ["--block", "--disable-usage-stats", f"--object-store-memory={object_store_bytes}",
                       "--node-ip-address=127.0.0.1"]
        self.worker_args = [*self.common, f"--num-cpus={cpus_per_node}"]
        self.processes: list[Any] = []

    def _ray(self, *args: str, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None, **kwargs: Any) -> Any:
        import subprocess
        import sys

        command = [*prefix, str(Path(sys.executable).with_name("ray")), *args]
        env = {**os.environ, "RAY_TMPDIR": str(self.temp), **(env or {})}
        if kwargs.pop("background", False):
            log = open(self.temp / f"node-{len(self.processes)}.log", "w")  # open while it runs
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return subprocess.run(command, capture_output=True, text=True, env=env, **kwargs)

    def start(self, timeout: float = 60.0) -> LocalCluster:
        self.processes.append(self._ray("start", "--head", f"--port={self.port}", "--include-dashboard=false",
                                        f"--temp-dir={self.temp}", *self.common, f"--num-cpus={self.head_cpus}",
                                        background=True))
        deadline = time.monotonic() + timeout
        while self._ray("status", f"--address={self.address}").returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Ray head did not answer within {timeout:.0f} s (see {self.temp})")
            time.sleep(0.5)
        for _ in range(self.workers):
            self.processes.append(self._ray("start", f"--address={self.address}", *self.worker_args, background=True))
        self._wait_for_nodes(1 + self.workers, deadline)  # a queue sized before its workers joined would be too small
        return self

    def add_worker(self, *, hide: Path | None = None, tmpdir: Path | None = None, timeout: float = 60.0) -> None:
        """One more worker node. ``hide``: the node sees an empty folder there (its own mount namespace, an empty
        tmpfs over it), as a machine without the app's disk would; ``tmpdir``: its processes' TMPDIR."""
        prefix: tuple[str, ...] = ()
        if hide is not None:
            prefix = ("unshare", "-m", "--", "sh", "-c", 'mount -t tmpfs likeness-hidden "$0" && exec "$@"',
                      str(hide))
        env = None
        if tmpdir is not None:
            Path(tmpdir).mkdir(parents=True, exist_ok=True)  # Python ignores a TMPDIR that does not exist
            env = {"TMPDIR": str(tmpdir)}
        expected = self.alive_nodes() + 1
        self.processes.append(self._ray("start", f"--address={self.address}", *self.worker_args, prefix=prefix,
                                        env=env, background=True))
        self._wait_for_nodes(expected, time.monotonic() + timeout)

    def _wait_for_nodes(self, count: int, deadline: float) -> None:
        while self.alive_nodes() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Ray worker nodes did not join in time (see {self.temp})")
            time.sleep(0.5)

    def alive_nodes(self) -> int:
        """Nodes `ray status` lists as active."""
        status = self._ray("status", f"--address={self.address}").stdout
        active = status.partition("Active:")[2].partition("Pending:")[0]
        return sum(1 for line in active.splitlines() if "node_" in line)

    def stop(self) -> None:
        import signal
        import subprocess

        # Each node is its own process group (`ray start --block` and everything it started): all of them are asked
        # at once, and what has not ended after a few seconds is killed (`ray start --block` itself waits long).
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the group's stragglers too, when its leader has ended
            process.wait()
        self.processes.clear()
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

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

    def __init__(self, *, workers: int = 1, cpus_per_node: int = 1, object_store_bytes: int = 80_000_000) -> None:
        import socket
        import tempfile

        self.temp = Path(tempfile.mkdtemp(prefix="lr", dir="/tmp"))  # Ray's socket paths must stay short
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.workers = workers
        self.common = ["--block", "--disable-usage-stats", f"--num-cpus={cpus_per_node}",
                       f"--object-store-memory={object_store_bytes}", "--node-ip-address=127.0.0.1"]
        self.processes: list[Any] = []

    def _ray(self, *args: str, **kwargs: Any) -> Any:
        import subprocess
        import sys

        command = [str(Path(sys.executable).with_name("ray")), *args]
        env = {**os.environ, "RAY_TMPDIR": str(self.temp)}
        if kwargs.pop("background", False):
            log = open(self.temp / f"node-{len(self.processes)}.log", "w")  # noqa: SIM115 - open while it runs
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return subprocess.run(command, capture_output=True, text=True, env=env, **kwargs)

    def start(self, timeout: float = 60.0) -> LocalCluster:
        self.processes.append(self._ray("start", "--head", f"--port={self.port}", "--include-dashboard=false",
                                        f"--temp-dir={self.temp}", *self.common, background=True))
        deadline = time.monotonic() + timeout
        while self._ray("status", f"--address={self.address}").returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Ray head did not answer within {timeout:.0f} s (see {self.temp})")
            time.sleep(0.5)
        for _ in range(self.workers):
            self.processes.append(self._ray("start", f"--address={self.address}", *self.common, background=True))
        while self.alive_nodes() < 1 + self.workers:  # a queue sized before its workers joined would be too small
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Ray worker nodes did not join within {timeout:.0f} s (see {self.temp})")
            time.sleep(0.5)
        return self

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

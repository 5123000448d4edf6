"""The small tinydb files the app keeps its state in (library.json, jobs.json).

Two things tinydb leaves to us: its JSON storage rewrites the file in place, so a crash mid-write loses the
whole library; and it has no locking. Here each write goes to a temporary file that replaces the old one
atomically, and every opener of the same file in this process shares one lock, so the UI, the CLI and the
job workers can each hold their own Library/JobQueue on the same data dir.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage

# One lock per file for the whole process (see module docstring); guarded by _LOCKS_GUARD.
_LOCKS: dict[Path, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


def lock_for(path: Path) -> threading.RLock:
    """The lock every user of ``path`` in this process shares."""
    key = Path(path).resolve()
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.RLock())


class AtomicJSONStorage(Storage):
    """tinydb storage that reads the file on each access and replaces it atomically on write."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> dict[str, dict[str, Any]] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{self.path} is not valid JSON ({error}); restore it from a backup or move it away to start empty"
            ) from error

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1, default=str)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def close(self) -> None:
        pass


@contextmanager
def open_db(path: Path) -> Iterator[TinyDB]:
    """Open ``path`` under its lock for one operation; re-reading each time keeps separate openers consistent."""
    with lock_for(path):
        db = TinyDB(path, storage=AtomicJSONStorage)
        try:
            yield db
        finally:
            db.close()

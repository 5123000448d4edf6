"""The small tinydb files the app keeps its state in (library.json, jobs.json).

Two things tinydb leaves to us: its JSON storage rewrites the file in place, so a crash mid-write loses the
whole library; and it has no locking. Here each write goes to a temporary file that replaces the old one
atomically, and every opener of the same file in this process shares one lock, so the UI, the CLI and the
job workers can each hold their own Library/JobQueue on the same data dir.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import threading
import time
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


def set_aside_if_damaged(path: Path, table: str) -> Path | None:
    """At start-up: a state file that is empty, not JSON, or not tinydb's shape ({table: {id: {...}}}) is moved to
    a timestamped backup beside it (never deleted), so the app starts and the bytes stay for a person to look at.
    Returns the backup's path, or None when the file is missing or sound."""
    path = Path(path)
    with lock_for(path):
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            sound = isinstance(data, dict) and all(
                isinstance(rows, dict) and all(isinstance(row, dict) for row in rows.values())
                for rows in data.values()) and isinstance(data.get(table, {}), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            sound = False
        if sound:
            return None
        # A random tail: the backup may list every workspace, so its name must not be guessable from the time.
        backup = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(8)}")
        os.replace(path, backup)
        return backup


@contextmanager
def open_db(path: Path) -> Iterator[TinyDB]:
    """Open ``path`` under its lock for one operation; re-reading each time keeps separate openers consistent."""
    with lock_for(path):
        db = TinyDB(path, storage=AtomicJSONStorage)
        try:
            yield db
        finally:
            db.close()

"""Models built by code on first use (the tiny FLUX.1, the tiny klein, the tiny video model): saved under the data
dir once, with a version file, and rebuilt whole when the code's version moves on."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.weights_lock import WEIGHTS_LOCK

logger = logging.getLogger(__name__)

_locks_lock = threading.Lock()
_locks: dict[Path, threading.Lock] = {}  # one per folder: two trainings starting at once build it once


def stored_version(folder: str | Path, version_file: str) -> str:
    """The build saved in ``folder`` ("" where there is none)."""
    path = Path(folder) / version_file
    return path.read_text().strip() if path.is_file() else ""


def ensure_built(folder: Path, *, version: str, version_file: str, build: Callable[[], Any], what: str) -> Path:
    """``folder`` holding the pipeline ``build()`` makes at ``version``, built and saved there unless it already is.

    Built beside the target and swapped in, so a crash mid-save never leaves a folder that looks complete.
    """
    folder = Path(folder)
    if stored_version(folder, version_file) == version:
        return folder
    with _locks_lock:
        lock = _locks.setdefault(folder.resolve(), threading.Lock())
    with lock:
        if stored_version(folder, version_file) == version:
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        logger.info("building the embedded %s in %s", what, folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            with WEIGHTS_LOCK:  # a load in another thread must not turn these new weights into meta tensors
                pipe = build()
            pipe.save_pretrained(tmp)
            (tmp / version_file).write_text(version)
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder

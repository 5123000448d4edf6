"""Files handed to the browser (photos, samples, grids, zips, generations) without serving the data dir by path.

Gradio copies a returned file into its cache (under a content-hashed name) only when the file lies in the working
directory or the temp dir; anywhere else it must be in ``allowed_paths``, which would also let anyone who knows a
path fetch it. A data dir elsewhere (a Space's ``/data`` volume) is therefore never allowed: its files are copied
into a private temp folder first, once per file version, and Gradio serves the copy like any other.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path


@functools.cache
def _roots() -> tuple[Path, ...]:
    return Path(os.getcwd()).resolve(), Path(tempfile.gettempdir()).resolve()


@functools.cache
def _copies() -> Path:
    return Path(tempfile.mkdtemp(prefix="likeness-served-"))


def servable(path: Path | str) -> bool:
    """Whether Gradio may copy ``path`` into its cache by itself (no ``allowed_paths`` needed)."""
    resolved = Path(path).resolve()
    return any(resolved.is_relative_to(root) for root in _roots())


def served(path: Path | str, name: str | None = None) -> str:
    """``path`` itself when Gradio may read it, else a copy in a private temp folder (reused while the file is
    unchanged), as a string for a Gradio component. ``name``: the file name the browser should save it as (a copy
    is then always made: a hard link where the disk allows, so a 100 MB LoRA costs nothing)."""
    if name is None and servable(path):
        return str(path)
    source = Path(path).resolve()
    stat = source.stat()
    key = hashlib.sha256(f"{source}:{stat.st_mtime_ns}:{stat.st_size}".encode()).hexdigest()[:32]
    copy = _copies() / key / (name or source.name)
    if not copy.exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        partial = copy.with_name(f".{uuid.uuid4().hex}.part")  # unique: two requests at once never share it
        try:
            os.link(source, partial)
        except OSError:  # another disk, or links not allowed
            shutil.copyfile(source, partial)
        os.replace(partial, copy)
    return str(copy)

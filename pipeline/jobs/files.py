"""A training job's files, for a cluster node that does not see the app's data dir.

The app packs what a job reads (its spec, its dataset, the checkpoints it may resume from); the node unpacks them into
a folder of its own and, as the job goes, sends back what the job wrote there (checkpoints, samples, test images,
LoRAs) and what it deleted (pruned checkpoints), so the app's model folder mirrors the node's. Events and results name
the node's files; ``rebase`` names the app's instead. Nothing here knows Ray: ``pipeline.training.ray_cluster`` moves
the bytes.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from pipeline.storage.atomic_files import write_atomic

_CHECKPOINT = re.compile(r"step-\d+")


@dataclass(frozen=True)
class FileChanges:
    """What a job wrote and deleted in its model folder since the last changes sent: paths relative to it."""

    written: Mapping[str, bytes]
    deleted: tuple[str, ...] = ()


def _inside(folder: Path, relative: str) -> Path:
    """``folder / relative``, refusing a name that would leave the folder (they come from another machine)."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise ValueError(f"refusing a job file outside its model folder: {relative!r}")
    return Path(folder, *parts)


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in Path(folder).rglob("*") if path.is_file())


def pack_inputs(model_folder: Path, dataset: str = "dataset") -> dict[str, bytes]:
    """The files a job reads — its spec, its dataset (the folder named in the spec) and the checkpoints it resumes
    from — by path relative to the model folder."""
    folder = Path(model_folder)
    chosen = [folder / "job.json", _inside(folder, dataset)]
    checkpoints = folder / "lora" / "checkpoints"
    if checkpoints.is_dir():  # complete ones only: not a `.step-….tmp` or a `.corrupt-…` set aside
        chosen += [child for child in checkpoints.iterdir() if _CHECKPOINT.fullmatch(child.name)]
    files: dict[str, bytes] = {}
    for path in chosen:
        for file in ([path] if path.is_file() else _files(path) if path.is_dir() else []):
            files[file.relative_to(folder).as_posix()] = file.read_bytes()
    return files


def unpack(files: Mapping[str, bytes], folder: Path) -> None:
    """Write packed files under ``folder`` (on the node)."""
    for relative, data in files.items():
        target = _inside(folder, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


class FolderMirror:
    """Watches a job's folder on the node: each ``changes()`` is what was written or deleted since the last."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.seen = self._scan()

    def _scan(self) -> dict[str, tuple[int, int, int]]:
        # The inode too: a file replaced whole (os.replace) within the clock's granularity at the same size is new.
        stamps = {}
        for path in _files(self.folder):
            stat = path.stat()
            stamps[path.relative_to(self.folder).as_posix()] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        return stamps

    def changes(self) -> FileChanges | None:
        now = self._scan()
        written = {name: (self.folder / name).read_bytes() for name, stamp in now.items()
                   if self.seen.get(name) != stamp}
        deleted = tuple(sorted(set(self.seen) - set(now)))
        self.seen = now
        return FileChanges(written, deleted) if written or deleted else None


def apply(changes: FileChanges, model_folder: Path) -> None:
    """Mirror a node's changes into the app's model folder. Each file is replaced whole (a reader never sees half
    of one); a folder a deletion empties (a pruned checkpoint's) goes too."""
    folder = Path(model_folder)
    for relative, data in changes.written.items():
        target = _inside(folder, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)
    for relative in changes.deleted:
        target = _inside(folder, relative)
        target.unlink(missing_ok=True)
        parent = target.parent
        while parent != folder and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


T = TypeVar("T")


def rebase(value: T, source: Path, target: Path) -> T:
    """``value`` (an event, a result, a tuple or dict of them) with every path under ``source`` moved under
    ``target``; paths are ``Path`` objects or strings, as the job's dataclasses hold them."""
    source_text = str(source).rstrip(os.sep)

    def move(item: Any) -> Any:
        if isinstance(item, Path):
            return Path(move(str(item)))
        if isinstance(item, str):
            if item == source_text:
                return str(target)
            if item.startswith(source_text + os.sep):
                return str(Path(target, item[len(source_text) + 1:]))
            return item
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return dataclasses.replace(item, **{f.name: move(getattr(item, f.name))
                                                for f in dataclasses.fields(item) if f.init})
        if isinstance(item, tuple | list):
            return type(item)(move(x) for x in item)
        if isinstance(item, dict):
            return {key: move(x) for key, x in item.items()}
        return item

    return move(value)

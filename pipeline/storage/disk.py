"""The data disk: how much a workspace holds, and what a failed write means to the person who asked for it.

A full disk, a read-only data dir or a file-size limit reach the code as ``OSError``s whose text names a server path
and an errno. ``DiskError`` carries a sentence a visitor can act on instead ("the data disk is full: 0 MB free …"),
and is a ``ValueError`` so every caller that shows a ValueError's text (the web page, the API, the CLI) shows it.
``DiskQuota`` watches a workspace's size while a training writes into it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError

# The errnos that mean "the disk did not take the write" (as opposed to a missing file, which is the caller's).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM})


# What a refused write reaches the code as: an OSError, or a library's own error that names the errno only in its text
# (safetensors' Rust writer raises SafetensorError, a plain Exception: "… File too large (os error 27)"; a trainer a
# RuntimeError). Catch these, then ask ``is_disk_error``: only the disk's refusals are ours to explain.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


class DiskError(ValueError):
    """A write to the data dir failed; the message says what failed and what to free, and names no server path."""


def folder_size(folder: Path) -> int:
    """Bytes of every file under ``folder`` (0 when it does not exist)."""
    total = 0
    for path in Path(folder).rglob("*"):
        with contextlib.suppress(OSError):  # a file removed while we count
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total


def free_mb(folder: Path) -> float:
    """Free space on the disk holding ``folder``, in MB (0 when it cannot be read)."""
    try:
        return shutil.disk_usage(folder).free / 1e6
    except OSError:
        return 0.0


def disk_errno(exc: BaseException | str) -> int:
    """The errno of a write the disk refused, or 0. Libraries that write through their own code say it only in
    their text: safetensors' Rust writer "(os error 28)", a trainer's reason "[Errno 28]"."""
    if isinstance(exc, OSError) and exc.errno:
        number = exc.errno
    else:
        found = re.search(r"\[Errno (\d+)\]|\(os error (\d+)\)", str(exc))
        number = int(found[1] or found[2]) if found else 0
    return number if number in DISK_ERRNOS else 0


def is_disk_error(exc: BaseException | str) -> bool:
    return bool(disk_errno(exc))


def as_os_error(exc: BaseException | str) -> OSError:
    """A disk error as an OSError with its errno (for ``disk_error_text``), whatever raised it."""
    number = disk_errno(exc)
    return exc if isinstance(exc, OSError) and exc.errno == number else OSError(number, os.strerror(number))


def disk_error_text(exc: OSError, folder: Path, action: str, *, needed_gb: float = 0.0, then: str = "try again") -> str:
    """What failed and what to do, e.g. "could not save the model: the data disk is full: 0 MB free, a training
    needs ~0.2 GB: free some space (delete old models on the Models tab), then try again"."""
    needs = f", {needed_gb:g} GB needed" if needed_gb else ""
    free = f"{free_mb(folder):.0f} MB free{needs}"
    reasons = {
        errno.ENOSPC: f"the data disk is full: {free}",
        errno.EDQUOT: f"the data disk's quota for this app is used up: {free}",
        # A process file-size limit (ulimit -f) or a filesystem's largest file: the disk may still have room.
        errno.EFBIG: f"a file is larger than the app may write (the process's file-size limit or the filesystem's "
                     f"largest file): {free}",
        errno.EROFS: "the data dir is on a read-only disk",
        errno.EIO: "the data disk reported an input/output error",
        errno.EACCES: "the app may not write to its data dir (permission denied)",
        errno.EPERM: "the app may not write to its data dir (operation not permitted)",
    }
    reason = reasons.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    fix = (f"free some space (delete old models on the Models tab, or photos on the Upload tab), then {then}"
           if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
           else "ask the app's operator to check its data dir")
    return f"could not {action}: {reason}; {fix}"


@dataclass
class DiskQuota:
    """A workspace's disk quota, measured as files are written (not only before a training starts).

    ``check()`` is called after each write; it says the quota would be passed when the workspace already holds
    ``limit_bytes``, or when the next write as large as the largest growth seen between two checks would pass it
    (a training writes checkpoints of one size again and again: the second must not be the one that overshoots).
    """

    folder: Path
    limit_bytes: int  # 0: no quota
    used: int = 0
    largest_growth: int = 0
    reason: str = ""  # set once the quota stops the training
    _started: bool = field(default=False, repr=False)

    def check(self) -> bool:
        """Measure the folder; True (and ``reason`` set) when the training must stop to stay under the quota."""
        if not self.limit_bytes or self.reason:
            return bool(self.reason)
        used = folder_size(self.folder)
        if self._started:
            self.largest_growth = max(self.largest_growth, used - self.used)
        self.used, self._started = used, True
        if used + self.largest_growth > self.limit_bytes:
            self.reason = (f"stopped to stay within your disk quota: your workspace holds {used / 1e9:.3f} GB of the "
                           f"{self.limit_bytes / 1e9:g} GB each person may use, and the next files would pass it; "
                           "delete old models on the Models tab (or photos on the Upload tab), then press Resume")
        return bool(self.reason)

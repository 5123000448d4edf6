"""Every person's own workspace in one data dir, over one shared training queue.

A workspace holds one person's photos, choices, models, generations and downloads. The local workspace is the data
dir itself (a single-user app, and the CLI without ``--user``, keep today's layout); anyone else's lives in
``data_dir/people/<key>/``. The queue (``data_dir/jobs.json``) and the loaded generators are shared, so one
training runs at a time per GPU whoever asked for it; each job names the workspace it belongs to.

Who a person is (a login, a Hugging Face account, a browser's token) is decided by the web layer; here a person is
only a key that names a folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pipeline import events as ev
from pipeline.generators import Generators
from pipeline.jobs import Job, JobQueue
from pipeline.settings import AppSettings
from pipeline.status import JOB_ACTIVE
from pipeline.workflow import LOCAL_WORKSPACE, Workflow, folder_size, make_executor

logger = logging.getLogger(__name__)

PEOPLE_FOLDER = "people"
# What a single-user data dir holds for its person (the queue, base models and caches stay shared).
PERSONAL_ENTRIES = ("photos", "models", "library.json", "generations", "videos", "exports")


class WorkspaceLimit(ValueError):
    """No room for another workspace (``AppSettings.max_workspaces``)."""


class WorkspaceMode(StrEnum):
    """How the app tells people apart (``--workspaces``)."""

    AUTO = "auto"  # single on 127.0.0.1 without a login; per person otherwise
    SINGLE = "single"  # one workspace for everyone: a person on their own machine
    PER_PERSON = "per-browser"  # each login, Hugging Face account or browser gets its own


@dataclass(frozen=True)
class Person:
    """Whose workspace a request acts on: ``key`` names the folder, ``label`` is shown to them."""

    key: str
    label: str
    admin: bool = False


LOCAL_PERSON = Person(LOCAL_WORKSPACE, "this computer", admin=True)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


SECRET_FILE = ".workspaces-secret"


def _digest(secret: bytes, text: str, length: int) -> str:
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()[:length]


def _key(secret: bytes, kind: str, name: str) -> str:
    """A folder name for ``name``: readable when the name is a plain one, never a path, and with a hash keyed by
    the data dir's secret, so that nobody can work out the path of someone's files from their name."""
    readable = name.lower() if _SAFE_NAME.match(name) and name not in (".", "..") else "x"
    return f"{kind}-{readable}-{_digest(secret, kind + ':' + name, 16)}"


def login_person(name: str, secret: bytes, *, admin: bool = False) -> Person:
    """A person who logged in with the app's own login (``--auth`` or ``--users``)."""
    return Person(_key(secret, "user", name), name, admin)


def hf_person(name: str, secret: bytes) -> Person:
    """A person signed in with Hugging Face on a Space."""
    return Person(_key(secret, "hf", name), f"{name} (Hugging Face)")


def token_person(token: str, secret: bytes) -> Person:
    """An anonymous visitor known by a secret token (a browser's cookie, an API caller's header): the folder is
    named by the token's keyed hash, so the folder names on disk do not give the tokens away."""
    return Person("anon-" + _digest(secret, "token:" + token, 32), "this browser")


def install_secret(root: Path) -> bytes:
    """The data dir's own random key for folder names (created once, readable by its owner only). Losing it
    loses the way from a name to its folder, not the data: keep it with the data dir's backups."""
    path = Path(root) / SECRET_FILE
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


class Workspaces:
    """The workflows of everyone who has used the app, created on first use and kept while it runs."""

    def __init__(self, settings: AppSettings, *, start_worker: bool = True) -> None:
        self.settings = settings
        self.root = Path(settings.data_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.secret = install_secret(self.root)
        self._lock = threading.Lock()
        self._flows: dict[str, Workflow] = {}
        self._generators = Generators(self.root)
        self.executor = make_executor(settings, self._generators)
        self.jobs = JobQueue(self.root, self._run_job, autostart=False, devices=self.executor.slots(),
                             recount=None if self.executor.local else self.executor.slots)
        self.local = self._make(LOCAL_WORKSPACE, self.root, False)
        self.notices: list[str] = []  # the queue's; each workspace keeps its own (a damaged library, …)
        if self.jobs.damaged_backup is not None:
            self.notices.append(f"The training queue ({self.jobs.db_path.name}) was damaged and was moved aside to "
                                f"{self.jobs.damaged_backup.name}.")
        if start_worker:
            self.start()

    def start(self) -> None:
        """Mark each workspace's trainings that lost their place in the queue, then start the queue's workers."""
        for key in [LOCAL_WORKSPACE, *self.keys()]:
            self.get_key(key)._fail_orphaned_models()
        self.jobs.start()

    def _make(self, key: str, folder: Path, check_orphans: bool) -> Workflow:
        flow = Workflow(self.settings, start_worker=check_orphans, workspace=key, folder=folder, jobs=self.jobs,
                        executor=self.executor,
                        generators=self._generators)
        self._flows[key] = flow
        return flow

    def login(self, name: str, *, admin: bool = False) -> Person:
        return login_person(name, self.secret, admin=admin)

    def hf_account(self, name: str) -> Person:
        return hf_person(name, self.secret)

    def browser(self, token: str) -> Person:
        return token_person(token, self.secret)

    def folder(self, key: str) -> Path:
        return self.root if key == LOCAL_WORKSPACE else self.root / PEOPLE_FOLDER / key

    def get(self, person: Person) -> Workflow:
        return self.get_key(person.key)

    def get_key(self, key: str) -> Workflow:
        if key != LOCAL_WORKSPACE and not re.fullmatch(r"[a-z]+-[a-z0-9_.-]+", key):
            raise ValueError(f"not a workspace name: {key!r}")
        with self._lock:
            flow = self._flows.get(key)
            if flow is None:
                if not self.folder(key).exists():
                    self._make_room()
                flow = self._make(key, self.folder(key), check_orphans=self.jobs.running)
            return flow

    def _make_room(self) -> None:
        """Every visitor (or API call without a token) gets a workspace: past ``max_workspaces`` the empty anonymous
        ones older than an hour go first, and when none can, a new person is refused rather than filling the disk."""
        cap = self.settings.max_workspaces
        if not cap or len(self.keys()) < cap:
            return
        self.prune_empty(min_age_seconds=3600)
        if len(self.keys()) >= cap:
            raise WorkspaceLimit(f"this app already holds {cap} people's workspaces and has no room for another; "
                                 "ask its operator")

    def prune_empty(self, min_age_seconds: float = 3600) -> list[str]:
        """Remove anonymous workspaces with no photos and no models, untouched for ``min_age_seconds``."""
        import time

        removed = []
        for key in self.keys():
            folder = self.folder(key)
            if not key.startswith("anon-") or time.time() - folder.stat().st_mtime < min_age_seconds:
                continue
            photos = [p for p in (folder / "photos").rglob("*") if p.is_file() and p.suffix != ".json"]
            models = list((folder / "models").iterdir()) if (folder / "models").is_dir() else []
            if not photos and not models:
                self._flows.pop(key, None)
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(key)
        return removed

    def keys(self) -> list[str]:
        """Every workspace on disk besides the local one."""
        people = self.root / PEOPLE_FOLDER
        return sorted(p.name for p in people.iterdir() if p.is_dir()) if people.is_dir() else []

    def _run_job(self, job: Job, should_stop: ev.StopCheck) -> None:
        # The job names its workspace; jobs queued before workspaces existed belong to the local one.
        self.get_key(job.payload.get("workspace", LOCAL_WORKSPACE)).run_job(job, should_stop)

    # ------------------------------------------------------------------ the operator's view
    def usage(self) -> list[WorkspaceUsage]:
        """Disk, photos, models and trainings of every workspace (the admin view)."""
        active = {}
        for job in self.jobs.list():
            if job.status in JOB_ACTIVE:
                key = job.payload.get("workspace", LOCAL_WORKSPACE)
                active[key] = active.get(key, 0) + 1
        rows = []
        for key in [LOCAL_WORKSPACE, *self.keys()]:
            flow = self.get_key(key)
            size = self._local_size() if key == LOCAL_WORKSPACE else folder_size(self.folder(key))
            rows.append(WorkspaceUsage(key, size, len(flow.list_photos()), len(flow.library.list()),
                                       active.get(key, 0)))
        return rows

    def _local_size(self) -> int:
        """The local workspace's bytes: only its own entries of the data dir (not the queue, caches, others)."""
        total = 0
        for name in PERSONAL_ENTRIES:
            path = self.root / name
            total += path.stat().st_size if path.is_file() else folder_size(path)
        return total

    def delete(self, key: str) -> None:
        """Remove a person's workspace and everything in it (their trainings are stopped first)."""
        if key == LOCAL_WORKSPACE:
            raise ValueError("the local workspace is the data dir itself; delete its models one by one instead")
        flow = self.get_key(key)
        for record in flow.library.list():
            flow.cancel_training(record.id)
        with self._lock:
            self._flows.pop(key, None)
        shutil.rmtree(self.folder(key), ignore_errors=True)

    def adopt_local_data(self, person: Person) -> list[str]:
        """Migration: a data dir used by one person before workspaces existed becomes ``person``'s workspace.

        Moves (renames, on the same disk) the photos, models, library and outputs into the person's folder and
        points their queued jobs there; runs once, before the queue starts. Returns what was moved.
        """
        if self.jobs.running:
            raise RuntimeError("adopt the local data before the training queue starts")
        target = self.folder(person.key)
        if person.key == LOCAL_WORKSPACE or not (self.local.list_photos() or self.local.library.list()):
            return []  # nothing to adopt (a fresh local workspace's empty folders are not data)
        present = [name for name in PERSONAL_ENTRIES if (self.root / name).exists()]
        if any((target / name).exists() for name in present):
            self.notices.append(f"The data dir holds photos or models of its own and so does {person.label}'s "
                                "workspace: they were left where they are (the CLI without --user shows them).")
            return []
        target.mkdir(parents=True, exist_ok=True)
        for name in present:
            (self.root / name).rename(target / name)
        for job in self.jobs.list():
            if "workspace" not in job.payload:
                self.jobs.set_payload(job.id, {**job.payload, "workspace": person.key})
        with self._lock:  # the local workflow read the moved files: start it again on the empty data dir
            self.local = self._make(LOCAL_WORKSPACE, self.root, False)
            self._flows.pop(person.key, None)
        logger.info("moved the single-user data (%s) into %s's workspace %s", ", ".join(present), person.label,
                    target)
        return present

    def close(self) -> None:
        if self.jobs.stop():  # a worker still inside a job keeps the executor it uses
            self.executor.close()


@dataclass(frozen=True)
class WorkspaceUsage:
    key: str
    bytes: int
    photos: int
    models: int
    active_trainings: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

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
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pipeline import events as ev
from pipeline.generation.generators import Generators
from pipeline.jobs.queue import Job, JobKind, JobQueue
from pipeline.models.base_choice import free_gpu_gb, pick_base_model
from pipeline.settings import AppSettings
from pipeline.status import JOB_ACTIVE
from pipeline.video.i2v import VideoModels
from pipeline.workflow import LOCAL_WORKSPACE, Workflow, folder_size, make_executor

logger = logging.getLogger(__name__)

PEOPLE_FOLDER = "people"
# What a single-user data dir holds for its person (the queue, base models and caches stay shared).
PERSONAL_ENTRIES = ("photos", "models", "library.json", "generations", "videos", "exports")


class WorkspaceLimit(ValueError):
    """No room for another workspace (``AppSettings.max_workspaces``), or this client made too many."""


@dataclass(frozen=True)
class CreationLimits:
    """How fast anonymous visitors may make workspaces. A workspace is made by the first thing a person stores (a
    photo, a generation, a settings draft), never by a read; these bound what one client address can make.

    The defaults let an office behind one address bring ``per_client`` new browsers an hour, while one client that
    loops over new tokens needs ``max_workspaces / per_client`` hours to fill the app (1000 / 20: 50 h), and its
    empty workspaces are gone ``empty_after_s`` after their last change.
    """

    per_client: int = 20  # new anonymous workspaces one client address may make per window
    window_s: float = 3600.0
    empty_after_s: float = 600.0  # an anonymous workspace with no photos and no models, untouched this long, goes
    prune_every_s: float = 60.0  # how often creating a workspace first sweeps the empty ones
    # When the app is full, an empty workspace must be untouched this long to make room: one made a moment ago may
    # be storing its first photo.
    evict_after_s: float = 60.0
    max_clients: int = 100_000  # addresses remembered at once (the table must not grow without bound)

    def validate(self) -> CreationLimits:
        for name in ("per_client", "window_s", "empty_after_s", "max_clients"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CreationLimits.{name} must be above 0, got {getattr(self, name)!r}")
        return self


class CreationRate:
    """Sliding-window count of the anonymous workspaces each client address made (kept in memory: a restart
    forgets it, which only gives a client one more window)."""

    def __init__(self, limits: CreationLimits) -> None:
        self.limits = limits
        self._made: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._made.get(client)
        if times is None:
            if len(self._made) >= self.limits.max_clients:  # forget the addresses with nothing in the window
                self._made = {c: t for c, t in self._made.items() if t and now - t[-1] < self.limits.window_s}
            times = self._made[client] = deque()
        while times and now - times[0] >= self.limits.window_s:
            times.popleft()
        return times

    def wait(self, client: str, now: float | None = None) -> float:
        """Seconds until ``client`` may make another workspace (0: now)."""
        now = time.monotonic() if now is None else now
        times = self._recent(client, now)
        return 0.0 if len(times) < self.limits.per_client else times[0] + self.limits.window_s - now

    def made(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._recent(client, now).append(now)

    def held(self, client: str) -> int:
        """Workspaces ``client`` made within the window (as of its last ``wait``)."""
        return len(self._made.get(client, ()))


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


MIN_TOKEN_LENGTH = 24
# Estimated bits (token_bits) a caller-chosen token needs. The estimate undercounts random tokens: over 20 000
# samples each, token_urlsafe(18) scored 86 at least, a uuid4 111, token_urlsafe(32) 187; secrets.token_hex(12)
# (96 real bits) 58.9 at least over a million samples (28 of them under 64); "a" * 24 and "abcdef…" score 0,
# "abab…" (40 characters) 40.
MIN_TOKEN_BITS = 56


def token_bits(token: str) -> float:
    """A cautious estimate of a caller-chosen token's entropy in bits: its length times the empirical entropy per
    character, taken both over its characters and over the steps between neighbours (so that "aaaa…", "abab…" and
    "abcdef…" all score low, and a random token of the same length scores high)."""
    import math
    from collections import Counter

    def per_symbol(symbols: list[int]) -> float:
        counts = Counter(symbols)
        return -sum(c / len(symbols) * math.log2(c / len(symbols)) for c in counts.values()) if symbols else 0.0

    codes = [ord(c) for c in token]
    steps = [b - a for a, b in zip(codes, codes[1:], strict=False)]
    return len(token) * min(per_symbol(codes), per_symbol(steps))


def check_token(token: str, header: str) -> None:
    """Refuse a workspace token that could be guessed or picked by someone else too: two clients that chose the
    same weak token ("a" * 24) would share one workspace."""
    if len(token) < MIN_TOKEN_LENGTH or token_bits(token) < MIN_TOKEN_BITS:
        raise ValueError(f"the {header} token is too easy to guess ({len(token)} characters, about "
                         f"{token_bits(token):.0f} bits; at least {MIN_TOKEN_LENGTH} characters and "
                         f"{MIN_TOKEN_BITS} bits are needed): send a random one, e.g. python -c \"import secrets; "
                         "print(secrets.token_urlsafe(32))\", and keep it to come back to your workspace")


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


BLANK_FOLDER = ".blank-workspace"
BLANK_KEY = "blank-nobody"


class NothingStored(RuntimeError):
    """Something tried to store through the read-only view of a person who has no workspace yet (a bug: a
    handler that stores must ask ``Workspaces.get``, which makes the workspace)."""


class BlankWorkflow(Workflow):
    """What a person without a workspace reads: no photos, no models, no draft. One object serves every such
    person, so each method that would store something from nothing refuses loudly instead of writing where the
    next visitor would read it (the others need a photo or a model first, and find none)."""

    def _refuse(self, *_args: object, **_kwargs: object) -> None:
        raise NothingStored("bug: this handler stores through the read view; it must use Workspaces.get")

    add_photos = set_override = set_overrides = set_caption = save_settings_draft = _refuse  # type: ignore[assignment]
    generate = compare = video = queue_video = _refuse  # type: ignore[assignment]

    def is_blank(self) -> bool:
        """Still nothing in it: no file anywhere in its folder but the empty library's own."""
        return not any(p.is_file() and p.name != "library.json" for p in self.data_dir.rglob("*")) \
            and not self.library.list()


class Workspaces:
    """The workflows of everyone who has stored something, created on the first store and kept while it runs."""

    def __init__(self, settings: AppSettings, *, start_worker: bool = True,
                 limits: CreationLimits | None = None) -> None:
        # ``--base-model auto`` is chosen once, before anything takes GPU memory, and is the same for everyone.
        self.base_model_pick = pick_base_model(settings.base_model, free_gpu_gb)
        settings = dataclasses.replace(settings, base_model=self.base_model_pick.spec)
        self.settings = settings
        self.limits = (limits or CreationLimits()).validate()
        self._rate = CreationRate(self.limits)
        self._creators: dict[str, str] = {}  # anonymous workspace key -> the client address that made it
        self._last_prune = 0.0
        self._blank: BlankWorkflow | None = None
        self.root = Path(settings.data_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.secret = install_secret(self.root)
        self._lock = threading.Lock()
        self._flows: dict[str, Workflow] = {}
        self._generators = Generators(self.root)
        self._video_models = VideoModels(self.root)  # the video model, loaded once for everyone
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
                        executor=self.executor, generators=self._generators, video_models=self._video_models,
                        base_model_pick=self.base_model_pick)
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

    def get(self, person: Person, client: str = "") -> Workflow:
        """``person``'s workspace, made now if they have none: for a handler about to store something. An anonymous
        person's is made only within ``client``'s creation rate and the app's ``max_workspaces``."""
        return self.get_key(person.key, client)

    def find(self, person: Person) -> Workflow | None:
        """``person``'s workspace if they have one (``None`` otherwise): reads never make one."""
        key = person.key
        with self._lock:  # the check and the opening at once: a sweep cannot remove the folder in between
            flow = self._flows.get(key)
            if flow is None and (key == LOCAL_WORKSPACE or self.folder(key).is_dir()):
                flow = self._make(key, self.folder(key), check_orphans=self.jobs.running)
            return flow

    def view(self, person: Person) -> Workflow:
        """What ``person`` reads: their workspace, or the blank view when they have stored nothing yet."""
        return self.find(person) or self.blank()

    def blank(self) -> BlankWorkflow:
        """The shared read-only view of no workspace, checked empty before each use: should a bug ever have stored
        something in it, that is wiped (and logged) before anyone else can read it."""
        with self._lock:
            if self._blank is None or not self._blank.is_blank():
                if self._blank is not None:
                    logger.error("something was stored in the blank workspace view; wiped it")
                folder = self.root / BLANK_FOLDER
                shutil.rmtree(folder, ignore_errors=True)
                self._blank = BlankWorkflow(self.settings, start_worker=False, workspace=BLANK_KEY, folder=folder,
                                            jobs=self.jobs, executor=self.executor, generators=self._generators,
                                            video_models=self._video_models, base_model_pick=self.base_model_pick)
            return self._blank

    def get_key(self, key: str, client: str = "") -> Workflow:
        if key != LOCAL_WORKSPACE and not re.fullmatch(r"[a-z]+-[a-z0-9_.-]+", key):
            raise ValueError(f"not a workspace name: {key!r}")
        with self._lock:
            flow = self._flows.get(key)
            if flow is None:
                new = key != LOCAL_WORKSPACE and not self.folder(key).exists()
                if new:
                    self._admit(key, client)
                flow = self._make(key, self.folder(key), check_orphans=self.jobs.running)
                if new and key.startswith("anon-"):
                    self._rate.made(client)
                    self._creators[key] = client
            return flow

    def _admit(self, key: str, client: str) -> None:
        """May a new workspace ``key`` be made for ``client``? (Called with the lock held.)

        1. An anonymous one counts against its client address's rate (``CreationLimits.per_client``): a client
           looping over new tokens is refused, the next visitor from elsewhere is not.
        2. Empty anonymous workspaces idle ``empty_after_s`` are swept (at most every ``prune_every_s``, and always
           when the app is full).
        3. Past ``max_workspaces``: an anonymous client that already made one in this window is refused (it has a
           workspace to use); anyone else is let in by removing the empty anonymous workspaces of the client that
           made the most; only when every workspace holds photos or models is the newcomer refused.
        """
        anonymous = key.startswith("anon-")
        if anonymous:
            wait = self._rate.wait(client)
            if wait:
                raise WorkspaceLimit(f"this address made {self.limits.per_client} new workspaces within "
                                     f"{self.limits.window_s / 60:.0f} minutes; use one of them (keep its token or "
                                     f"cookie) or try again in {wait / 60:.0f} minutes")
        now = time.monotonic()
        if now - self._last_prune >= self.limits.prune_every_s:
            self._last_prune = now
            self._prune_empty(self.limits.empty_after_s)
        cap = self.settings.max_workspaces
        if not cap or len(self.keys()) < cap:
            return
        self._prune_empty(self.limits.empty_after_s)
        if len(self.keys()) < cap:
            return
        if anonymous and self._rate.held(client):
            raise WorkspaceLimit(f"this app holds {cap} people's workspaces, and this address made one recently: "
                                 "use that one (keep its token or cookie)")
        made: dict[str, list[str]] = {}
        for other, creator in self._creators.items():
            made.setdefault(creator, []).append(other)
        for creator in sorted(made, key=lambda c: len(made[c]), reverse=True):
            if self._prune_empty(self.limits.evict_after_s, only=set(made[creator]), most=1):
                logger.warning("the app was full: removed empty workspaces made by one client to let a new person in")
                return
        raise WorkspaceLimit(f"this app already holds {cap} people's workspaces and has no room for another; "
                             "ask its operator")

    def prune_empty(self, min_age_seconds: float = 600) -> list[str]:
        """Remove anonymous workspaces with no photos and no models, untouched for ``min_age_seconds``."""
        with self._lock:
            return self._prune_empty(min_age_seconds)

    def _prune_empty(self, min_age_seconds: float, only: set[str] | None = None,
                     most: int | None = None) -> list[str]:
        """The sweep (lock held): ``only`` these keys when given, at most ``most`` of them, the longest idle first."""
        removed: list[str] = []
        busy = {job.payload.get("workspace") for job in self.jobs.list() if job.status in JOB_ACTIVE}
        for key in sorted(self.keys(), key=lambda k: _last_change(self.folder(k))):
            if most is not None and len(removed) >= most:
                break
            folder = self.folder(key)
            if not key.startswith("anon-") or (only is not None and key not in only) or key in busy:
                continue  # a training waiting for a workspace may not have made its models folder yet
            if time.time() - _last_change(folder) < min_age_seconds:
                continue
            photos = [p for p in (folder / "photos").rglob("*") if p.is_file() and p.suffix != ".json"]
            models = list((folder / "models").iterdir()) if (folder / "models").is_dir() else []
            if not photos and not models:
                self._flows.pop(key, None)
                self._creators.pop(key, None)
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
            if job.status in JOB_ACTIVE and job.kind == JobKind.TRAIN:  # a clip in the queue is no training
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


def _last_change(folder: Path) -> float:
    """The newest modification time of the folder and what is directly in it (a settings draft rewritten in
    place does not touch the folder's own time)."""
    try:
        return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])
    except OSError:
        return time.time()


@dataclass(frozen=True)
class WorkspaceUsage:
    key: str
    bytes: int
    photos: int
    models: int
    active_trainings: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

"""The uploaded originals, stored content-addressed so the same file uploaded twice is stored once.

Each accepted file is checked (size, pixel count, a full decode) before it is written; a refused file raises
:class:`PhotoRejected` with a stable code and never touches what is already stored. The index is a JSON file
beside the originals, rewritten atomically, so the store survives a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.intake.images import ImageError, image_size, open_image
from pipeline.settings import IntakeSettings
from pipeline.storage.atomic_files import write_atomic

logger = logging.getLogger(__name__)

ID_LENGTH = 16  # hex digits of sha256: 64 bits, no collision among a person's photos
INDEX_NAME = "index.json"
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "HEIF": ".heic", "TIFF": ".tif",
               "BMP": ".bmp", "MPO": ".jpg"}


@dataclass(frozen=True)
class StoredPhoto:
    id: str  # sha256 hex prefix of the file's bytes
    name: str  # the file name as uploaded (the first one, if the same bytes came twice)
    path: Path
    width: int  # upright (EXIF orientation applied)
    height: int


@dataclass(frozen=True)
class Rejection:
    name: str
    code: str  # "unreadable" | "too_large" | "limit_reached"
    message: str


@dataclass(frozen=True)
class IntakeResult:
    accepted: tuple[StoredPhoto, ...]
    rejected: tuple[Rejection, ...]
    already_stored: tuple[str, ...] = ()  # names of accepted files whose bytes were stored before: kept once

    @property
    def added(self) -> int:
        """How many photos this batch newly stored."""
        return len(self.accepted) - len(self.already_stored)


class PhotoNotFound(ValueError):
    """No (or no single) stored photo answers to the given id or name."""


class PhotoRejected(ValueError):
    """A file refused at upload; ``code`` is "unreadable", "too_large" or "limit_reached"."""

    def __init__(self, name: str, code: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.code = code
        self.reason = message

    def rejection(self) -> Rejection:
        return Rejection(name=self.name, code=self.code, message=self.reason)


def photo_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:ID_LENGTH]


class PhotoStore:
    """Originals in ``folder`` named by their hash, with ``index.json`` keeping names and sizes."""

    def __init__(self, folder: Path, settings: IntakeSettings = IntakeSettings()) -> None:  # noqa: B008 (frozen)
        self.folder = Path(folder)
        self.settings = settings.validate()
        self._lock = threading.Lock()  # Gradio may call from several threads
        self.folder.mkdir(parents=True, exist_ok=True)
        self._photos: dict[str, StoredPhoto] = self._read_index()

    # -- public API ---------------------------------------------------------------------------------------------
    def add(self, name: str, data: bytes) -> StoredPhoto:
        """Check and store one file; the same bytes twice return the stored photo. Raises PhotoRejected."""
        name = Path(name).name or "photo"
        pid = photo_id(data)
        limit_mb = self.settings.max_file_mb
        if len(data) > limit_mb * 1024 * 1024:
            raise PhotoRejected(name, "too_large", f"{len(data) / 2**20:.1f} MB is over the {limit_mb:g} MB limit: "
                                                   "export it at a lower size or quality")
        with self._lock:
            existing = self._photos.get(pid)
            self._check_room(name, pid)
        if existing is not None:
            logger.info("%s is already stored as %s", name, existing.name)
            return existing
        try:  # outside the lock: a big PNG takes a while to check, other uploads need not wait
            decoded = open_image(data, max_pixels=self.settings.max_pixels, max_side=64)
        except ImageError as exc:
            raise PhotoRejected(name, exc.code, str(exc)) from exc
        width, height = decoded.original_size
        path = self.folder / f"{pid}{_EXTENSIONS.get(decoded.format, '.img')}"
        with self._lock:
            if pid in self._photos:  # the same bytes arrived from another thread meanwhile
                return self._photos[pid]
            self._check_room(name, pid)
            name = self._unique_name(name)
            write_atomic(path, data)
            photo = StoredPhoto(id=pid, name=name, path=path, width=width, height=height)
            self._photos[pid] = photo
            self._write_index()
        logger.info("stored %s as %s (%d×%d)", name, path.name, width, height)
        return photo

    def _unique_name(self, name: str) -> str:
        """Names identify photos on the Review tab: a different photo with a taken name becomes "name (2).jpg"."""
        taken = {photo.name for photo in self._photos.values()}
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{stem} ({n}){suffix}"
        return candidate

    def _check_room(self, name: str, pid: str) -> None:
        if pid not in self._photos and len(self._photos) >= self.settings.max_photos:
            raise PhotoRejected(name, "limit_reached",
                                f"already {len(self._photos)} photos, the limit is {self.settings.max_photos}: "
                                "remove some before adding more")

    def add_files(self, paths: Iterable[Path | str]) -> IntakeResult:
        """Add each file; a refused file is reported and the batch goes on."""
        accepted: list[StoredPhoto] = []
        rejected: list[Rejection] = []
        already: list[str] = []
        with self._lock:
            seen = set(self._photos)
        for item in paths:
            path = Path(item)
            try:
                data = path.read_bytes()
            except OSError as exc:
                rejected.append(Rejection(path.name, "unreadable", f"cannot read the file: {exc.strerror or exc}"))
                continue
            try:
                photo = self.add(path.name, data)
            except PhotoRejected as exc:
                logger.info("refused %s: %s", path.name, exc)
                rejected.append(exc.rejection())
                continue
            if photo.id in seen:
                already.append(path.name)
            seen.add(photo.id)
            accepted.append(photo)
        return IntakeResult(accepted=tuple(accepted), rejected=tuple(rejected), already_stored=tuple(already))

    def list(self) -> list[StoredPhoto]:
        """Stored photos in upload order."""
        with self._lock:
            return list(self._photos.values())

    def get(self, photo_id: str) -> StoredPhoto:
        with self._lock:
            try:
                return self._photos[photo_id]
            except KeyError:
                raise KeyError(f"photo_id: no stored photo {photo_id!r}") from None

    def find(self, ref: str) -> StoredPhoto:
        """A photo by its id, the start of its id (as the UI shows it) or its name. Raises PhotoNotFound."""
        ref = ref.strip()
        with self._lock:
            photos = list(self._photos.values())
        matches = [p for p in photos if p.id == ref or p.name == ref] or \
                  [p for p in photos if len(ref) >= 4 and p.id.startswith(ref)]
        if len(matches) != 1:
            raise PhotoNotFound(f"photo: {'no' if not matches else 'more than one'} uploaded photo matches {ref!r}; "
                                "click the photo in the gallery to select it")
        return matches[0]

    def remove(self, photo_id: str) -> None:
        """Forget a photo and delete its file; an unknown id is ignored (it is already gone)."""
        with self._lock:
            photo = self._photos.pop(photo_id, None)
            if photo is None:
                return
            self._write_index()
        photo.path.unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self._photos)

    # -- the index on disk ------------------------------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.folder / INDEX_NAME

    def _read_index(self) -> dict[str, StoredPhoto]:
        if not self.index_path.exists():
            return self._rebuild_index()
        try:
            records = json.loads(self.index_path.read_text())["photos"]
            photos = {}
            for record in records:
                photo = StoredPhoto(id=record["id"], name=record["name"], path=self.folder / record["file"],
                                    width=int(record["width"]), height=int(record["height"]))
                if photo.path.exists():  # a file deleted by hand is dropped, not reported as stored
                    photos[photo.id] = photo
            return photos
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("photo index %s is unreadable (%s); rebuilding it from the files", self.index_path, exc)
            return self._rebuild_index()

    def _rebuild_index(self) -> dict[str, StoredPhoto]:
        """Recover the originals from their content-addressed files (upload names are lost, file names kept)."""
        photos: dict[str, StoredPhoto] = {}
        for path in sorted(self.folder.iterdir()):
            pid = path.stem
            if len(pid) != ID_LENGTH or not all(c in "0123456789abcdef" for c in pid) or not path.is_file():
                continue
            try:
                width, height = image_size(path)
            except ImageError:
                continue
            photos[pid] = StoredPhoto(id=pid, name=path.name, path=path, width=width, height=height)
        if photos:
            self._photos = photos
            self._write_index()
        return photos

    def _write_index(self) -> None:
        records = []
        for photo in self._photos.values():
            record = asdict(photo)
            record["file"] = photo.path.name
            del record["path"]
            records.append(record)
        write_atomic(self.index_path, json.dumps({"photos": records}, indent=2).encode())


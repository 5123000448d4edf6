"""The model library: every LoRA the user trained, its metadata in tinydb (data_dir/library.json), its files in
data_dir/models/<id>/.

Records are frozen ModelRecords; change them through Library.update/rename/set_trigger_word. Paths are stored
relative to the data dir so the whole folder can be moved or backed up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tinydb import Query

from pipeline.assessment.scores import ModelScores
from pipeline.intake.trigger import generate_trigger_word, validate_trigger_word
from pipeline.status import MODEL_BUSY, MODEL_FINISHED, MODEL_STATUSES, Status
from pipeline.storage.jsondb import open_db, set_aside_if_damaged

logger = logging.getLogger(__name__)

_PATH_FIELDS = ("folder", "lora_path", "kohya_path", "sample_grid")
_READ_ONLY_FIELDS = ("id", "folder", "created_at")
MAX_NAME_LENGTH = 80
# The base of a model recovered from a folder whose LoRA header and job spec do not name it (drawn on the app's).
UNKNOWN_BASE_MODEL = "unknown"


class ModelNotFound(ValueError):
    """No model in the library has this id (or name)."""


def now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds, the format every timestamp in the library uses."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ModelRecord:
    """One trained (or training) model, as the library stores it."""

    id: str
    name: str
    trigger_word: str
    base_model: str
    status: Status  # one of MODEL_STATUSES
    folder: Path  # data_dir/models/<id>
    created_at: str
    settings: dict = field(default_factory=dict)  # TrainSettings as a dict
    dataset: dict = field(default_factory=dict)  # summary: photos used, counts, resolution, captioner
    scores: ModelScores | None = None  # the best checkpoint's assessment; None until assessed
    lora_path: Path | None = None  # diffusers-format LoRA safetensors
    kohya_path: Path | None = None  # kohya/ComfyUI-format LoRA safetensors
    sample_grid: Path | None = None
    finished_at: str | None = None
    error: str = ""
    checkpoints: tuple[dict, ...] = ()  # {"step": int, "path": Path, "scores": dict}
    best_checkpoint_step: int | None = None
    best_lora_scale: float | None = None

    @property
    def is_ready(self) -> bool:
        return self.status == Status.READY and self.lora_path is not None and self.lora_path.is_file()

    @property
    def label(self) -> str:
        """How the UI names the model in lists: name, start time (it tells apart runs of one name) and status."""
        return f"{self.name} · {self.created_at[:19].replace('T', ' ')} ({self.status})"


def slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "model"


def check_complete(path: Path, name: str) -> None:
    """A download must not carry a half-written LoRA (a full disk, a kill mid-save): the safetensors header must
    parse and the file must be exactly as long as the tensors it lists."""
    try:
        with open(path, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_size))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        complete = path.stat().st_size == 8 + header_size + end
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        complete = False
    if not complete:
        raise ValueError(f"model_id: the LoRA file of {name!r} ({path.name}) is damaged or incomplete; "
                         "train it again or resume it")


def _unique_name(name: str, taken: list[str]) -> str:
    """``name``, or ``name (2)``, ``name (3)``… when the library already has it: names find models in the CLI."""
    used = {t.casefold() for t in taken}
    candidate, number = name, 2
    while candidate.casefold() in used:
        candidate, number = f"{name} ({number})", number + 1
    return candidate


class Library:
    """All models under ``data_dir``. Safe to use from several threads and several instances in one process."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.models_dir = self.data_dir / "models"
        self.exports_dir = self.data_dir / "exports"
        self.db_path = self.data_dir / "library.json"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.notices: list[str] = []  # what start-up repaired, for the page to say
        # A training's end that the disk did not take (full, read-only): kept here, shown by get() and list(), and
        # written by the next write that works, so the model does not say "training" until the app restarts.
        self._unsaved_ends: dict[str, dict[str, Any]] = {}
        self._unsaved_lock = threading.Lock()
        backup = set_aside_if_damaged(self.db_path, "models")
        if backup is not None:
            recovered = self.rebuild_from_folders()
            self.notices.append(
                f"The model library ({self.db_path.name}) was damaged: it was moved aside to {backup.name} and "
                f"{len(recovered)} model(s) were recovered from their folders. Scores and checkpoint choices of "
                "recovered models are not restored; their LoRA files are.")
            logger.warning("%s", self.notices[-1])

    # -- storage <-> record -------------------------------------------------------------------------------------

    def stored_form(self, value: Any) -> Any:
        """``value`` as the database keeps it: paths relative to the data dir, tuples as lists."""
        if isinstance(value, ModelScores):
            return value.to_dict()
        if isinstance(value, Path):
            try:
                return value.resolve().relative_to(self.data_dir.resolve()).as_posix()
            except ValueError:
                return str(value)
        if isinstance(value, dict):
            return {k: self.stored_form(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.stored_form(v) for v in value]
        return value

    def _from_stored_path(self, value: str | None) -> Path | None:
        if value is None or value == "":
            return None
        path = Path(value)
        return path if path.is_absolute() else self.data_dir / path

    def _record(self, doc: dict[str, Any]) -> ModelRecord:
        unsaved = self._unsaved_ends.get(doc.get("id", ""))
        if unsaved:
            doc = {**doc, **self.stored_form(unsaved)}
        names = {f.name for f in dataclasses.fields(ModelRecord)}
        data = {k: v for k, v in doc.items() if k in names}  # newer files may carry fields we don't know
        for name in _PATH_FIELDS:
            data[name] = self._from_stored_path(data.get(name))
        data["status"] = Status(data["status"])
        data["scores"] = ModelScores.from_dict(data.get("scores"))
        data["checkpoints"] = tuple(
            {**c, "path": self._from_stored_path(c.get("path"))} for c in data.get("checkpoints") or ()
        )
        return ModelRecord(**data)

    def _all_docs(self) -> list[dict[str, Any]]:
        if self._unsaved_ends:  # each look at the library tries again to save an end the disk refused
            self.save_unsaved_ends()
        with open_db(self.db_path) as db:
            return [dict(doc) for doc in db.table("models").all()]

    def rebuild_from_folders(self) -> list[ModelRecord]:
        """Records for model folders the library does not list (after library.json was lost or damaged), from what
        each folder holds: its settings, its dataset's trigger word and its LoRA (with the base model it names)."""
        from safetensors import safe_open

        known = {doc["id"] for doc in self._all_docs()}
        recovered = []
        for folder in sorted(p for p in self.models_dir.iterdir() if p.is_dir() and p.name not in known):
            try:
                # job.json is the training job's spec (pipeline.training.job); older folders kept settings.json.
                spec = json.loads((folder / "job.json").read_text()) if (folder / "job.json").is_file() else {}
                settings = spec["settings"] if spec else json.loads((folder / "settings.json").read_text())
                trigger = json.loads((folder / "dataset" / "dataset.json").read_text())["trigger_word"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a model folder (or too broken to say whose it was)
            lora = folder / "lora" / "lora.safetensors"
            base_model, ready = "", False
            if lora.is_file():
                try:
                    with safe_open(str(lora), "pt") as handle:
                        base_model = (handle.metadata() or {}).get("likeness.base_model", "")
                    ready = True
                except (OSError, ValueError, RuntimeError):
                    ready = False
            kohya = folder / "lora" / "lora_kohya.safetensors"
            created = datetime.fromtimestamp(folder.stat().st_mtime, UTC).isoformat(timespec="seconds")
            record = ModelRecord(
                id=folder.name, name=str(settings.get("name") or folder.name)[:MAX_NAME_LENGTH], trigger_word=trigger,
                base_model=base_model or spec.get("base_model") or UNKNOWN_BASE_MODEL,
                status=Status.READY if ready else Status.FAILED, folder=folder,
                created_at=created, settings=settings, lora_path=lora if ready else None,
                kohya_path=kohya if ready and kohya.is_file() else None, finished_at=created,
                error="" if ready else "recovered after the library was damaged: its training had not finished; "
                                        "press Resume or train again")
            with open_db(self.db_path) as db:
                db.table("models").insert(self.stored_form(dataclasses.asdict(record)))
            recovered.append(record)
        return recovered

    # -- public API -----------------------------------------------------------------------------------------------

    def create(self, name: str, base_model: str, settings: dict, trigger_word: str = "") -> ModelRecord:
        """Add a model in status "queued", with a generated trigger word when ``trigger_word`` is empty."""
        name = self._check_name(name)
        if not base_model or not str(base_model).strip():
            raise ValueError("base_model: must not be empty; use 'tiny', a hub id or a local diffusers folder")
        model_id = uuid.uuid4().hex[:12]
        folder = self.models_dir / model_id
        with open_db(self.db_path) as db:
            table = db.table("models")
            taken = [doc.get("trigger_word", "") for doc in table.all()]
            name = _unique_name(name, [doc.get("name", "") for doc in table.all()])
            if trigger_word and trigger_word.strip():
                word = validate_trigger_word(trigger_word, taken)
            else:
                word = generate_trigger_word(taken)
            settings = dict(settings or {})
            settings["trigger_word"] = word
            record = ModelRecord(
                id=model_id, name=name, trigger_word=word, base_model=str(base_model), status=Status.QUEUED,
                folder=folder, created_at=now_iso(), settings=settings,
            )
            folder.mkdir(parents=True, exist_ok=False)
            table.insert(self.stored_form(dataclasses.asdict(record)))
        logger.info("library: created model %s (%r, trigger word %r)", model_id, name, word)
        return record

    def get(self, model_id: str) -> ModelRecord:
        """The model with this id; ModelNotFound if there is none."""
        if self._unsaved_ends:
            self.save_unsaved_ends()
        with open_db(self.db_path) as db:
            doc = db.table("models").get(Query().id == model_id)
        if doc is None:
            # The message reaches web visitors: it names no server path (the data dir's location is not theirs).
            raise ModelNotFound(f"model_id: no model {model_id!r} in your library; list the models to see their ids")
        return self._record(dict(doc))

    def find(self, name_or_id: str) -> ModelRecord:
        """By id, or by name when exactly one model has it (case-insensitive); for the CLI."""
        key = name_or_id.strip()
        docs = self._all_docs()
        for doc in docs:
            if doc["id"] == key:
                return self._record(doc)
        named = [doc for doc in docs if doc["name"].lower() == key.lower()]
        if len(named) == 1:
            return self._record(named[0])
        if len(named) > 1:
            ids = ", ".join(doc["id"] for doc in named)
            raise ModelNotFound(f"model: {len(named)} models are named {key!r} ({ids}); give the id instead")
        raise ModelNotFound(f"model: no model with id or name {key!r}; run `python -m pipeline models` to list them")

    def list(self, status: Status | str | None = None) -> list[ModelRecord]:
        """All models, newest first; only those with ``status`` when given."""
        if status is not None and status not in MODEL_STATUSES:
            raise ValueError(f"status: unknown status {status!r}; use one of {', '.join(MODEL_STATUSES)}")
        records = [self._record(doc) for doc in self._all_docs()]
        if status is not None:
            records = [r for r in records if r.status == status]
        # created_at has one-second resolution; insertion order breaks ties (newest inserted last).
        indexed = list(enumerate(records))
        indexed.sort(key=lambda pair: (pair[1].created_at, pair[0]), reverse=True)
        return [record for _, record in indexed]

    def update(self, model_id: str, **fields: Any) -> ModelRecord:
        """Change fields of a model; a finishing status sets ``finished_at`` unless given."""
        fields = self._normalised(fields)
        self.save_unsaved_ends()  # an end the disk refused before is older than this change: it goes first
        with open_db(self.db_path) as db:
            table = db.table("models")
            if "trigger_word" in fields:
                taken = [doc.get("trigger_word", "") for doc in table.all() if doc["id"] != model_id]
                fields["trigger_word"] = validate_trigger_word(fields["trigger_word"], taken, allow_known=True)
            if not table.update(self.stored_form(fields), Query().id == model_id):
                raise ModelNotFound(f"model_id: no model {model_id!r} in the library; it may have been deleted")
        if "status" in fields:
            with self._unsaved_lock:  # written after an end still waiting in memory (e.g. Resume): this one holds
                self._unsaved_ends.pop(model_id, None)
        return self.get(model_id)

    def _normalised(self, fields: dict[str, Any]) -> dict[str, Any]:
        """``fields`` checked and in the types a record holds (paths as Path, scores as ModelScores)."""
        fields = dict(fields)
        known = {f.name for f in dataclasses.fields(ModelRecord)}
        for name in fields:
            if name not in known:
                raise ValueError(f"{name}: not a field of a model record; known fields: {', '.join(sorted(known))}")
            if name in _READ_ONLY_FIELDS:
                raise ValueError(f"{name}: cannot be changed after the model is created")
        if "name" in fields:
            fields["name"] = self._check_name(fields["name"])
        if isinstance(fields.get("scores"), dict):
            fields["scores"] = ModelScores.from_dict(fields["scores"])
        if "status" in fields:
            if fields["status"] not in MODEL_STATUSES:
                raise ValueError(f"status: unknown status {fields['status']!r}; use one of {', '.join(MODEL_STATUSES)}")
            if fields["status"] in MODEL_FINISHED:
                fields.setdefault("finished_at", now_iso())
            else:
                fields.setdefault("finished_at", None)
        for name in _PATH_FIELDS:  # callers pass str or Path; store both relative to the data dir
            if isinstance(fields.get(name), str):
                fields[name] = Path(fields[name]) if fields[name] else None
        if "checkpoints" in fields:
            fields["checkpoints"] = [
                {**c, "path": Path(c["path"])} if isinstance(c.get("path"), str) and c["path"] else dict(c)
                for c in fields["checkpoints"] or ()
            ]
        return fields

    def record_end(self, model_id: str, **fields: Any) -> ModelRecord:
        """``update`` for a training's end, which must not be lost: when the disk refuses it, the end is kept in
        memory (get() and list() show it), logged, and written by the next ``update`` or ``save_unsaved_ends`` that
        the disk takes. Raises only what ``update`` raises for other reasons (a deleted model)."""
        fields = self._normalised(fields)
        try:
            return self.update(model_id, **fields)
        except OSError as exc:
            logger.error("library: the end of model %s (%s) could not be saved (%s); kept in memory until the disk "
                         "takes it", model_id, fields.get("status"), exc.strerror or exc)
            with self._unsaved_lock:
                self._unsaved_ends[model_id] = {**self._unsaved_ends.get(model_id, {}), **fields}
            return self.get(model_id)

    @property
    def unsaved_ends(self) -> tuple[str, ...]:
        """Ids of models whose end is only in memory (the disk refused it)."""
        with self._unsaved_lock:
            return tuple(self._unsaved_ends)

    def save_unsaved_ends(self) -> bool:
        """Write the ends the disk refused before; True when none is left. Called before every update and read, so
        an end is saved as soon as space is back and anyone looks."""
        with self._unsaved_lock:
            pending = dict(self._unsaved_ends)
        for model_id, fields in pending.items():
            try:
                with open_db(self.db_path) as db:
                    db.table("models").update(self.stored_form(fields), Query().id == model_id)
            except OSError:
                return False  # the disk still refuses: the ends stay in memory
            with self._unsaved_lock:
                if self._unsaved_ends.get(model_id) is fields:
                    del self._unsaved_ends[model_id]
            logger.info("library: the end of model %s is saved now", model_id)
        return True

    def rename(self, model_id: str, name: str) -> ModelRecord:
        name = self._check_name(name)
        if any(r.name.casefold() == name.casefold() and r.id != model_id for r in self.list()):
            raise ValueError(f"name: another model is already called {name!r}; choose a different name")
        return self.update(model_id, name=name)

    def set_trigger_word(self, model_id: str, word: str) -> ModelRecord:
        """Change the trigger word (validated: a made-up word not used by another model)."""
        with open_db(self.db_path) as db:
            taken = [doc.get("trigger_word", "") for doc in db.table("models").all() if doc["id"] != model_id]
            word = validate_trigger_word(word, taken)
            record = self.get(model_id)
            settings = {**record.settings, "trigger_word": word}
            return self.update(model_id, trigger_word=word, settings=settings)

    def delete(self, model_id: str, *, force: bool = False) -> None:
        """Remove the model's record and its folder. A model still training needs ``force`` (cancel it first)."""
        record = self.get(model_id)
        if record.status in MODEL_BUSY and not force:
            raise ValueError(f"model_id: {record.name!r} is {record.status}; cancel its job first, then delete it")
        folder = record.folder.resolve()
        if folder.parent != self.models_dir.resolve():
            raise ValueError(f"model_id: folder {folder} is outside {self.models_dir}; refusing to delete it")
        # Files first: if removing them fails half-way the record stays, and deleting again finishes the job.
        if folder.exists():
            shutil.rmtree(folder)
        with open_db(self.db_path) as db:
            db.table("models").remove(Query().id == model_id)
        for export in self.exports_dir.glob(f"*-{model_id}.zip"):
            export.unlink()
        logger.info("library: deleted model %s (%r)", model_id, record.name)

    @staticmethod
    def _check_name(name: str) -> str:
        if not isinstance(name, str) or not name.strip():
            raise ValueError("name: must not be empty; give the model a name such as 'anna-2025'")
        name = " ".join(name.split())
        if len(name) > MAX_NAME_LENGTH:
            raise ValueError(f"name: {len(name)} characters is too long; use at most {MAX_NAME_LENGTH}")
        return name

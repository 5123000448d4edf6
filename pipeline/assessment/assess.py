"""Does the LoRA look like the person? Test generations scored for likeness, quality and prompt fidelity.

Likeness uses the same face-identity model as classification: each generated image's faces are judged against the
consensus embedding of the training faces (``person_consensus``: of the one person most of them show), the nearest of
the other people (a shipped cohort and the workspace's other people) and their average face
(``pipeline.assessment.likeness``);
"recognised" means clearly nearer the person than all of them, by a calibrated margin. An image with no detectable
face scores 0, because a LoRA that stops drawing faces has failed at its one job. The best checkpoint and LoRA scale
are chosen by these measured scores, not by the last step.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import imagehash
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from pipeline.assessment.cohort import Identity
from pipeline.assessment.likeness import MATCH_WORDS, LikenessJudge, Match
from pipeline.assessment.verdict import Verdict
from pipeline.events import EventCallback, Message, Progress, StopCheck, ignore, never
from pipeline.generation.generator import DEFAULT_TEST_PROMPTS, Generator, image_metadata, save_png
from pipeline.intake.faces import Face, detect_faces
from pipeline.intake.quality import QualityMetrics, measure_quality, quality_components, quality_score
from pipeline.intake.trigger import insert_trigger
from pipeline.settings import ClassifySettings, GenerateSettings
from pipeline.weights_lock import WEIGHTS_LOCK

logger = logging.getLogger(__name__)

READY, LOW_QUALITY, NOT_RECOGNISABLE = Verdict.READY, Verdict.LOW_QUALITY, Verdict.NOT_RECOGNISABLE

# Weights of the overall score's parts (prompt fidelity's share is spread over the others when it is unmeasured).
WEIGHTS = {"likeness": 0.45, "recognised": 0.25, "quality": 0.2, "prompt_fidelity": 0.1}
# A LoRA is recognisable when at least half the test images show the person.
MIN_RECOGNISED_SHARE = 0.5
PROMPT_SEED_STRIDE = 1000  # test prompt i uses the plan's seeds + 1000 i
MIN_QUALITY = 45.0
# Mean pairwise perceptual-hash distance (bits of 64) / 32: unrelated images sit near 1, one picture repeated near 0.
MIN_VARIETY = 0.25
# CLIP image-text cosine similarity: ~0.15 for an unrelated caption, ~0.35 for a precise one (ViT-L/14 on photos).
CLIP_COSINE_RANGE = (0.15, 0.35)
# Local CLIP models tried for prompt fidelity, in order; only from the local cache, never downloaded.
CLIP_CANDIDATES = ("openai/clip-vit-large-patch14", "openai/clip-vit-base-patch32", "openai/clip-vit-base-patch16")

VERDICT_WORDS = {
    READY: "ready",
    LOW_QUALITY: "low quality results: inconsistent lighting or limited variety",
    # Says what was measured, not a guess at the cause (a clean one-person set read "mixed subjects" before).
    NOT_RECOGNISABLE: "not recognisable: the test images do not show this person's face",
}


class AssessmentError(ValueError):
    """Assessment cannot run with these inputs; the message names the argument and the fix."""


@dataclass(frozen=True)
class ImageScore:
    """One test image: how much it looks like the person, and how good it is as a picture."""

    path: Path | None
    prompt: str
    # 0–1 calibrated (pipeline.assessment.likeness); None when no face was found (then 0 in totals)
    likeness: float | None
    recognised: bool  # clearly nearer the person than any other identity and than the generic face
    quality: float  # 0–100 from sharpness and exposure
    distance: float | None = None  # identity-model distance of the judged face to the person's consensus
    match: Match = Match.NO_FACE
    nearest_other: str | None = None  # the nearest other identity (None where no face was found)
    other_distance: float | None = None
    generic_distance: float | None = None  # to the average face of the other people
    margin: float | None = None  # min(other_distance, generic_distance) − distance
    faces: int = 0
    edge_blur: float = 0.0  # the classifier's measure: face edge width in px with the face at 128 px
    exposure: float = 0.0  # the classifier's exposure component, 0–1: 1 well exposed, 0 black, white or clipped
    prompt_fidelity: float | None = None  # CLIP score (100 × cosine) where a CLIP model is available
    seed: int | None = None


@dataclass(frozen=True)
class AssessmentResult:
    """All test images of one LoRA (at one scale), their totals, the verdict and the grid."""

    images: tuple[ImageScore, ...]
    likeness: float  # 0–1, mean over images, no-face images count 0
    recognised_share: float  # 0–1
    prompt_fidelity: float | None  # mean CLIP score, None where no CLIP model is available
    fidelity_note: str
    quality: float  # 0–100
    overall: float  # 0–100
    parts: dict[str, float]  # each part of the overall score on 0–100, and variety
    verdict: Verdict
    verdict_text: str
    grid: Path | None = None
    variety: float = 0.0  # 0–1, how different the test images are from one another
    lora_path: Path | None = None
    lora_scale: float = 1.0
    judged_against: int = 0  # other identities each face was compared with

    @property
    def recognised_count(self) -> int:
        return sum(s.recognised for s in self.images)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (paths as strings)."""
        data = dataclasses.asdict(self)
        return _jsonable(data)


@dataclass(frozen=True)
class AssessmentPlan:
    """What every assessment of one person's LoRA shares: whom to look for, with which prompts, how to score."""

    trigger_word: str
    reference: np.ndarray  # face embeddings of the training photos (``reference_embeddings``)
    prompts: Sequence[str] = DEFAULT_TEST_PROMPTS
    seeds: Sequence[int] = (0,)
    settings: GenerateSettings | None = None  # None: the base model's test settings
    reference_images: Sequence[Path] = ()  # training photos or crops, shown in the grid's first row
    identity: Any = None  # a loaded identity model; None: loaded on first use
    clip_model: str | Path | None = None  # for prompt fidelity where a CLIP is on disk
    others: Sequence[Identity] = ()  # other people of the same workspace, judged against besides the cohort

    def validate(self) -> AssessmentPlan:
        if not self.prompts:
            raise AssessmentError("prompts: no test prompts; pass at least one (DEFAULT_TEST_PROMPTS by default)")
        if not self.seeds:
            raise AssessmentError("seeds: no seeds; pass at least one")
        return self


class CheckpointChoice(NamedTuple):
    """The chosen checkpoint and scale, and the result of every checkpoint (at the chosen scale for the best)."""

    step: int
    lora_scale: float
    results: dict[int, AssessmentResult]


# ---------------------------------------------------------------------------------------------------------- scoring


def reference_embeddings(images: Sequence[Path | Image.Image], *, identity: Any = None) -> np.ndarray:
    """The identity embedding of the largest face in each training photo/crop, stacked (n × 128).

    Photos without a detectable face are skipped; none at all is an error.
    """
    identity = identity or _default_identity()
    rows = []
    for image in images:
        faces = identity.embed_faces(_open(image))
        if faces:
            rows.append(_vector(faces[0]))  # largest first
    if not rows:
        raise AssessmentError(
            f"images: no face found in any of the {len(images)} reference photos; pass the training face crops"
        )
    return np.stack(rows)


def score_images(
    images: Sequence[Image.Image | Path],
    reference: np.ndarray,
    *,
    prompts: Sequence[str] | None = None,
    identity: Any = None,
    identity_threshold: float = ClassifySettings().identity_threshold,
    clip_model: str | Path | None = None,
    others: Sequence[Identity] = (),
    judge: LikenessJudge | None = None,
) -> AssessmentResult:
    """Score images against the person's reference embeddings; the scoring part of ``assess_lora``, alone.

    ``reference`` is one embedding or several (the consensus of the person most of them show: a set that mixes
    two people is judged against one of them, not against a face between the two). Each face is judged against that
    person, the shipped cohort plus ``others`` and their average face (``pipeline.assessment.likeness``; ``judge``
    replaces
    all of them). ``prompts`` (one per image) enable prompt fidelity where a CLIP model is available locally.
    """
    if not images:
        raise AssessmentError("images: nothing to score; pass at least one image")
    if prompts is not None and len(prompts) != len(images):
        raise AssessmentError(f"prompts: {len(prompts)} prompts for {len(images)} images; pass one per image")
    identity = identity or _default_identity()
    if judge is None:
        from pipeline.assessment.likeness import judge_for

        judge = judge_for(_consensus(np.asarray(reference, dtype=float), identity_threshold), workspace_people=others)
    opened = [_open(image) for image in images]
    fidelity, note = prompt_fidelity(opened, prompts, clip_model=clip_model)
    scores = []
    for index, image in enumerate(opened):
        faces = detect_faces(image.convert("RGB"))
        embeddings = identity.embed_faces(image, faces) if faces else []
        judged = [judge.judge(_vector(e)) for e in embeddings]
        # The face most like the person is the one judged: a stranger in the background is not a failure.
        best = judge.best([_vector(e) for e in embeddings])
        face = faces[judged.index(best)] if best is not None else None
        metrics, quality, exposure = _quality(image, face)
        path = images[index] if isinstance(images[index], Path) else None
        meta = image_metadata(image)
        scores.append(ImageScore(
            path=path,
            prompt=prompts[index] if prompts is not None else meta.get("prompt", ""),
            likeness=None if best is None else best.likeness,
            recognised=best is not None and best.recognised,
            quality=quality,
            distance=None if best is None else best.distance,
            match=Match.NO_FACE if best is None else best.match,
            nearest_other=None if best is None else best.nearest_other,
            other_distance=None if best is None else best.other_distance,
            generic_distance=None if best is None else best.generic_distance,
            margin=None if best is None else best.margin,
            faces=len(faces),
            edge_blur=metrics.edge_blur,
            exposure=exposure,
            prompt_fidelity=None if fidelity is None else fidelity[index],
            seed=int(meta["seed"]) if meta.get("seed", "").isdigit() else None,
        ))
    result = summarise(scores, variety=_variety(opened), fidelity_note=note, judged_against=len(judge.others))
    return result


def summarise(scores: Sequence[ImageScore], *, variety: float = 1.0, fidelity_note: str = "",
              judged_against: int = 0) -> AssessmentResult:
    """Totals, overall score and verdict from per-image scores."""
    n = len(scores)
    likeness = sum(s.likeness or 0.0 for s in scores) / n
    recognised = sum(s.recognised for s in scores) / n
    quality = sum(s.quality for s in scores) / n
    fidelities = [s.prompt_fidelity for s in scores if s.prompt_fidelity is not None]
    fidelity = sum(fidelities) / len(fidelities) if fidelities else None
    parts = {"likeness": 100 * likeness, "recognised": 100 * recognised, "quality": quality}
    if fidelity is not None:
        low, high = CLIP_COSINE_RANGE
        parts["prompt_fidelity"] = 100 * float(np.clip((fidelity / 100 - low) / (high - low), 0, 1))
    weights = {k: WEIGHTS[k] for k in parts}
    overall = sum(parts[k] * w for k, w in weights.items()) / sum(weights.values())
    parts["variety"] = 100 * variety
    verdict, text = _verdict(scores, likeness, recognised, quality, variety, judged_against)
    return AssessmentResult(
        images=tuple(scores), likeness=likeness, recognised_share=recognised, prompt_fidelity=fidelity,
        fidelity_note=fidelity_note, quality=quality, overall=overall, parts=parts, verdict=verdict,
        verdict_text=text, variety=variety, judged_against=judged_against,
    )


def recognised_sentence(seen: int, total: int, judged_against: int) -> str:
    """What "recognised" means, with the count: the one wording of the pages, the card, the e-mail and the CLI."""
    against = (f": nearer this person than any of {judged_against} other people and their average face"
               if judged_against else "")
    return f"recognised in {seen} of {total} test images{against}"


def _verdict(scores: Sequence[ImageScore], likeness: float, recognised: float, quality: float,
             variety: float, judged_against: int = 0) -> tuple[str, str]:
    n = len(scores)
    seen = sum(s.recognised for s in scores)
    with_face = sum(s.faces > 0 for s in scores)
    generic = sum(s.match == Match.GENERIC for s in scores)
    others = sorted({s.nearest_other for s in scores if s.match == Match.SOMEONE_ELSE and s.nearest_other})
    measured = recognised_sentence(seen, n, judged_against)
    if recognised < MIN_RECOGNISED_SHARE:
        return NOT_RECOGNISABLE, (
            f"{VERDICT_WORDS[NOT_RECOGNISABLE]} — retrain with 15–20 photos of this one person only, the face "
            "clearly visible and large in the frame (no group shots, sunglasses or heavy shadow), or train for more "
            f"steps. Measured: {measured}; a face found in {with_face}, {generic} of them a generic face"
            + (f", nearer someone else in {sum(s.match == Match.SOMEONE_ELSE for s in scores)} "
               f"({', '.join(others)})" if others else "") + f"; likeness {likeness:.0%}."
        )
    if quality < MIN_QUALITY or variety < MIN_VARIETY:
        return LOW_QUALITY, (
            f"{VERDICT_WORDS[LOW_QUALITY]} — retrain with sharp photos in even light and with more variety "
            "(backgrounds, clothes, expressions, angles); if every image looks the same, choose an earlier "
            f"checkpoint or a lower LoRA scale. Measured: quality {quality:.0f}/100, variety {variety:.0%}, "
            f"{measured}."
        )
    return READY, (
        f"{VERDICT_WORDS[READY]} — {measured} (likeness {likeness:.0%}), quality {quality:.0f}/100."
    )


# ------------------------------------------------------------------------------------------------------ generating


def default_assessment_settings(generator: Generator) -> GenerateSettings:
    """Test generation settings for the generator's base model: 64 px and 4 steps on the tiny model."""
    from pipeline.models.base_model import default_test_generate_settings

    return default_test_generate_settings(generator.base_model)


def assess_lora(
    generator: Generator,
    lora_path: Path | None,
    plan: AssessmentPlan,
    *,
    out_dir: Path,
    lora_scale: float = 1.0,
    on_event: EventCallback = ignore,
    should_stop: StopCheck = never,
) -> AssessmentResult:
    """Generate every prompt × seed of ``plan`` (each prompt its own seeds) with the LoRA, score them and save the
    images and a grid in ``out_dir``. Without a LoRA (``lora_path`` None) the prompts go without the trigger word:
    the base model."""
    plan.validate()
    base = plan.settings or default_assessment_settings(generator)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Each prompt draws its own seeds (prompt i: seed + PROMPT_SEED_STRIDE * i): where a model barely follows the
    # prompt (the micro one) eight prompts on one seed are one sample eight times, and one unlucky seed decided all.
    jobs = [(template, seed + PROMPT_SEED_STRIDE * i) for i, template in enumerate(plan.prompts) for seed in plan.seeds]
    paths: list[Path] = []
    used: list[str] = []
    for index, (template, seed) in enumerate(jobs):
        if should_stop():
            break
        prompt = insert_trigger(template, plan.trigger_word if lora_path else "")
        on_event(Progress("assess", index, len(jobs), f"test image {index + 1} of {len(jobs)}: {prompt}"))
        one = dataclasses.replace(base, prompt=prompt, seed=seed, num_images=1, lora_scale=lora_scale)
        images = generator.generate(one, lora_path=lora_path, should_stop=should_stop)
        if not images:
            break
        paths.append(save_png(images[0], out_dir / f"{index:02d}_seed{seed}.png"))
        used.append(prompt)
    if not paths or should_stop():  # a score of some of the prompts is no score: not worth the identity model's time
        raise AssessmentError(f"should_stop: assessment stopped after {len(paths)} of {len(jobs)} test images")
    on_event(Progress("assess", len(paths), len(jobs), "scoring likeness and quality"))
    result = score_images(paths, plan.reference, prompts=used, identity=plan.identity, clip_model=plan.clip_model,
                          others=plan.others)
    grid = save_grid(plan.reference_images, result.images, out_dir / "grid.png")
    result = dataclasses.replace(result, grid=grid, lora_path=lora_path, lora_scale=lora_scale)
    on_event(Message(f"likeness {result.likeness:.0%}, recognised in {result.recognised_count} of "
                     f"{len(result.images)}, quality {result.quality:.0f}, overall {result.overall:.0f}: "
                     f"{result.verdict_text}"))
    return result


def choose_best_checkpoint(results: Mapping[int, AssessmentResult]) -> int:
    """The step whose test images are recognised most often (the calibrated judge), then the highest calibrated
    likeness, then overall score; a tie goes to the later step (more trained, same measured result)."""
    if not results:
        raise AssessmentError("results: no assessed checkpoints to choose from")
    return max(results, key=lambda step: _rank(results[step]) + (step,))


def _rank(result: AssessmentResult) -> tuple[float, float, float]:
    return result.recognised_share, round(result.likeness, 6), round(result.overall, 6)


def assess_checkpoints(
    generator: Generator,
    checkpoints: Sequence[tuple[int, Path]],
    plan: AssessmentPlan,
    *,
    out_dir: Path,
    lora_scales: Sequence[float] = (0.8, 1.0),
    on_event: EventCallback = ignore,
    should_stop: StopCheck = never,
    known: Mapping[int, AssessmentResult] | None = None,
) -> CheckpointChoice:
    """Assess each checkpoint at scale 1.0, then the best one at the other scales; keep the best of all.

    ``known`` holds results already measured at scale 1.0 (while training ran): those steps are not generated again.

    Scales are tried only on the best step: checkpoints × prompts generations plus (scales − 1) × prompts, instead
    of their product. ``results[step]`` for the chosen step is its result at the chosen scale.
    """
    if not checkpoints:
        raise AssessmentError("checkpoints: nothing to assess; pass (step, lora path) pairs")
    first_scale = 1.0 if 1.0 in lora_scales or not lora_scales else lora_scales[-1]
    paths = dict(checkpoints)
    results: dict[int, AssessmentResult] = {s: r for s, r in (known or {}).items() if s in paths}
    for number, (step, path) in enumerate(checkpoints):
        if step in results:
            continue
        on_event(Message(f"assessing checkpoint {number + 1} of {len(checkpoints)} (step {step})"))
        results[step] = assess_lora(generator, path, plan, out_dir=Path(out_dir) / f"step_{step:06d}",
                                    lora_scale=first_scale, on_event=on_event, should_stop=should_stop)
        if should_stop():
            break
    best = choose_best_checkpoint(results)
    by_scale = {first_scale: results[best]}
    for scale in lora_scales:
        if scale in by_scale or should_stop():
            continue
        on_event(Message(f"trying step {best} at LoRA scale {scale}"))
        by_scale[scale] = assess_lora(generator, paths[best], plan,
                                      out_dir=Path(out_dir) / f"step_{best:06d}_x{scale:g}", lora_scale=scale,
                                      on_event=on_event, should_stop=should_stop)
    # The same ranking as the steps'; ties keep the full scale: it is what the LoRA was trained at.
    scale = max(by_scale, key=lambda s: _rank(by_scale[s]) + (s == first_scale,))
    results[best] = by_scale[scale]
    curve = ", ".join(f"{s}: {r.likeness:.0%}" for s, r in sorted(results.items()))
    on_event(Message(f"best checkpoint: step {best} at scale {scale:g} (likeness by step: {curve})"))
    return CheckpointChoice(best, scale, results)


def likeness_curve(results: Mapping[int, AssessmentResult]) -> list[tuple[int, float]]:
    """(step, likeness) in step order, for the 'likeness by checkpoint' plot."""
    return [(step, results[step].likeness) for step in sorted(results)]


# ---------------------------------------------------------------------------------------------------------- grid


def save_grid(reference_images: Sequence[Path], scores: Sequence[ImageScore], path: Path, *,
              cell: int = 160, columns: int = 8) -> Path:
    """Training photos on the first row(s), then the test images, each captioned with what it was judged to be:
    recognised (✓), a generic face, or someone else (naming the nearest other identity), with its likeness."""
    font, tick = caption_font()
    label_h = 16
    cells: list[tuple[Image.Image, str]] = []
    for ref in reference_images[:columns]:
        cells.append((_open(ref), "training"))
    refs = len(cells)
    for score in scores:
        if score.path is not None:
            cells.append((_open(score.path), image_caption(score, tick)))
    if not cells:
        return path
    ref_rows = math.ceil(refs / columns)
    rows = ref_rows + math.ceil((len(cells) - refs) / columns)
    grid = Image.new("RGB", (columns * cell, rows * (cell + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for index, (image, caption) in enumerate(cells):
        slot = index if index < refs else ref_rows * columns + (index - refs)
        x, y = (slot % columns) * cell, (slot // columns) * (cell + label_h)
        grid.paste(ImageOps.fit(image.convert("RGB"), (cell, cell)), (x, y))
        draw.text((x + 3, y + cell + 1), caption, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def image_caption(score: ImageScore, tick: str = "✓") -> str:
    """"✓ recognised 81%", "generic face 34%", "someone else: t1-3", "no face"."""
    if score.match == Match.NO_FACE or score.likeness is None:
        return MATCH_WORDS[Match.NO_FACE]
    if score.match == Match.SOMEONE_ELSE:
        return f"{MATCH_WORDS[Match.SOMEONE_ELSE]}: {score.nearest_other}"
    mark = f"{tick} " if score.match == Match.RECOGNISED else ""
    return f"{mark}{MATCH_WORDS[score.match]} {score.likeness:.0%}"


# Fonts with the ✓ glyph, in order: Debian's DejaVu (fonts-dejavu-core), then the copy matplotlib ships.
FONT_CANDIDATES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf")


@functools.cache
def caption_font(size: int = 12) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, str]:
    """A font that has the ✓ glyph and the mark to use; where none is installed, Pillow's own and "OK" (its
    built-in font has no ✓ and would draw a box)."""
    candidates = list(FONT_CANDIDATES)
    spec = importlib.util.find_spec("matplotlib")
    if spec and spec.submodule_search_locations:
        candidates.append(str(Path(next(iter(spec.submodule_search_locations))) / "mpl-data/fonts/ttf/DejaVuSans.ttf"))
    for candidate in candidates:
        try:
            return ImageFont.truetype(candidate, size), "✓"
        except OSError:
            continue
    return ImageFont.load_default(), "OK"


# ------------------------------------------------------------------------------------------------ prompt fidelity


def prompt_fidelity(images: Sequence[Image.Image], prompts: Sequence[str] | None, *,
                    clip_model: str | Path | None = None) -> tuple[list[float] | None, str]:
    """CLIP score (100 × image-text cosine) per image, and a note saying which model measured it or why none did.

    Only local models are used (``local_files_only``): assessment never downloads anything.
    """
    if prompts is None:
        return None, "prompt fidelity not measured: no prompts given"
    loaded = _load_clip(clip_model)
    if loaded is None:
        tried = str(clip_model) if clip_model else ", ".join(CLIP_CANDIDATES)
        return None, (f"prompt fidelity skipped: no CLIP model available locally (tried {tried}); "
                      "download one once, e.g. `hf download openai/clip-vit-large-patch14`")
    name, model, processor = loaded
    import torch

    with torch.no_grad():
        inputs = processor(text=list(prompts), images=[i.convert("RGB") for i in images], return_tensors="pt",
                           padding=True, truncation=True)
        out = model(**inputs)
        image_emb = torch.nn.functional.normalize(out.image_embeds, dim=-1)
        text_emb = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        cosine = (image_emb * text_emb).sum(-1).clamp(min=0)
    return [100 * float(c) for c in cosine], f"prompt fidelity: CLIP score from {name}"


def _load_clip(clip_model: str | Path | None) -> tuple[str, Any, Any] | None:
    from transformers import CLIPModel, CLIPProcessor

    for name in [str(clip_model)] if clip_model else CLIP_CANDIDATES:
        try:
            with WEIGHTS_LOCK:  # loads patch torch process-wide (pipeline.weights_lock)
                model = CLIPModel.from_pretrained(name, local_files_only=True).eval()
                processor = CLIPProcessor.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError) as exc:
            logger.debug("no local CLIP model %s: %s", name, exc)
            continue
        return name, model, processor
    return None


# ------------------------------------------------------------------------------------------------------- helpers


def _default_identity() -> Any:
    from pipeline.intake.identity import face_identity

    return face_identity()


def _consensus(reference: np.ndarray, threshold: float) -> np.ndarray:
    from pipeline.intake.identity import person_consensus

    return reference if reference.ndim == 1 else person_consensus(list(reference), threshold)


def _distance(identity: Any, a: np.ndarray, b: np.ndarray) -> float:
    return float(identity.distance(a, b))


def _vector(face: Any) -> np.ndarray:
    return np.asarray(getattr(face, "vector", face), dtype=float)


def similarity(distance: float) -> float:
    """0–1 likeness from an identity distance (the identity module's scale: 0.5 between same and different)."""
    from pipeline.intake.identity import similarity as identity_similarity

    return identity_similarity(distance)


def _open(image: Image.Image | Path) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    with Image.open(image) as opened:
        loaded = ImageOps.exif_transpose(opened)
        loaded.load()
        loaded.info.update(image_metadata(opened))
        return loaded


def _quality(image: Image.Image, face: Face | None) -> tuple[QualityMetrics, float, float]:
    """The classifier's quality measures on the judged face (or the whole frame): metrics, 0–100 score, exposure.

    "Resolution" is judged against the image's own short side: a face too small in the frame to give a crop of
    the whole image scores lower, as it would as a training photo.
    """
    settings = ClassifySettings(training_resolution=min(image.size))
    metrics = measure_quality(image.convert("RGB"), face)
    return metrics, quality_score(metrics, settings), quality_components(metrics, settings)["exposure"]


def _variety(images: Sequence[Image.Image]) -> float:
    """Mean pairwise perceptual-hash distance / 32 (capped at 1); 1.0 for a single image (nothing to compare)."""
    hashes = [imagehash.phash(i.convert("RGB")) for i in images]
    pairs = list(itertools.combinations(hashes, 2))
    if not pairs:
        return 1.0
    return float(min(1.0, sum(a - b for a, b in pairs) / len(pairs) / 32))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.floating | np.integer):
        return value.item()
    return value


"""Does a LoRA on the micro base model become the person? Prints JSON: the 2x2 table, the curves, the timings.

Through the app's own path (Workflow: upload → classify → crops → train_lora → assessment per checkpoint), on the
micro base model, for two people held out of its pretraining: the astronaut (skimage) and Grace Hopper
(matplotlib). Each LoRA's test images (the app's 8 test prompts) are then scored against both people's training
crops with the app's identity threshold: recognised as the person it learnt, and not as the other one.

    PYTHONPATH=tests python -m bench.micro_likeness [--steps N] [--photos 16] [--sheet bench/results/micro.png]
        [--identity-seeds 3]

The JSON also gives the VAE's round trip: each person's crops encoded and decoded by the base's VAE and scored the
same way, about the ceiling the decoder leaves any LoRA (``--vae-only``: that alone, in seconds).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import photo_factory
from PIL import Image, ImageDraw, ImageFilter

from pipeline.assessment.assess import AssessmentPlan, assess_lora, reference_embeddings, score_images
from pipeline.intake.crops import build_dataset
from pipeline.library.catalog import ModelRecord
from pipeline.models.base_model import quiet_library_logs, resolve_base_model
from pipeline.settings import MICRO_MODEL, MICRO_RESOLUTION, AppSettings
from pipeline.weights_lock import WEIGHTS_LOCK
from pipeline.workflow import Workflow

PEOPLE = {
    "astronaut": lambda: photo_factory.astronaut(),
    "grace_hopper": lambda: photo_factory.grace_hopper(),
}
FACES = {"astronaut": photo_factory.ASTRONAUT_FACE, "grace_hopper": photo_factory.GRACE_HOPPER_FACE}


def person_photos(person: str, folder: Path, count: int, seed: int = 0) -> list[Path]:
    images = photo_factory.portrait_variants(PEOPLE[person](), FACES[person], count, seed=seed)
    return photo_factory.write_set(folder, images, prefix=person)


def train_people(people: list[str], root: Path, photos: int, steps: int | None, extra: dict | None = None,
                 base_model: str = MICRO_MODEL) -> dict[str, tuple[Workflow, ModelRecord, float]]:
    """One training per person, all at once (a data dir, so a queue, each; an embedded model trains on one thread,
    so two share two cores); each with the seconds from its start to its end, assessment included."""
    started = {}
    for person in people:
        workflow = Workflow(AppSettings(data_dir=root / person, base_model=base_model))
        workflow.add_photos(person_photos(person, root / f"{person}-upload", photos))
        overrides = {"name": person, **(extra or {})} | ({"steps": steps, "checkpoint_every": max(1, steps // 4),
                                                          "sample_every": max(1, steps // 4)} if steps else {})
        started[person] = (workflow, workflow.start_training(workflow.default_train_settings(**overrides)))
    trained = {}
    try:
        for person, (workflow, record) in started.items():
            record = workflow.wait_for(record.id, timeout=3600)
            assert record.status == "ready", f"{person}: {record.status} {record.error}"
            ended, began = datetime.fromisoformat(record.finished_at), datetime.fromisoformat(record.created_at)
            trained[person] = (workflow, record, (ended - began).total_seconds())
    except BaseException:
        for workflow, _record in started.values():
            workflow.close()
        raise
    return trained


def mixed_set(root: Path, photos: int, steps: int | None, extra: dict | None = None,
              base_model: str = MICRO_MODEL) -> dict:
    """Half the photos of each person in one set, every photo included by hand (else the classifier keeps one
    person) and trained anyway (it calls the set not ready): the verdict the app then gives, from the same
    assessment as a clean set's."""
    workflow = Workflow(AppSettings(data_dir=root / "mixed", base_model=base_model))
    try:
        uploads = [path for person in PEOPLE for path in person_photos(person, root / f"mixed-{person}", photos // 2)]
        workflow.add_photos(uploads)
        workflow.set_overrides([photo.name for photo in workflow.list_photos()], "include")
        classification = workflow.classify()
        overrides = {"name": "mixed", **(extra or {})} | ({"steps": steps, "checkpoint_every": max(1, steps // 4),
                                                            "sample_every": max(1, steps // 4)} if steps else {})
        record = workflow.start_training(workflow.default_train_settings(**overrides), classification=classification,
                                         anyway=True)
        record = workflow.wait_for(record.id, timeout=3600)
        assert record.status == "ready", f"mixed: {record.status} {record.error}"
        began, ended = datetime.fromisoformat(record.created_at), datetime.fromisoformat(record.finished_at)
        scores = record.scores.to_dict() if record.scores else {}
        return {
            "classification": classification.report.summary,
            "readiness": str(classification.report.readiness),
            "crops": len(crops(record)),
            "crops_by_person": {person: sum(person in c.name for c in crops(record)) for person in PEOPLE},
            "trigger_word": record.trigger_word,
            "train_and_assess_seconds": round((ended - began).total_seconds(), 1),
            "verdict": scores.get("verdict"),
            "recognised_share": scores.get("recognised_share"),
            "likeness_by_checkpoint": scores.get("likeness_by_checkpoint"),
            "best_checkpoint_step": record.best_checkpoint_step,
        }
    finally:
        workflow.close()


def appearance_distance(images: list[Path], references: list[Path], size: int = 16) -> float:
    """How far the images look from a person's training crops at a glance (hair, skin, clothes, framing, light):
    the RMS pixel difference at ``size`` px to the nearest crop, averaged over the images (0–255). It sees what
    the face-identity model cannot where no face is detectable."""
    def pixels(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BOX), dtype=float)

    refs = np.stack([pixels(r) for r in references])
    return float(np.mean([np.sqrt(((refs - pixels(i)) ** 2).mean(axis=(1, 2, 3))).min() for i in images]))


def crops(record: ModelRecord) -> list[Path]:
    return sorted((Path(record.folder) / "dataset").glob("*.png"))


def faces_nearer_whom(trained: dict[str, tuple[Workflow, ModelRecord]], references: dict[str, np.ndarray],
                      seeds: tuple[int, ...], root: Path) -> dict[str, dict]:
    """Each LoRA's test images (the 8 test prompts × ``seeds``), against its own person and the other: the faces
    MTCNN finds, their mean identity distance to each person's training crops, the look (``appearance_distance``)
    and how many the identity model takes for the other person. For short runs, whose faces are too few and too far
    from anyone for the recognised counts to say whose they are."""
    table = {}
    for person, (workflow, record) in trained.items():
        other = next(p for p in trained if p != person)
        plan = AssessmentPlan(trigger_word=record.trigger_word, reference=references[person], seeds=seeds,
                              settings=workflow.test_generate_settings(MICRO_RESOLUTION))
        own = assess_lora(workflow.generator(), Path(record.lora_path), plan, out_dir=root / f"{person}-identity",
                          lora_scale=record.best_lora_scale or 1.0)
        images = [i.path for i in own.images]
        against_other = score_images(images, references[other])  # the same images, the other person's crops
        found = np.array([(a.distance, b.distance) for a, b in zip(own.images, against_other.images, strict=True)
                          if a.distance is not None]).reshape(-1, 2)
        means = found.mean(axis=0).round(3).tolist() if len(found) else [None, None]
        table[person] = {
            "images": len(images), "faces": len(found),
            "mean_distance_own": means[0], "mean_distance_other": means[1],
            "look_own": round(appearance_distance(images, crops(record)), 1),
            "look_other": round(appearance_distance(images, crops(trained[other][1])), 1),
            "recognised_own": sum(i.recognised for i in own.images),
            "recognised_as_other": sum(i.recognised for i in against_other.images),
        }
    return table


def person_crops(person: str, root: Path, photos: int) -> list[Path]:
    """The training crops the app makes of ``photos`` photos of ``person`` (upload → classify → crops), untrained."""
    workflow = Workflow(AppSettings(data_dir=root / person))
    try:
        workflow.add_photos(person_photos(person, root / f"{person}-upload", photos))
        dataset = build_dataset(workflow.classify(), root / f"{person}-crops", "sks", MICRO_RESOLUTION,
                                use_blip=False)
        return sorted(Path(item.image) for item in dataset.items)
    finally:
        workflow.close()


def vae_round_trip(base_model: str, people: dict[str, list[Path]], root: Path, blur: float = 1.5,
                   split: float = 2.0, *, comparisons: bool = True) -> dict:
    """About the ceiling the base's VAE leaves a LoRA: each person's own crops encoded and decoded, scored against
    both people's crops with the app's threshold. A LoRA's images pass through the same decoder, so what these
    reconstructions are recognised as approximates the best 2x2 table a LoRA can reach (the encoder's mean latent is
    not necessarily the best one the decoder could be given). Beside it, for comparison: the same crops at the model's
    size without the VAE, and blurred by ``blur`` px instead (does the VAE only soften?). And which part of its error
    moves the identity: the original's coarse image (a Gaussian low-pass of ``split`` px) under the VAE's fine detail
    (the rest), and the VAE's coarse image under the original's fine detail. ``comparisons=False``: the VAE's row only
    (each row costs the identity model's time on every crop)."""
    import torch
    from diffusers import AutoencoderKL
    from torchvision.transforms.functional import gaussian_blur

    from pipeline.training.trainer import load_training_image

    path = resolve_base_model(base_model, root)  # before the lock: building the tiny model takes it too
    with WEIGHTS_LOCK:
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae").float().eval()
    size = vae.config.sample_size  # the resolution the model trains and draws at
    references = {person: reference_embeddings(paths) for person, paths in people.items()}

    def scored(images: list[Image.Image]) -> dict[str, dict]:
        row = {}
        for other, reference in references.items():
            result = score_images(images, reference)
            found = [i.distance for i in result.images if i.distance is not None]
            row[other] = {"recognised": sum(i.recognised for i in result.images), "of": len(images),
                          "median_distance": round(float(np.median(found)), 3) if found else None}
        return row

    def to_images(pixels: torch.Tensor) -> list[Image.Image]:
        array = pixels.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(x) for x in array]

    def coarse(pixels: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(pixels, kernel_size=2 * round(3 * split) + 1, sigma=split)

    table: dict[str, dict] = {"vae": {}}
    if comparisons:
        table.update({"no_vae": {}, f"blurred_{blur}px": {}, "vae_fine_detail_only": {}, "vae_coarse_only": {},
                      "split_px": split})
    for person, paths in people.items():
        pixels = torch.stack([load_training_image(path, (size, size)) for path in paths])  # what training encodes
        with torch.no_grad():
            decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample
        table["vae"][person] = scored(to_images(decoded))
        if not comparisons:
            continue
        originals = to_images(pixels)
        table["no_vae"][person] = scored(originals)
        table[f"blurred_{blur}px"][person] = scored([i.filter(ImageFilter.GaussianBlur(blur)) for i in originals])
        table["vae_fine_detail_only"][person] = scored(to_images(coarse(pixels) + decoded - coarse(decoded)))
        table["vae_coarse_only"][person] = scored(to_images(coarse(decoded) + pixels - coarse(pixels)))
    return table


def sheet(rows: list[tuple[str, list[Path]]], path: Path, size: int = MICRO_RESOLUTION) -> Path:
    """One row per label: the training crops, the samples at three checkpoints, the assessment images."""
    width = max(len(images) for _label, images in rows)
    label_w = 150
    out = Image.new("RGB", (label_w + width * (size + 2), len(rows) * (size + 2)), "white")
    draw = ImageDraw.Draw(out)
    for r, (label, images) in enumerate(rows):
        draw.text((4, r * (size + 2) + size // 2 - 6), label, fill="black")
        for c, image in enumerate(images):
            with Image.open(image) as img:
                out.paste(img.convert("RGB").resize((size, size)), (label_w + c * (size + 2), r * (size + 2)))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path


OLD_THRESHOLD = 0.57  # the fixed identity distance "recognised" meant until 2026-12-07


def rescore(root: Path) -> dict:
    """A bench run's saved test images (every checkpoint's, and the report's ``PERSON-test``), judged again with
    today's likeness judge against each person's training crops: the 2x2 table per checkpoint, each image's match
    and nearest other identity. For a run made before the judge changed, or one still training."""
    folders = {person: next((root / person / "models").iterdir()) for person in PEOPLE
               if (root / person / "models").is_dir()}
    references = {person: reference_embeddings(sorted((folder / "dataset").glob("*.png")))
                  for person, folder in folders.items()}
    table: dict[str, dict] = {}
    for person, folder in folders.items():
        other = next((p for p in folders if p != person), None)
        sets = sorted((folder / "assessment").glob("step_*")) + [p for p in [root / f"{person}-test"] if p.is_dir()]
        for images_dir in sets:
            images = sorted(p for p in images_dir.glob("*.png") if p.name != "grid.png")
            if not images:
                continue
            own = score_images(images, references[person])
            row = {"images": len(images), "faces": sum(i.faces > 0 for i in own.images),
                   "recognised": own.recognised_count, "likeness": round(own.likeness, 3), "verdict": own.verdict,
                   # What the rule before the cohort called recognised: within 0.57 of the person's consensus.
                   "within_old_threshold": sum(i.distance is not None and i.distance < OLD_THRESHOLD
                                               for i in own.images),
                   "matches": [str(i.match) for i in own.images],
                   "nearest_other": [i.nearest_other for i in own.images],
                   "distance": [None if i.distance is None else round(i.distance, 3) for i in own.images],
                   "margin": [None if i.margin is None else round(i.margin, 3) for i in own.images]}
            if other:
                row["recognised_as_other"] = score_images(images, references[other]).recognised_count
            table.setdefault(person, {})[images_dir.name] = row
    return {"rescored": table, "data_dir": str(root)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the micro defaults)")
    parser.add_argument("--base-model", default=MICRO_MODEL,
                        help="a micro model folder, e.g. one `python -m pipeline.models.micro build --out DIR` made")
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--sheet", type=Path, default=None, help="save the picture for the README here")
    parser.add_argument("--people", nargs="+", default=list(PEOPLE), choices=list(PEOPLE))
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None, help="training guidance (default: the micro one)")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="default: automatic (4 for 16 photos)")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: the app's, 42)")
    parser.add_argument("--identity-seeds", type=int, default=0,
                        help="also score 8 prompts × this many seeds a LoRA: faces found and whose they are nearer")
    parser.add_argument("--mixed", action="store_true",
                        help="only one set of half the photos of each person, trained anyway: the app's verdict")
    parser.add_argument("--rescore", type=Path, default=None, metavar="DATA_DIR",
                        help="only judge a bench run's saved test images again (its data_dir) with today's judge")
    parser.add_argument("--vae-only", action="store_true",
                        help="only the VAE's round trip of each person's crops (seconds; no training)")
    args = parser.parse_args()
    quiet_library_logs()
    if args.rescore:
        print(json.dumps(rescore(args.rescore), indent=1))
        return
    root = Path(tempfile.mkdtemp(prefix="micro-likeness-"))
    if args.vae_only:
        people = {person: person_crops(person, root, args.photos) for person in args.people}
        print(json.dumps({"vae_round_trip": vae_round_trip(args.base_model, people, root),
                          "base_model": args.base_model}, indent=1))
        return
    extra = {k: v for k, v in (("learning_rate", args.lr), ("rank", args.rank), ("alpha", args.rank),
                                ("guidance", args.guidance), ("lr_schedule", args.lr_schedule),
                                ("batch_size", args.batch_size), ("seed", args.seed))
             if v is not None}
    if args.mixed:
        print(json.dumps({"mixed_set": mixed_set(root, args.photos, args.steps, extra, args.base_model),
                          "photos": args.photos, "data_dir": str(root)}, indent=1))
        return
    trained = train_people(args.people, root, args.photos, args.steps, extra, args.base_model)
    try:
        figures = report(trained, root, args)
    finally:
        for workflow, _record, _seconds in trained.values():
            workflow.close()
    print(json.dumps(figures, indent=1))


def report(trained: dict[str, tuple[Workflow, ModelRecord, float]], root: Path, args: argparse.Namespace) -> dict:
    """The 2x2 table, each run's figures, the VAE's round trip and (``args.sheet``) the picture."""
    references = {person: reference_embeddings(crops(record)) for person, (_w, record, _s) in trained.items()}

    table: dict[str, dict[str, int]] = {}
    appearance: dict[str, dict[str, float]] = {}
    runs = {}
    rows: list[tuple[str, list[Path]]] = []
    for person, (workflow, record, seconds) in trained.items():
        generator = workflow.generator()
        other_distances: list = []
        table[person] = {}
        plan = AssessmentPlan(trigger_word=record.trigger_word, reference=references[person],
                              settings=workflow.test_generate_settings(MICRO_RESOLUTION))
        own = assess_lora(generator, Path(record.lora_path), plan, out_dir=root / f"{person}-test",
                          lora_scale=record.best_lora_scale or 1.0)
        images = [image.path for image in own.images]
        for other, reference in references.items():  # the same images, scored against each person's crops
            result = own if other == person else score_images(images, reference,
                                                              prompts=[i.prompt for i in own.images])
            table[person][other] = sum(image.recognised for image in result.images)
            appearance.setdefault(person, {})[other] = round(appearance_distance(images, crops(trained[other][1])), 1)
            measured = [None if i.distance is None else round(i.distance, 3) for i in result.images]
            if other == person:
                distances = measured
            else:
                other_distances = measured
        base_plan = AssessmentPlan(trigger_word=record.trigger_word, reference=references[person],
                                   settings=workflow.test_generate_settings(MICRO_RESOLUTION))
        base = assess_lora(generator, None, base_plan, out_dir=root / f"{person}-base")
        scores = record.scores.to_dict() if record.scores else {}
        samples = sorted(Path(record.folder).rglob("samples/step-*-0.png"))
        rows += [(f"{person}: photos", crops(record)[:8]), (f"{person}: samples", samples),
                 (f"{person}: test images", images)]
        runs[person] = {
            "train_and_assess_seconds": round(seconds, 1),
            "steps": record.settings.get("steps"),
            "seed": record.settings.get("seed"),
            "trigger_word": record.trigger_word,  # part of the run: its caption's text embedding
            "batch_size": record.settings.get("batch_size"),
            "verdict": scores.get("verdict"),
            "recognised_share": scores.get("recognised_share"),
            "likeness_by_checkpoint": scores.get("likeness_by_checkpoint"),
            "best_checkpoint_step": record.best_checkpoint_step,
            "distances_to_self": distances,
            "distances_to_other": other_distances,
            "base_model_alone_recognised": sum(i.recognised for i in base.images),
            "base_model_alone_faces": sum(i.faces > 0 for i in base.images),
        }
    figures = {"recognised_of_8": table, "appearance_distance": appearance, "runs": runs, "photos": args.photos,
               "vae_round_trip": vae_round_trip(args.base_model, {p: crops(r) for p, (_w, r, _s) in trained.items()},
                                                root),
               "data_dir": str(root)}
    if args.identity_seeds:
        figures["faces_nearer_whom"] = faces_nearer_whom({p: (w, r) for p, (w, r, _s) in trained.items()},
                                                         references, tuple(range(args.identity_seeds)), root)
    if args.sheet:
        figures["sheet"] = str(sheet(rows, args.sheet))
    return figures


if __name__ == "__main__":
    main()

"""Where "recognised" starts: the likeness judge's margin and distance chosen on measured genuine and impostor faces.

Prints JSON: the ROC points (each impostor kind's false-accept rate and the genuine-accept rate per margin), the
operating point — the smallest margin at which *every* impostor kind's false-accept rate is ≤ 1 % (the least strict
judge that meets the target, so the genuine-accept rate is as high as the target allows, also for generated likenesses
harder than these real photos) — and the fitted slope of the per-face likeness. The absolute bound is not tuned: it is
dlib's usual "different people" distance, 0.6 (tuned on these easy impostors, a distance alone would separate them
and the margin would do nothing — the very rule that let generic faces pass). ``--write`` stores the
operating point in ``assets/likeness/calibration.json``, which the app reads.

    PYTHONPATH=tests python -m bench.likeness_calibration [--write] [--lora-images astronaut=DIR ...]

Every package person P (``pipeline.assessment.cohort``; 14) in turn is "the person": their reference is the consensus
of 8 clean
views (as training crops), the judge's other people the cohort less P. Against it:
- genuine: 12 real photos of P degraded as generations are (96 px, turned, blurred, JPEG; ``face_probes.degraded``);
- impostor ``person``: every other person's degraded photos (the cohort less P *and* them: a stranger);
- impostor ``blend``: pixel blends of P and another person (α 0.35, 0.5, 0.65, eyes aligned) that lie at least as
  near the other person as P (a blend that is mostly P is left out and counted), the other one out of the cohort;
- impostor ``average``: the pixel average of all 14 faces, and of the 13 others;
- impostor ``generated``: the micro base model's faces (no LoRA: the generic faces a weak LoRA draws);
- impostor ``lora_of_other`` (with ``--lora-images PERSON=DIR``): a micro LoRA of one held-out person scored as the
  other (the cohort less both). The same images scored as their own person are reported, not used: whether they are
  her is what the judge is for.
Limits: each person has one source photo, so genuine probes are views of the photo their reference comes from —
generated faces of a person are harder; the cohort is 14 people.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import face_probes
import numpy as np
from PIL import Image
from scipy.optimize import minimize_scalar

from pipeline.assessment.cohort import load_cohort
from pipeline.assessment.likeness import CALIBRATION_FILE, Calibration, judge_for
from pipeline.generation.generator import DEFAULT_TEST_PROMPTS, Generator
from pipeline.intake.identity import DIFFERENT_PERSON, face_identity, person_consensus
from pipeline.intake.trigger import insert_trigger
from pipeline.models.base_model import quiet_library_logs
from pipeline.settings import MICRO_MODEL, ClassifySettings

TARGET_FAR = 0.01
MARGINS = np.round(np.arange(0.0, 0.301, 0.005), 3)
MAX_DISTANCE = DIFFERENT_PERSON
BLEND_ALPHAS = (0.35, 0.5, 0.65)


def embed(images: Sequence[Image.Image]) -> list[np.ndarray | None]:
    """Each image's faces' embeddings (all of them; None where no face is found)."""
    identity = face_identity()
    out = []
    for image in images:
        faces = identity.embed_faces(image.convert("RGB"))
        out.append(np.stack([f.vector for f in faces]) if faces else None)
    return out


def generated_faces(count: int, root: Path) -> list[Image.Image]:
    """The micro base model's test images, no LoRA: the app's test prompts without a trigger word, many seeds."""
    from pipeline.models.base_model import default_test_generate_settings

    generator = Generator(MICRO_MODEL, root)
    base = default_test_generate_settings(MICRO_MODEL)
    images = []
    for index in range(count):
        prompt = insert_trigger(DEFAULT_TEST_PROMPTS[index % len(DEFAULT_TEST_PROMPTS)], "")
        images += generator.generate(dataclasses.replace(base, prompt=prompt, seed=100 + index, num_images=1))
    return images


def measure(args: argparse.Namespace) -> dict:
    """Every (kind, person, distance, margin) row, by judging each probe against each person it stands for."""
    cohort = load_cohort()
    names = list(cohort.names)
    rng = np.random.default_rng(args.seed)
    threshold = ClassifySettings().identity_threshold
    # Each reference view's largest face, as reference_embeddings takes them from training crops.
    persons = {n: person_consensus([v[0] for v in embed(face_probes.reference_views(n, 8, seed=args.seed + 1))
                                    if v is not None], threshold) for n in names}
    probes = {n: embed([face_probes.degraded(n, rng) for _ in range(args.genuine)]) for n in names}
    rows: list[dict] = []
    left_out = 0

    def judge(kind: str, person: str, vectors: np.ndarray | None, exclude: Sequence[str]) -> None:
        judge = judge_for(persons[person], cohort=cohort.without(person, *exclude), calibration=PROBE)
        best = None if vectors is None else judge.best(list(vectors))
        rows.append({"kind": kind, "person": person, "found": best is not None,
                     "distance": None if best is None else best.distance,
                     "margin": None if best is None else best.margin})

    for person in names:
        for vectors in probes[person]:
            judge("genuine", person, vectors, ())
        for other in names:
            if other != person:
                for vectors in probes[other]:
                    judge("person", person, vectors, (other,))
    for first, second in itertools.combinations(names, 2):
        for alpha in BLEND_ALPHAS:
            vectors = embed([face_probes.blend(first, second, alpha)])[0]
            if vectors is None:
                continue
            for person, other in ((first, second), (second, first)):
                near = [np.linalg.norm(vectors - persons[p], axis=1).min() for p in (person, other)]
                if near[0] < near[1]:  # mostly the person: not an impostor for them
                    left_out += 1
                    continue
                judge("blend", person, vectors, (other,))
    everyone = embed([face_probes.average_face(names)])[0]
    for person in names:
        judge("average", person, everyone, ())
        judge("average", person, embed([face_probes.average_face([n for n in names if n != person])])[0], ())
    with tempfile.TemporaryDirectory() as tmp:
        generated = embed(generated_faces(args.generated, Path(tmp))) if args.generated else []
    for person in names:
        for vectors in generated:
            judge("generated", person, vectors, ())
    lora_rows = lora_images(args.lora_images, persons, cohort)
    rows += [r for r in lora_rows if r["kind"] == "lora_of_other"]
    return {"rows": rows, "lora_own": [r for r in lora_rows if r["kind"] == "lora_own"], "blends_left_out": left_out,
            "cohort": names}


# Judging needs a calibration; the rows record distance and margin, which do not depend on it.
PROBE = Calibration(margin=0.0, max_distance=1.0, slope=1.0)


def lora_images(specs: Sequence[str], persons: dict[str, np.ndarray], cohort) -> list[dict]:
    """Rows for LoRA test images: as the other held-out person (impostors) and as their own (reported only)."""
    folders = dict(spec.split("=", 1) for spec in specs)
    rows = []
    for owner, folder in folders.items():
        images = [Image.open(p).convert("RGB") for p in sorted(Path(folder).rglob("*.png")) if p.name != "grid.png"]
        vectors = embed(images)
        for person in folders:
            kind = "lora_own" if person == owner else "lora_of_other"
            judge = judge_for(persons[person], cohort=cohort.without(*folders), calibration=PROBE)
            for found in vectors:
                best = None if found is None else judge.best(list(found))
                rows.append({"kind": kind, "person": person, "lora_of": owner, "found": best is not None,
                             "distance": None if best is None else best.distance,
                             "margin": None if best is None else best.margin,
                             "nearest_other": None if best is None else best.nearest_other})
    return rows


def accepted(rows: Sequence[dict], margin: float, max_distance: float) -> int:
    return sum(r["found"] and r["margin"] >= margin and r["distance"] <= max_distance for r in rows)


def far_by_kind(rows: Sequence[dict], margin: float) -> dict[str, float]:
    """Each impostor kind's false-accept rate at ``margin``."""
    kinds = sorted({r["kind"] for r in rows} - {"genuine"})
    rates = {}
    for kind in kinds:
        chosen = [r for r in rows if r["kind"] == kind]
        rates[kind] = round(accepted(chosen, margin, MAX_DISTANCE) / len(chosen), 4)
    return rates


def operating_point(rows: Sequence[dict]) -> dict:
    genuine = [r for r in rows if r["kind"] == "genuine"]
    impostors = [r for r in rows if r["kind"] != "genuine"]
    margin = next(float(m) for m in MARGINS if max(far_by_kind(rows, m).values()) <= TARGET_FAR)
    return {"margin": margin, "max_distance": MAX_DISTANCE,
            "false_accept_rate": round(accepted(impostors, margin, MAX_DISTANCE) / len(impostors), 4),
            "false_accept_rate_by_kind": far_by_kind(rows, margin),
            "genuine_accept_rate": round(accepted(genuine, margin, MAX_DISTANCE) / len(genuine), 4),
            "impostors": len(impostors), "genuines": len(genuine)}


def fit_slope(rows: Sequence[dict], point: dict) -> float:
    """The per-face likeness logistic's slope: maximum likelihood of genuine vs impostor on the boundary slack."""
    calibration = Calibration(point["margin"], point["max_distance"], 1.0)
    found = [r for r in rows if r["found"]]
    z = np.array([calibration.boundary(r["distance"], r["margin"]) for r in found])
    y = np.array([r["kind"] == "genuine" for r in found], dtype=float)

    def loss(slope: float) -> float:
        p = 1 / (1 + np.exp(-np.clip(slope * z, -50, 50)))
        return -float(np.sum(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)))

    return round(float(minimize_scalar(loss, bounds=(1.0, 200.0), method="bounded").x), 2)


def summary(measured: dict) -> dict:
    rows = measured["rows"]
    point = operating_point(rows)
    point["slope"] = fit_slope(rows, point)
    kinds = sorted({r["kind"] for r in rows})
    by_kind = {}
    for kind in kinds:
        chosen = [r for r in rows if r["kind"] == kind]
        found = [r for r in chosen if r["found"]]
        by_kind[kind] = {"faces": len(chosen), "found": len(found),
                         "accepted": accepted(chosen, point["margin"], point["max_distance"]),
                         "distance_range": [round(min(r["distance"] for r in found), 3),
                                            round(max(r["distance"] for r in found), 3)] if found else None,
                         "margin_range": [round(min(r["margin"] for r in found), 3),
                                          round(max(r["margin"] for r in found), 3)] if found else None}
    genuine = [r for r in rows if r["kind"] == "genuine"]
    impostors = [r for r in rows if r["kind"] != "genuine"]
    roc = [{"margin": float(m), "false_accept_rate": round(accepted(impostors, m, MAX_DISTANCE) / len(impostors), 4),
            "false_accept_rate_by_kind": far_by_kind(rows, m),
            "genuine_accept_rate": round(accepted(genuine, m, MAX_DISTANCE) / len(genuine), 4)}
           for m in MARGINS[::2]]
    lora_own = measured["lora_own"]
    own = {}
    for owner in sorted({r["lora_of"] for r in lora_own}):
        mine = [r for r in lora_own if r["lora_of"] == owner]
        own[owner] = {"images": len(mine), "faces": sum(r["found"] for r in mine),
                      "recognised": accepted(mine, point["margin"], point["max_distance"]),
                      "margins": [None if r["margin"] is None else round(r["margin"], 3) for r in mine]}
    return {"operating_point": point, "target_false_accept_rate": TARGET_FAR, "by_kind": by_kind,
            "roc": roc, "lora_images_as_their_own_person": own,
            "blends_left_out_as_mostly_the_person": measured["blends_left_out"], "cohort": measured["cohort"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genuine", type=int, default=12, help="degraded real photos per person")
    parser.add_argument("--generated", type=int, default=24, help="micro base model images (0: none)")
    parser.add_argument("--lora-images", nargs="*", default=[], metavar="PERSON=DIR",
                        help="a held-out person's micro LoRA test images (astronaut=DIR grace_hopper=DIR)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help=f"store the operating point in {CALIBRATION_FILE}")
    args = parser.parse_args()
    quiet_library_logs()
    result = summary(measure(args))
    result["arguments"] = {"genuine": args.genuine, "generated": args.generated, "lora_images": args.lora_images,
                           "seed": args.seed}
    if args.write:
        CALIBRATION_FILE.write_text(json.dumps({
            "operating_point": result["operating_point"], "by_kind": result["by_kind"],
            "measured_by": "python -m bench.likeness_calibration (bench/results/likeness_calibration_cpu.json)",
        }, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

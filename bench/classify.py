"""Benchmark: classify 20 photos of 12 MP (detection, quality, hashes, identity) and print JSON.

    PYTHONPATH=tests .venv/bin/python -m bench.classify [--count 20] [--megapixels 12] [--threads N]

Target (issue 4): under 0.5 s per photo for the whole classification on the 2-core CPU. Models are loaded before
the timed run (they load once per process in the app too); the cold first call is reported separately.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import photo_factory  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.classify import classify_photos  # noqa: E402
from pipeline.faces import detect_faces  # noqa: E402
from pipeline.identity import face_identity  # noqa: E402


def make_photos(folder: Path, count: int, megapixels: float) -> list[Path]:
    """``count`` portrait JPEGs of ``megapixels`` MP (4:3, upright), each a different shot of the same person."""
    shots = photo_factory.portrait_variants(photo_factory.astronaut(), photo_factory.ASTRONAUT_FACE, count)
    height = int(math.sqrt(megapixels * 1e6 * 4 / 3))
    width = int(height * 3 / 4)
    rng = np.random.default_rng(0)
    paths = []
    for i, shot in enumerate(shots):
        # fill the 3:4 frame: pad the sides with the shot's edge colour, then scale up to camera size
        canvas = Image.new("RGB", (max(shot.width, int(shot.height * 3 / 4)), shot.height), shot.getpixel((0, 0)))
        canvas.paste(shot, ((canvas.width - shot.width) // 2, 0))
        photo = canvas.resize((width, height), Image.Resampling.BICUBIC)
        # sensor-like grain: without it the upscaled JPEG is ~1 MB and decodes faster than a real 4–6 MB one
        grain = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
        photo = Image.fromarray(np.clip(np.asarray(photo, dtype=np.float32) + grain, 0, 255).astype(np.uint8))
        path = folder / f"photo_{i:02d}.jpg"
        photo.save(path, quality=92)
        paths.append(path)
    return paths


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp), args.count, args.megapixels)
        size_mb = sum(p.stat().st_size for p in paths) / 2**20
        start = time.perf_counter()
        detect_faces(photo_factory.astronaut())  # loads MTCNN
        face_identity()  # loads dlib
        load_s = time.perf_counter() - start
        rss_before = peak_rss_mb()
        start = time.perf_counter()
        result = classify_photos(paths)
        seconds = time.perf_counter() - start
    print(json.dumps({
        "photos": args.count,
        "megapixels": args.megapixels,
        "mean_file_mb": round(size_mb / args.count, 2),
        "seconds_total": round(seconds, 2),
        "seconds_per_photo": round(seconds / args.count, 3),
        "target_seconds_per_photo": 0.5,
        "model_load_seconds": round(load_s, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_mb_before_classify": round(rss_before, 1),
        "kept": result.report.counts["keep"],
        "selected": len(result.selected),
        "readiness": result.report.readiness,
    }, indent=2))


if __name__ == "__main__":
    main()

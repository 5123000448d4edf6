"""Generation, assessment and video timings: prints JSON with seconds per stage.

Run from the repository root: ``HF_HUB_OFFLINE=1 .venv/bin/python -m bench.generate [--base-model tiny]``.
With the tiny model (the default) the numbers measure the pipeline's own overhead; with a local FLUX folder
(``--base-model /path/to/FLUX.1-dev``) they measure the model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from pipeline.assessment.assess import AssessmentPlan, assess_lora, reference_embeddings, score_images
from pipeline.generation.generator import DEFAULT_TEST_PROMPTS, Generator
from pipeline.models.base_model import is_tiny
from pipeline.settings import GenerateSettings, VideoSettings
from pipeline.video.clip import make_video
from tests import lora_factory, photo_factory


def timed(function, *args, **kwargs) -> tuple[float, object]:  # any callable
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return round(time.perf_counter() - start, 3), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    tiny = is_tiny(args.base_model)
    size, steps = (64, 4) if tiny else (512, 28)
    out: dict[str, object] = {"base_model": args.base_model, "size": size, "steps": steps}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generator = Generator(args.base_model, root / "data", device=args.device)
        out["load_s"], _ = timed(lambda: generator.pipeline)
        settings = GenerateSettings(prompt="a portrait photo of a person", steps=steps, width=size, height=size)
        timed(generator.generate, settings)  # warm-up: first call pays for lazy initialisation
        out["generate_one_s"], _ = timed(generator.generate, settings)
        if tiny:
            big = GenerateSettings(prompt="a portrait photo of a person", steps=28, width=512, height=512)
            seconds, _ = timed(generator.generate, big)
            out["generate_512px_28_steps_s"] = seconds
            lora = lora_factory.make_lora(generator.pipeline, root / "lora")
            out["lora_first_use_s"], _ = timed(generator.generate, settings, lora_path=lora)
            out["lora_cached_use_s"], _ = timed(generator.generate, settings, lora_path=lora)
            out["no_lora_after_lora_s"], _ = timed(generator.generate, settings)
        else:
            lora = None
        photos = photo_factory.variants(photo_factory.astronaut(), 8, seed=1)
        out["reference_8_photos_s"], reference = timed(reference_embeddings, photos)
        seconds, _ = timed(score_images, photos, reference)
        out["score_per_photo_s"] = round(seconds / len(photos), 3)
        plan = AssessmentPlan(trigger_word="zorvek", reference=reference, settings=settings)
        seconds, result = timed(assess_lora, generator, lora, plan, out_dir=root / "assessment")
        out[f"assess_{len(DEFAULT_TEST_PROMPTS)}_prompts_s"] = seconds
        out["assess_verdict"] = result.verdict
        clip = VideoSettings(prompt="a portrait photo of a person", frames=16, fps=8, width=size, height=size,
                             steps=steps)
        out["video_16_frames_s"], _ = timed(make_video, generator, clip, lora_path=lora, out_path=root / "clip.mp4")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

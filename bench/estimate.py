"""The time estimate against the time taken, on this machine: prints JSON.

Two trainings of the same settings through the Workflow, as the app runs them (photos classified first, as the Review
tab does): the first against the estimate from the project's bench figures, the second against the estimate learnt
from the first. Each run is timed from outside, by polling the workflow as the Training tab does: Train → first step
(preparing, queue, loading), first step → assessing (steps, samples, checkpoints and their tests), assessing → ready
(the final assessment and its LoRA-scale trials).

    PYTHONPATH=tests .venv/bin/python -m bench.estimate                      # tiny, 50 steps (TrainSettings.quick)
    PYTHONPATH=tests .venv/bin/python -m bench.estimate --base micro --steps 30   # minutes on a 2-core CPU
    PYTHONPATH=tests .venv/bin/python -m bench.estimate --base micro --photos 16 --runs 1   # the full default run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported late in main(): the environment comes first
    from pipeline.settings import TrainSettings
    from pipeline.training.estimate import TrainingEstimate
    from pipeline.workflow import Workflow

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

logger = logging.getLogger(__name__)


def watch(workflow: Workflow, settings: TrainSettings, timeout_s: float = 3600.0) -> dict[str, float]:
    """One run's parts as the person lives them (seconds), timed from outside by polling the workflow: Train pressed
    → the first step reported (dataset, queue, loading) → assessing (steps, samples, checkpoints and their tests) →
    ready (the final assessment and its scale trials)."""
    from pipeline.status import Status

    pressed = time.monotonic()
    model_id = workflow.start_training(settings, anyway=True).id
    first = assessing = None
    while True:
        now = time.monotonic()
        status = workflow.model(model_id).status
        if first is None and workflow.training_view(model_id).last_step is not None:
            first = now
        if assessing is None and status in (Status.ASSESSING, Status.READY):
            assessing = now
        if status in (Status.READY, Status.FAILED, Status.CANCELLED):
            if status != Status.READY:
                raise RuntimeError(f"the run ended {status}: {workflow.model(model_id).error}")
            break
        if now - pressed > timeout_s:
            raise RuntimeError(f"the run did not end within {timeout_s:g} s")
        time.sleep(0.02)
    first = first or assessing
    return {"to_first_step_s": round(first - pressed, 2), "training_s": round(assessing - first, 2),
            "final_assessment_s": round(now - assessing, 2), "total_s": round(now - pressed, 2)}


def estimated(estimate: TrainingEstimate) -> dict[str, object]:
    parts = estimate.parts
    figures: dict[str, object] = {"basis": estimate.basis, "total_s": round(estimate.seconds or 0.0, 2)}
    if parts is not None:
        figures |= {"to_first_step_s": round(parts.queue + parts.preparing + parts.loading, 2),
                    "training_s": round(parts.steps + parts.samples + parts.checkpoints, 2),
                    "final_assessment_s": round(parts.final, 2),
                    "parts_s": {k: round(v, 2) for k, v in dataclasses.asdict(parts).items()}}
    return figures


def main() -> None:
    import photo_factory

    from pipeline.settings import AppSettings, TrainSettings
    from pipeline.workflow import Workflow

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", choices=("tiny", "micro"), default="tiny")
    parser.add_argument("--steps", type=int, default=0, help="0: the base's default (tiny 50, micro 5000)")
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--runs", type=int, choices=(1, 2), default=2,
                        help="1: only the first run, against the bench figures (a full default micro run is ~30 min)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    make = TrainSettings.quick if args.base == "tiny" else TrainSettings.micro
    settings = make(name="timed", **({"steps": args.steps} if args.steps else {}))

    figures: dict[str, object] = {"base": args.base, "steps": settings.steps, "photos": args.photos,
                                  "checkpoint_every": settings.checkpoint_every, "sample_every": settings.sample_every,
                                  "test_prompts": "built-in", "cpu_count": os.cpu_count(),
                                  "load_1min": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp:
        workflow = Workflow(AppSettings(data_dir=Path(tmp) / "data", base_model=args.base))
        try:
            workflow.add_photos(photo_factory.portrait_set(Path(tmp) / "photos", args.photos))
            workflow.classify()  # as the Review tab does before Train
            for run in ("first_run", "second_run")[: args.runs]:
                estimate = workflow.estimate(settings)
                measured = watch(workflow, settings)
                figures[run] = {"estimate": estimated(estimate), "measured": measured,
                                "estimate_over_measured": round((estimate.seconds or 0.0) / measured["total_s"], 2)}
                logger.info("%s: estimate %.1f s, measured %.1f s", run, estimate.seconds or 0.0,
                            measured["total_s"])
        finally:
            workflow.close()
    figures["load_1min_after"] = round(os.getloadavg()[0], 2)
    text = json.dumps(figures, indent=2)
    print(text)  # the bench's output
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()

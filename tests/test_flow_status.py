"""The step indicator's content, from a real workspace: photos, their check, the user's decisions, a training."""

from __future__ import annotations

from pathlib import Path

import photo_factory

from pipeline.flow_status import Step
from pipeline.settings import AppSettings, TrainSettings
from pipeline.workflow import Workflow
from ui.steps import render


def test_the_steps_follow_the_workspace(tmp_path: Path) -> None:
    workflow = Workflow(AppSettings(data_dir=tmp_path / "data", base_model="tiny"))
    try:
        status = workflow.flow_status()
        assert status.current is Step.PHOTOS and "add 15–20 photos" in status.steps[0].note

        good = photo_factory.portrait_set(tmp_path / "good", 6)
        blurred = tmp_path / "blurred.jpg"
        blurred.write_bytes(photo_factory.jpeg_bytes(photo_factory.blurred(
            photo_factory.portrait_variants(photo_factory.astronaut(), photo_factory.ASTRONAUT_FACE, 1, seed=9)[0])))
        workflow.add_photos([*good, blurred])
        status = workflow.flow_status()
        assert status.steps[0].note == "7 photos: 8 more recommended" and not status.steps[0].done
        assert status.steps[1].note == "check the photos"  # nothing checked yet

        workflow.last_classification = workflow.classify()
        review = workflow.flow_status().steps[1]
        assert review.note == "1 photo needs your decision · 6 photos selected" and not review.done
        workflow.set_override("blurred.jpg", "exclude")
        workflow.last_classification = workflow.classify()
        assert workflow.flow_status().steps[1].note.startswith("not ready")  # 6 photos are too few to train on

        workflow.remove_photo(workflow.list_photos()[0].id)
        assert workflow.flow_status().steps[1].note == "check the photos"  # that check was of another set

        record = workflow.start_training(TrainSettings.quick(name="steps", steps=3, checkpoint_every=3,
                                                             sample_every=1000), anyway=True)
        # whatever the machine's speed: waiting, running, or (a fast one) already done
        assert workflow.flow_status().steps[2].note in ("waiting for the GPU", "training…", "assessing…", "done")
        workflow.wait_for(record.id, timeout=300)
        status = workflow.flow_status()
        assert status.steps[2].done and status.steps[3].note == "1 model ready" and status.steps[3].done
        line = render(status)
        assert "👉 **1 · Photos**" in line and line.count("✅") == 2  # photos still missing: that step is current
    finally:
        workflow.close()

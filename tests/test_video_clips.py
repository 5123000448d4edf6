"""A model's clips as the Models tab lists them (issue 36): both kinds with their recognised share and files, none
for another model or another person, and a clip whose MP4 is deleted drops out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import face_probes
import numpy as np
import pytest
import torch
from lora_factory import make_lora

from pipeline.assessment.assess import reference_embeddings
from pipeline.assessment.likeness import save_person
from pipeline.library.catalog import ModelNotFound
from pipeline.settings import AppSettings
from pipeline.status import Status
from pipeline.video.clip_likeness import MORPH
from pipeline.video.i2v import IMAGE_TO_VIDEO
from pipeline.workflow import Workflow


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workflow]:
    """The tiny FLUX model with one ready model of the astronaut: a random LoRA (``make_lora``, seconds)."""
    torch.set_num_threads(1)
    flow = Workflow(AppSettings(data_dir=tmp_path_factory.mktemp("data"), base_model="tiny"), start_worker=False)
    yield flow
    flow.close()


def ready_model(workflow: Workflow, name: str) -> str:
    record = workflow.library.create(name, "tiny", {})
    lora = make_lora(workflow.generator().pipeline, Path(record.folder) / "lora")
    person = reference_embeddings(face_probes.reference_views("astronaut", 2)).mean(axis=0)
    save_person(Path(record.folder), person / np.linalg.norm(person), name)
    workflow.library.update(record.id, status=Status.READY, lora_path=lora)
    return record.id


def test_a_models_clips_are_listed_with_kind_share_and_files(workflow: Workflow, tmp_path: Path) -> None:
    model_id, other_id = ready_model(workflow, "astro"), ready_model(workflow, "other")
    morph = workflow.video(model_id, prompt="{trigger}", frames=3, fps=3, seed=1)
    moved = workflow.video(model_id, prompt="{trigger}", frames=5, fps=5, seed=2, video_model="tiny")
    clips = workflow.clips(model_id)
    assert [c.video for c in clips] == [moved.video, morph.video]  # newest first
    assert [c.kind for c in clips] == [IMAGE_TO_VIDEO, MORPH] and [c.frame_count for c in clips] == [5, 3]
    assert all(c.recognised_share is not None and 0 <= c.recognised_share <= 1 for c in clips)
    assert all(c.video.is_file() and c.likeness_json.is_file() and c.model_id == model_id for c in clips)
    assert clips[0].video_model == "tiny" and clips[0].made[:2] == "20"
    assert workflow.clips(other_id) == []
    # Another person (their own workspace beside this one) cannot list this model's clips.
    stranger = Workflow(workflow.settings, folder=tmp_path / "stranger", start_worker=False)
    try:
        with pytest.raises(ModelNotFound):
            stranger.clips(model_id)
    finally:
        stranger.close()
    morph.video.unlink()
    assert [c.video for c in workflow.clips(model_id)] == [moved.video]

"""A library model draws on the base its LoRA was trained on, not the app's current base (real tiny models): a LoRA on
another base loads with a warning at most and draws wrong pictures, so drawing follows the model's record, and a
base this machine cannot load is refused with what to start the app with."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from lora_factory import make_lora
from PIL import Image

from pipeline.generation.generator import Generator, image_metadata
from pipeline.generation.generators import Generators
from pipeline.intake.trigger import insert_trigger
from pipeline.models.families.tiny_klein import TINY_KLEIN_MODEL
from pipeline.settings import FLUX_DEV, TINY_MODEL, AppSettings, GenerateSettings
from pipeline.status import Status
from pipeline.workflow import BaseUnavailable, Workflow

SMALL = GenerateSettings(prompt="a portrait photo of {trigger}", steps=2, width=64, height=48, seed=3)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # The same thread count for both drawings, so their float sums run in the same order: equal pixels.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def klein_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workflow]:
    """An app started on the tiny FLUX.2 [klein] whose library holds a model trained on the tiny FLUX.1."""
    workflow = Workflow(AppSettings(data_dir=tmp_path_factory.mktemp("data"), base_model=TINY_KLEIN_MODEL),
                        start_worker=False)
    yield workflow
    workflow.close()


def _model_on(workflow: Workflow, base: str, lora: Path, name: str) -> str:
    record = workflow.library.create(name, base, {})
    return workflow.library.update(record.id, status=Status.READY, lora_path=lora).id


def test_a_flux1_model_draws_on_its_own_base_while_the_app_runs_klein(klein_app: Workflow, tmp_path: Path) -> None:
    own = Generator(TINY_MODEL, klein_app.shared_dir)  # the model's base, drawn on directly
    lora = make_lora(own.pipeline, tmp_path / "lora", seed=5)
    model_id = _model_on(klein_app, TINY_MODEL, lora, "Anna")
    assert klein_app.base_of(model_id) == TINY_MODEL and klein_app.base_of(None) == TINY_KLEIN_MODEL

    [path] = klein_app.generate(model_id, SMALL)
    drawn = Image.open(path)
    trigger = klein_app.library.get(model_id).trigger_word
    [direct] = own.generate(dataclasses.replace(SMALL, prompt=insert_trigger(SMALL.prompt, trigger)), lora_path=lora)
    assert image_metadata(drawn)["model"] == TINY_MODEL
    assert np.array_equal(np.asarray(drawn), np.asarray(direct))  # exactly what its own base draws
    # The bare base model still draws on the app's base.
    [bare] = klein_app.generate(None, SMALL)
    assert image_metadata(Image.open(bare))["model"] == TINY_KLEIN_MODEL


@pytest.mark.parametrize("base", [FLUX_DEV, "/gone/flux1-finetune"])
def test_a_model_whose_base_cannot_load_here_is_refused_with_its_base_named(klein_app: Workflow, tmp_path: Path,
                                                                           base: str) -> None:
    lora = tmp_path / "pytorch_lora_weights.safetensors"
    lora.write_bytes(b"never read: refused before anything loads")
    model_id = _model_on(klein_app, base, lora, f"Bea {base}")
    # FLUX.1-dev: no GPU here (CPU runs), or not in this machine's offline cache (GPU runs); the folder: gone.
    for refused in (lambda: klein_app.generate(model_id, SMALL),
                    lambda: klein_app.compare((None, 1.0), (model_id, 1.0), SMALL),  # before the left side draws,
                    lambda: klein_app.queue_video(model_id, prompt="a portrait", frames=4, fps=4)):
        with pytest.raises(BaseUnavailable) as caught:
            refused()
        message = str(caught.value)
        assert f"'Bea {base}' was trained on" in message and f"start the app with --base-model {base}" in message
        assert f"this app runs {TINY_KLEIN_MODEL}" in message


def test_loading_a_base_on_a_gpu_drops_the_other_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One base model on the GPU at a time: the one that loads drops the others first (``Generator`` calls the hook
    only on a GPU: here the hook itself, with the tiny model's weights counted as on the GPU)."""
    generators = Generators(tmp_path)
    flux1, klein = generators.get(TINY_MODEL), generators.get(TINY_KLEIN_MODEL)
    released = []
    generators.on_load(lambda: released.append(True))
    assert flux1.pipeline is not None
    monkeypatch.setattr(flux1, "gpu_gb_held", lambda: 1.0)
    generators._make_room(TINY_KLEIN_MODEL)
    assert flux1.loaded_placement is None and released == [True]  # unloaded; the video model's release still runs
    assert flux1._lock is klein._lock  # one GPU lock: the unload cannot wait on a lock the loading thread holds


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_two_bases_never_hold_it_at_once(tmp_path: Path) -> None:
    generators = Generators(tmp_path)
    flux1, klein = generators.get(TINY_MODEL), generators.get(TINY_KLEIN_MODEL)
    flux1.generate(SMALL)
    assert flux1.gpu_gb_held() > 0
    klein.generate(SMALL)
    assert klein.gpu_gb_held() > 0 and flux1.gpu_gb_held() == 0 and flux1.loaded_placement is None

"""Generation on GPUs smaller than the model: the placement choice, and each placement's output on the tiny model.

On this CPU every placement runs with the CPU as its "GPU": streamed weights are real copies and fp8 weights are
really float8, so the outputs show what the placements do to images; only the speed is the GPU's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lora_factory import make_lora

from pipeline.generation.generator import Generator
from pipeline.models import memory
from pipeline.models.base_model import default_test_generate_settings

# FLUX.1-dev in bf16 (pipeline.models.base_model._placement_sizes on the real architecture, meta device): all weights,
# and
# what the fp8 placement keeps on the GPU.
FLUX_DEV_GB = dict(gpu_gb=31.4, fp8_gb=11.6)


def test_placement_follows_free_gpu_memory() -> None:
    def choose(free: float | None) -> str:
        return memory.choose_generation_placement("auto", free, **FLUX_DEV_GB)[0]

    assert choose(None) == "cpu"
    assert choose(79.0) == "gpu" and choose(39.4) == "gpu"  # H100, A100 40 GB
    assert choose(23.5) == "fp8" and choose(15.5) == "fp8"  # 24 GB and 16 GB cards (free memory as CUDA reports)
    assert choose(11.5) == "stream"  # 12 GB
    assert memory.choose_generation_placement("stream", 79.0, **FLUX_DEV_GB)[0] == "stream"
    with pytest.raises(ValueError, match="placement"):
        memory.choose_generation_placement("disk", 79.0, **FLUX_DEV_GB)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def _images(generator: Generator, lora: Path | None) -> np.ndarray:
    settings = default_test_generate_settings("tiny").__class__(prompt="a portrait photo of zorvek", steps=4,
                                                                width=64, height=64, seed=3)
    image = generator.generate(settings, lora_path=lora)[0]
    return np.asarray(image, dtype=np.float64)


@pytest.mark.parametrize("placement", ["stream", "fp8"])
def test_each_placement_generates_what_the_plain_model_does(placement: str, data_dir: Path,
                                                             tmp_path: Path) -> None:
    plain = Generator("tiny", data_dir, device="cpu")
    lora = make_lora(plain.pipeline, tmp_path / "lora")
    placed = Generator("tiny", data_dir, device="cpu", placement=placement)
    for with_lora in (None, lora):
        reference, image = _images(plain, with_lora), _images(placed, with_lora)
        if placement == "stream":  # the same weights, only read from host RAM (a rare rounding step apart)
            assert np.abs(image - reference).max() <= 1
        else:  # float8 weights: close, not equal
            assert 0 < np.abs(image - reference).mean() < 8, np.abs(image - reference).mean()
    # The LoRA still changes the placed model's images.
    assert np.abs(_images(placed, lora) - _images(placed, None)).mean() > 1


@pytest.mark.parametrize("placement", ["stream", "fp8"])
def test_loading_a_lora_reads_no_placed_weight(placement: str, data_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """peft and diffusers read each wrapped layer's weight ~20 times while loading, for its shape only: no host copy
    (stream) or dequantisation (fp8) then."""
    from pipeline.models import offload

    copies = []
    kind = offload.HostWeight if placement == "stream" else memory._Float8Weight
    method = "copy" if placement == "stream" else "dequantize"
    original = getattr(kind, method)
    monkeypatch.setattr(kind, method, lambda self, *stored: copies.append(1) or original(self, *stored))
    placed = Generator("tiny", data_dir, device="cpu", placement=placement)
    lora = make_lora(Generator("tiny", data_dir, device="cpu").pipeline, tmp_path / "lora")
    assert placed.pipeline is not None  # loaded before counting
    copies.clear()
    with placed.activated(lora):
        assert copies == []  # peft and diffusers read the weights for shapes only
    _images(placed, lora)
    assert copies  # generating reads the real weights


def test_a_generator_placed_for_little_memory_is_reloaded_when_a_better_placement_fits(
        data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.settings import AppSettings
    from pipeline.workflow import Workflow

    workflow = Workflow(AppSettings(data_dir=tmp_path / "app", base_model="tiny"), start_worker=False)
    try:
        generator = workflow.generator()
        generator.placement = "stream"  # as "auto" chooses while a training fills the GPU
        assert generator.pipeline is not None and generator.placement_in_use == "stream"
        generator.placement = "auto"
        monkeypatch.setattr(memory, "free_gpu_gb", lambda device=None: 1.0)  # still no room: keep it
        workflow._generators.place_again_when_better(workflow.base_model)
        assert generator.placement_in_use == "stream"
        monkeypatch.setattr(memory, "free_gpu_gb", lambda device=None: 79.0)  # the training handed the GPU back
        workflow._generators.place_again_when_better(workflow.base_model)
        assert generator.placement_in_use is None  # unloaded: the next use places it again
        monkeypatch.undo()
        assert _images(generator, None).shape == (64, 64, 3) and generator.placement_in_use == "cpu"
    finally:
        workflow.close()


def test_the_first_generation_says_where_the_weights_went(data_dir: Path) -> None:
    from pipeline.events import Message

    placed = Generator("tiny", data_dir, device="cpu", placement="stream")
    settings = default_test_generate_settings("tiny").__class__(prompt="a portrait", steps=2, width=64, height=64)
    events: list = []
    placed.generate(settings, on_event=events.append)
    said = [e for e in events if isinstance(e, Message)]
    assert len(said) == 1 and said[0].level == "warning" and "placement stream" in said[0].text
    events.clear()
    placed.generate(settings, on_event=events.append)
    assert not [e for e in events if isinstance(e, Message)]  # once, when it loads

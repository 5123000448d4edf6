"""LoRA training on the real tiny FLUX model: learning, events, checkpoints, resume, cancel, outputs, memory modes."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import photo_factory
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pipeline import events as ev
from pipeline.intake.dataset import Dataset, DatasetItem
from pipeline.models import memory
from pipeline.models.base_info import header_names_base
from pipeline.models.base_model import load_pipeline
from pipeline.models.flow_matching import sample_sigmas
from pipeline.models.lora_formats import convert_to_kohya, load_kohya_as_diffusers, read_metadata
from pipeline.settings import SettingsError, TrainSettings
from pipeline.training.trainer import (
    PHASES,
    TrainingError,
    aspect_buckets,
    bucket_for,
    list_checkpoints,
    phase_for,
    resolution_stages,
    train_lora,
)

TRIGGER = "ohwx"


def _face_crops(folder: Path, count: int, sizes: tuple[tuple[int, int], ...]) -> list[Path]:
    """Crops around the astronaut's face from varied photos, at a few sizes (two aspect ratios)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(photo_factory.variants(photo_factory.astronaut(), count, seed=3)):
        width, height = image.size
        side = min(width, height)
        crop = image.crop(((width - side) // 2, 0, (width - side) // 2 + side, side))
        path = folder / f"face-{i:02d}.png"
        crop.resize(sizes[i % len(sizes)]).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model runs fastest on one thread (as training itself does), most of all on busy shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    paths = _face_crops(tmp_path_factory.mktemp("photos"), 16, ((128, 128), (64, 64), (96, 128)))
    items = tuple(DatasetItem(image=p, caption=f"a photo of {TRIGGER} person", source=p.name) for p in paths)
    return Dataset(items=items, trigger_word=TRIGGER, resolution=128)  # the largest crops


@pytest.fixture(scope="module")
def completed(dataset: Dataset, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    events: list[ev.Event] = []
    out = tmp_path_factory.mktemp("run")
    result = train_lora(dataset, TrainSettings.quick(caption_dropout=0.0), out, base_model="tiny",
                        data_dir=data_dir, on_event=events.append)
    return result, events, out


def _quick(**overrides) -> TrainSettings:
    base = dict(steps=10, checkpoint_every=5, sample_every=1000, keep_checkpoints=5, sample_prompts=())
    base.update(overrides)
    return TrainSettings.quick(**base)


def test_training_completes_and_loss_falls(completed) -> None:
    result, _events, out = completed
    assert result.status == "completed", result.error
    assert result.steps_done == 50 and len(result.losses) == 50
    assert all(math.isfinite(x) for x in result.losses)
    first, last = np.mean(result.losses[:10]), np.mean(result.losses[-10:])
    assert last < first * 0.97, (first, last)
    assert result.final_loss == result.losses[-1]
    assert result.lora_path == out / "lora.safetensors" and result.lora_path.is_file()
    assert result.kohya_path == out / "lora_kohya.safetensors" and result.kohya_path.is_file()
    saved = json.loads((out / "settings.json").read_text())
    assert saved["steps"] == 50 and saved["resolution"] == 64


def test_events_stream_steps_phases_samples_checkpoints(completed) -> None:
    result, events, _out = completed
    steps = [e for e in events if isinstance(e, ev.TrainStep)]
    assert [e.step for e in steps] == list(range(1, 51))
    assert [e.phase for e in steps[::13]] == list(PHASES)  # steps 1, 14, 27, 40
    assert all(e.total_steps == 50 and e.seconds_per_step > 0 and e.host_memory_gb > 0 for e in steps)
    # the ETA counts to a ready model: at the last step its checkpoint, sample and the final assessment remain
    assert 0 < steps[-1].eta_seconds < steps[0].eta_seconds
    assert steps[0].learning_rate < steps[10].learning_rate  # warm-up
    assert steps[-1].loss_smooth != steps[-1].loss
    samples = [e for e in events if isinstance(e, ev.SampleImages)]
    assert [s.step for s in samples] == [25, 50]
    for sample in samples:
        assert len(sample.images) == 2 and all(p.is_file() and p.suffix == ".png" for p in sample.images)
        assert all(TRIGGER in p for p in sample.prompts)
    saved = [e.step for e in events if isinstance(e, ev.CheckpointSaved)]
    assert saved == [25, 50]
    assert [c.step for c in result.checkpoints] == [25, 50]
    assert all(c.path.is_file() for c in result.checkpoints)


def test_headers_carry_the_run(completed, dataset: Dataset) -> None:
    result, _events, _out = completed
    for path in (result.lora_path, result.kohya_path):
        meta = read_metadata(path)
        assert meta["likeness.trigger_word"] == TRIGGER
        assert meta["likeness.base_model"] == "tiny"
        assert header_names_base(meta, "tiny") and meta["ss_base_model_version"] == "likeness_tiny"  # not flux1
        assert meta["likeness.steps"] == "50" and meta["likeness.rank"] == "4"
        assert meta["likeness.resolution"] == "64"
        assert meta["likeness.software"].startswith("likeness ")
        assert meta["ss_network_dim"] == "4"
    assert all("lora" in k for k in load_file(str(result.lora_path)))
    kohya_keys = load_file(str(result.kohya_path))
    assert all(k.startswith("lora_unet_") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
               for k in kohya_keys)
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in kohya_keys
    assert "lora_unet_single_blocks_0_linear1.lora_up.weight" in kohya_keys


def test_both_formats_load_and_change_the_output(completed, data_dir: Path) -> None:
    result, _events, _out = completed
    pipe = load_pipeline("tiny", data_dir, device="cpu")

    def generate() -> np.ndarray:
        image = pipe(prompt=f"a photo of {TRIGGER} person", height=64, width=64, num_inference_steps=4,
                     generator=torch.Generator().manual_seed(0)).images[0]
        return np.asarray(image).astype(float)

    base = generate()
    pipe.load_lora_weights(str(result.lora_path), adapter_name="diffusers")
    with_diffusers = generate()
    pipe.unload_lora_weights()
    assert np.abs(generate() - base).max() == 0
    pipe.load_lora_weights(load_kohya_as_diffusers(result.kohya_path), adapter_name="kohya")
    with_kohya = generate()
    assert np.abs(with_diffusers - base).mean() > 0.5
    assert np.abs(with_kohya - with_diffusers).max() <= 1  # the same LoRA, up to rounding of uint8 pixels
    # A mid-run checkpoint loads the same way.
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(result.checkpoints[0].path), adapter_name="checkpoint")
    assert np.abs(generate() - base).mean() > 0.1


def test_a_lora_with_the_modulation_and_outer_layers_loads_alike_in_both_formats(dataset: Dataset, data_dir: Path,
                                                                                     tmp_path: Path) -> None:
    """The micro model's LoRA: the blocks' modulation and the layers outside the blocks too."""
    settings = _quick(steps=6, lora_modulation=True, lora_outer_layers=True, learning_rate=5e-3)
    result = train_lora(dataset, settings, tmp_path / "lora", base_model="tiny", data_dir=data_dir)
    diffusers_keys = load_file(str(result.lora_path)).keys()
    assert any("norm1.linear" in k for k in diffusers_keys)
    assert {"transformer.x_embedder.lora_A.weight", "transformer.norm_out.linear.lora_B.weight",
            "transformer.proj_out.lora_A.weight"} <= diffusers_keys
    kohya = load_file(str(result.kohya_path))
    assert "lora_unet_double_blocks_0_img_mod_lin.lora_down.weight" in kohya
    assert "lora_unet_single_blocks_0_modulation_lin.lora_up.weight" in kohya
    assert {"lora_unet_img_in.lora_down.weight", "lora_unet_txt_in.lora_up.weight",
            "lora_unet_time_in_in_layer.lora_down.weight", "lora_unet_final_layer_linear.lora_up.weight",
            "lora_unet_final_layer_adaLN_modulation_1.lora_up.weight"} <= kohya.keys()
    pipe = load_pipeline("tiny", data_dir, device="cpu")

    def generate() -> np.ndarray:
        image = pipe(prompt=f"a photo of {TRIGGER} person", height=64, width=64, num_inference_steps=4,
                     generator=torch.Generator().manual_seed(0)).images[0]
        return np.asarray(image).astype(float)

    pipe.load_lora_weights(str(result.lora_path), adapter_name="diffusers")
    with_diffusers = generate()
    pipe.unload_lora_weights()
    pipe.load_lora_weights(load_kohya_as_diffusers(result.kohya_path), adapter_name="kohya")
    assert np.abs(generate() - with_diffusers).max() <= 1
    # The outer layers are part of what a checkpoint was trained with: a run without them starts afresh.
    shutil.copytree(tmp_path / "lora", tmp_path / "without")
    events: list[ev.Event] = []
    train_lora(dataset, dataclasses.replace(settings, steps=8, lora_outer_layers=False), tmp_path / "without",
               base_model="tiny", data_dir=data_dir, on_event=events.append)
    assert any(isinstance(e, ev.Message) and "starting afresh" in e.text for e in events)


def test_a_setting_added_later_leaves_the_fingerprints_of_earlier_checkpoints_alone() -> None:
    """Checkpoints fingerprinted before ``lora_outer_layers`` existed still resume: at its default the field is left
    out. The hashes are what the version before it (fbda15a) computed for these inputs; a new TrainSettings field
    belongs in ``training._LATER_FIELDS`` with its default, or this fails."""
    from pipeline.training.trainer import _resume_fingerprints

    items = tuple(DatasetItem(image=Path(f"/x/d/p{i}.png"), caption="a photo of ohwx", source=f"p{i}.png")
                  for i in range(3))
    dataset = Dataset(items=items, trigger_word="ohwx", resolution=64)
    before = ("2daed7b7c7e4bb2cdd2f3b1277e66fbf4241ef4a", "85df20dd349af75dc16dd445258c62eb2182d6fa")
    assert _resume_fingerprints(TrainSettings(name="a"), "flux", "/nonexistent", dataset) == before
    with_outer = _resume_fingerprints(TrainSettings(name="a", lora_outer_layers=True), "flux", "/nonexistent", dataset)
    assert with_outer[0] != before[0]


def test_a_chosen_checkpoint_converts_to_the_same_kohya_file(completed, tmp_path: Path) -> None:
    result, _events, _out = completed
    converted = convert_to_kohya(result.lora_path, tmp_path / "best_kohya.safetensors")
    written, again = load_file(str(result.kohya_path)), load_file(str(converted))
    assert written.keys() == again.keys()
    assert all(torch.allclose(written[k].float(), again[k].float(), atol=1e-6) for k in written)
    assert read_metadata(converted)["likeness.trigger_word"] == TRIGGER


def _stop_after(events: list[ev.Event], step: int):
    return lambda: any(isinstance(e, ev.TrainStep) and e.step >= step for e in events)


@pytest.fixture(scope="module")
def straight(dataset: Dataset, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The quick run without a stop, for the resumed runs to repeat."""
    return train_lora(dataset, _quick(), tmp_path_factory.mktemp("straight"), base_model="tiny", data_dir=data_dir)


def _stopped_at_6(dataset: Dataset, data_dir: Path, folder: Path) -> None:
    events: list[ev.Event] = []
    first = train_lora(dataset, _quick(), folder, base_model="tiny", data_dir=data_dir, on_event=events.append,
                       should_stop=_stop_after(events, 6))
    assert first.status == "cancelled" and first.steps_done == 6


def test_resume_repeats_the_uninterrupted_run(dataset: Dataset, data_dir: Path, tmp_path: Path, straight) -> None:
    settings = _quick()
    _stopped_at_6(dataset, data_dir, tmp_path / "resumed")
    second = train_lora(dataset, settings, tmp_path / "resumed", base_model="tiny", data_dir=data_dir)
    assert second.status == "completed" and second.steps_done == 10
    np.testing.assert_allclose(second.losses, straight.losses, rtol=1e-5)
    a, b = load_file(str(straight.lora_path)), load_file(str(second.lora_path))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_a_run_resumes_where_its_photos_checkpoints_and_base_model_lie_elsewhere(
        dataset: Dataset, data_dir: Path, tmp_path: Path, straight) -> None:
    """As on a cluster node without the app's disk: the same photos, checkpoints and base model at other paths."""
    settings = _quick()
    _stopped_at_6(dataset, data_dir, tmp_path / "here")
    events: list[ev.Event] = []
    photos = tmp_path / "elsewhere" / "photos"
    photos.mkdir(parents=True)
    moved = Dataset(items=tuple(dataclasses.replace(i, image=Path(shutil.copy(i.image, photos / i.image.name)))
                                for i in dataset.items), trigger_word=dataset.trigger_word,
                    resolution=dataset.resolution)
    shutil.copytree(tmp_path / "here", tmp_path / "elsewhere" / "lora")
    second = train_lora(moved, settings, tmp_path / "elsewhere" / "lora", base_model="tiny",
                        data_dir=tmp_path / "elsewhere" / "data", on_event=events.append)  # its own tiny model
    assert any(isinstance(e, ev.Message) and "resuming from the checkpoint at step 6" in e.text for e in events)
    assert second.status == "completed" and second.steps_done == 10
    np.testing.assert_allclose(second.losses, straight.losses, rtol=1e-5)
    # A checkpoint saved before this fingerprint existed (it hashed absolute paths) still resumes where it was made.
    from pipeline.models.base_model import resolve_base_model
    from pipeline.training.trainer import _resume_fingerprints

    state_path = tmp_path / "here" / "checkpoints" / "step-000006" / "training_state.pt"
    state = torch.load(state_path, weights_only=True)
    state["fingerprint"] = _resume_fingerprints(settings, "tiny", resolve_base_model("tiny", data_dir), dataset)[1]
    torch.save(state, state_path)
    events.clear()
    train_lora(dataset, settings, tmp_path / "here", base_model="tiny", data_dir=data_dir, on_event=events.append)
    assert any(isinstance(e, ev.Message) and "resuming from the checkpoint at step 6" in e.text for e in events)
    # Other photos are still other photos: their checkpoints are not resumed.
    other = Dataset(items=moved.items[1:], trigger_word=dataset.trigger_word, resolution=dataset.resolution)
    shutil.copytree(tmp_path / "here", tmp_path / "other")
    events.clear()
    train_lora(other, settings, tmp_path / "other", base_model="tiny", data_dir=data_dir, on_event=events.append)
    assert any(isinstance(e, ev.Message) and "starting afresh" in e.text for e in events)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(dataset: Dataset, data_dir: Path,
                                                                    tmp_path: Path) -> None:
    settings = _quick(steps=12, checkpoint_every=4)
    straight = train_lora(dataset, settings, tmp_path / "straight", base_model="tiny", data_dir=data_dir)
    events: list[ev.Event] = []
    first = train_lora(dataset, settings, tmp_path / "resumed", base_model="tiny", data_dir=data_dir,
                       on_event=events.append, should_stop=_stop_after(events, 8))
    assert first.status == "cancelled" and [c.step for c in first.checkpoints] == [4, 8]
    latest = tmp_path / "resumed" / "checkpoints" / "step-000008"
    (latest / "training_state.pt").write_bytes(b"\0" * 100)  # as a full disk or a kill mid-write leaves it
    events.clear()
    second = train_lora(dataset, settings, tmp_path / "resumed", base_model="tiny", data_dir=data_dir,
                        on_event=events.append)
    assert second.status == "completed" and second.steps_done == 12
    assert any(isinstance(e, ev.Message) and "step 8 cannot be read" in e.text for e in events)
    assert any(isinstance(e, ev.Message) and "resuming from the checkpoint at step 4" in e.text for e in events)
    assert (tmp_path / "resumed" / "checkpoints" / ".corrupt-step-000008").is_dir()  # kept aside, not deleted
    np.testing.assert_allclose(second.losses, straight.losses, rtol=1e-5)


def test_resolution_stages_finish_the_last_quarter_at_the_finish_size() -> None:
    stages = resolution_stages(TrainSettings())
    assert [(s.resolution, s.first, s.last) for s in stages] == [(512, 1, 750), (1024, 751, 1000)]
    assert [(s.resolution, s.first, s.last) for s in resolution_stages(TrainSettings(steps=1))] == [(1024, 1, 1)]
    # A finish size not above the main one means one size throughout; so does 0.
    for settings in (TrainSettings(resolution=1024), TrainSettings(finish_resolution=0)):
        assert [(s.first, s.last) for s in resolution_stages(settings)] == [(1, 1000)]
    with pytest.raises(SettingsError, match="finish_resolution"):
        TrainSettings(finish_resolution=1000).validate()


def test_finish_stage_trains_at_its_size_and_resumes_across_the_switch(dataset: Dataset, data_dir: Path,
                                                                       tmp_path: Path) -> None:
    settings = _quick(finish_resolution=96, sample_every=10, sample_prompts=("a photo of {trigger}",))  # 1-7: 64 px
    events: list[ev.Event] = []
    straight = train_lora(dataset, settings, tmp_path / "straight", base_model="tiny", data_dir=data_dir,
                          on_event=events.append)
    assert straight.status == "completed", straight.error
    messages = [e.text for e in events if isinstance(e, ev.Message)]
    assert "training at 64 px: steps 1-7" in messages and "training at 96 px: steps 8-10" in messages
    [sample] = [e for e in events if isinstance(e, ev.SampleImages)]
    with Image.open(sample.images[0]) as image:
        assert image.size == (96, 96)  # samples show the size being trained
    steps = [e for e in events if isinstance(e, ev.TrainStep)]
    assert [e.resolution for e in steps] == [64] * 7 + [96] * 3
    etas = {e.step: e.eta_seconds for e in steps}
    assert etas[6] > etas[10] > 0  # to a ready model: after the last step its checkpoint's tests and the final part
    assert read_metadata(straight.lora_path)["likeness.resolutions"] == "64,96"

    events = []
    first = train_lora(dataset, settings, tmp_path / "resumed", base_model="tiny", data_dir=data_dir,
                       on_event=events.append, should_stop=_stop_after(events, 9))
    assert first.status == "cancelled" and first.steps_done == 9
    second = train_lora(dataset, settings, tmp_path / "resumed", base_model="tiny", data_dir=data_dir)
    np.testing.assert_allclose(second.losses, straight.losses, rtol=1e-5)

    # More steps move the switch: the checkpoints of the old layout are not resumed.
    events = []
    longer = train_lora(dataset, dataclasses.replace(settings, steps=12), tmp_path / "resumed", base_model="tiny",
                        data_dir=data_dir, on_event=events.append)
    assert longer.status == "completed" and len(longer.losses) == 12
    assert any(isinstance(e, ev.Message) and "starting afresh" in e.text for e in events)


def test_no_finishing_stage_above_the_crop_size(dataset: Dataset, data_dir: Path, tmp_path: Path) -> None:
    events: list[ev.Event] = []
    result = train_lora(dataset, _quick(steps=4, finish_resolution=256), tmp_path, base_model="tiny",
                        data_dir=data_dir, on_event=events.append)
    assert result.status == "completed", result.error
    assert {e.resolution for e in events if isinstance(e, ev.TrainStep)} == {64}
    assert any(isinstance(e, ev.Message) and e.level == "warning" and "crops are 128 px" in e.text for e in events)
    assert json.loads((tmp_path / "settings.json").read_text())["finish_resolution"] == 0


def test_cancel_keeps_the_last_checkpoint(dataset: Dataset, data_dir: Path, tmp_path: Path) -> None:
    events: list[ev.Event] = []
    result = train_lora(dataset, _quick(keep_checkpoints=2), tmp_path, base_model="tiny", data_dir=data_dir,
                        on_event=events.append, should_stop=_stop_after(events, 7))
    assert result.status == "cancelled" and result.steps_done == 7 and len(result.losses) == 7
    assert result.lora_path is None and result.kohya_path is None
    assert [c.step for c in result.checkpoints] == [5, 7]
    assert list_checkpoints(tmp_path) == result.checkpoints
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no half-written checkpoint left
    assert read_metadata(result.checkpoints[-1].path)["likeness.steps"] == "7"


def test_keep_last_k_checkpoints(dataset: Dataset, data_dir: Path, tmp_path: Path) -> None:
    result = train_lora(dataset, _quick(steps=8, checkpoint_every=2, keep_checkpoints=2), tmp_path,
                        base_model="tiny", data_dir=data_dir)
    assert [c.step for c in result.checkpoints] == [6, 8]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000006", "step-000008"]


def test_changed_settings_start_afresh(dataset: Dataset, data_dir: Path, tmp_path: Path) -> None:
    events: list[ev.Event] = []
    train_lora(dataset, _quick(), tmp_path, base_model="tiny", data_dir=data_dir, on_event=events.append,
               should_stop=_stop_after(events, 5))
    messages: list[ev.Event] = []
    result = train_lora(dataset, _quick(learning_rate=5e-4), tmp_path, base_model="tiny", data_dir=data_dir,
                        on_event=messages.append)
    assert result.status == "completed" and len(result.losses) == 10
    assert any(isinstance(m, ev.Message) and "afresh" in m.text for m in messages)


def test_settings_errors_name_the_field(dataset: Dataset, data_dir: Path, tmp_path: Path) -> None:
    for field, value in (("rank", 0), ("learning_rate", 2.0), ("resolution", 100), ("memory_mode", "fp4")):
        with pytest.raises(SettingsError, match=field):
            train_lora(dataset, TrainSettings.quick(**{field: value}), tmp_path, base_model="tiny",
                       data_dir=data_dir)
    with pytest.raises(TrainingError, match="no photos"):
        train_lora(Dataset(items=(), trigger_word=TRIGGER, resolution=64), TrainSettings.quick(), tmp_path,
                   base_model="tiny", data_dir=data_dir)


def test_unloadable_base_model_fails_with_reason(dataset: Dataset, data_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = train_lora(dataset, _quick(), tmp_path, base_model="likeness-test/no-such-flux", data_dir=data_dir)
    assert result.status == "failed" and result.lora_path is None and result.steps_done == 0
    assert "likeness-test/no-such-flux" in result.error


def test_a_device_that_is_not_here_is_a_training_error(dataset: Dataset, data_dir: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrainingError, match="device: 'cuda:1'"):
        train_lora(dataset, _quick(), tmp_path, base_model="tiny", data_dir=data_dir, device="cuda:1")
    result = train_lora(dataset, _quick(steps=2), tmp_path, base_model="tiny", data_dir=data_dir, device="cpu")
    assert result.status == "completed", result.error


def test_missing_photo_is_a_training_error(dataset: Dataset, data_dir: Path, tmp_path: Path) -> None:
    broken = Dataset(items=(DatasetItem(image=tmp_path / "gone.png", caption=TRIGGER, source="gone.png"),),
                     trigger_word=TRIGGER, resolution=64)
    with pytest.raises(TrainingError, match="gone.png"):
        train_lora(broken, _quick(), tmp_path / "out", base_model="tiny", data_dir=data_dir)


def test_phases_and_buckets() -> None:
    assert [phase_for(s, 100) for s in (1, 25, 26, 50, 51, 75, 76, 100)] == [
        PHASES[0], PHASES[0], PHASES[1], PHASES[1], PHASES[2], PHASES[2], PHASES[3], PHASES[3]]
    for resolution in (64, 512, 1024):
        for width, height in aspect_buckets(resolution):
            assert width % 16 == 0 and height % 16 == 0
            assert 0.8 < width * height / resolution**2 < 1.2
    assert bucket_for(1000, 1000, 512) == (512, 512)
    width, height = bucket_for(900, 1200, 512)
    assert height > width
    width, height = bucket_for(1920, 1080, 1024)
    assert abs(width / height - 16 / 9) < 0.05


def test_durations_read_as_people_say_them() -> None:
    assert [ev.duration_text(s) for s in (0, 44.6, 60, 250, 3599, 3660, 7325)] == [
        "0 s", "45 s", "1 min 00 s", "4 min 10 s", "59 min 59 s", "1 h 01 min", "2 h 02 min"]


def test_sigma_sampling_shifts_towards_noise_with_resolution() -> None:
    def mean_sigma(method: str, tokens: int) -> float:
        sigmas = sample_sigmas(20000, method=method, image_tokens=tokens, generator=torch.Generator().manual_seed(0))
        assert bool(((sigmas > 0) & (sigmas < 1)).all())
        return float(sigmas.mean())

    for method in ("logit_normal", "shift"):
        assert mean_sigma(method, 4096) > mean_sigma(method, 1024) > mean_sigma(method, 256) > 0.5
    assert abs(mean_sigma("uniform", 4096) - 0.5) < 0.01


def test_memory_modes_and_batch_size() -> None:
    assert memory.choose_mode("auto", None)[0] == "cpu"
    assert [memory.choose_mode("auto", gb)[0] for gb in (79.0, 23.0, 15.5, 11.0)] == ["bf16", "fp8", "nf4", "offload"]
    assert memory.choose_mode("nf4", 79.0)[0] == "nf4"
    assert memory.auto_batch_size(16, free_gb=None, per_sample_gb=0, fixed_gb=0) == 4
    assert memory.auto_batch_size(3, free_gb=None, per_sample_gb=0, fixed_gb=0) == 1
    assert memory.auto_batch_size(20, free_gb=70.0, per_sample_gb=2.0, fixed_gb=1.0) == 5
    assert memory.auto_batch_size(20, free_gb=10.0, per_sample_gb=6.0, fixed_gb=1.0) == 1
    flux = dict(base_parameters=11_901_408_320, lora_parameters=18_726_912, hidden_size=3072, num_blocks=57,
                image_tokens=1024, text_tokens=512)
    estimates = {mode: memory.estimate_memory(mode, **flux) for mode in memory.MODES}
    assert estimates["bf16"].parameters_gb > estimates["fp8"].parameters_gb > estimates["nf4"].parameters_gb
    assert 21 < estimates["bf16"].parameters_gb < 23
    no_ckpt = memory.estimate_memory("bf16", gradient_checkpointing=False, **flux)
    assert no_ckpt.activations_gb > 5 * estimates["bf16"].activations_gb


def test_fp8_weights_keep_the_output_and_train(data_dir: Path) -> None:
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig

    from pipeline.models.base_model import ensure_tiny_model
    from pipeline.training.trainer import lora_target_modules

    model = FluxTransformer2DModel.from_pretrained(ensure_tiny_model(data_dir), subfolder="transformer",
                                                   dtype=torch.bfloat16)
    model.requires_grad_(False)
    targets = lora_target_modules(model)
    assert len(targets) == 17  # 12 in the double block (attention, both MLPs), 5 in the single block
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets,
                                 init_lora_weights="gaussian"))
    torch.manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 64, dtype=torch.bfloat16), timestep=torch.tensor([0.5]),
                  guidance=torch.tensor([1.0]), pooled_projections=torch.randn(1, 32, dtype=torch.bfloat16),
                  encoder_hidden_states=torch.randn(1, 8, 32, dtype=torch.bfloat16), txt_ids=torch.zeros(8, 3),
                  img_ids=torch.zeros(16, 3), return_dict=False)
    before = model(**inputs)[0].float()
    count = memory.quantize_frozen_linears_fp8(model)
    assert count == len(targets) + 3  # and the adaptive norms' modulation layers: 2 in the double block, 1 single
    stored = [m.parametrizations.weight.original0 for m in model.modules() if hasattr(m, "parametrizations")]
    assert len(stored) == count
    assert all(w.dtype == torch.float8_e4m3fn and not w.requires_grad for w in stored)
    frozen = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad
              and n.startswith(("transformer_blocks", "single_transformer"))]
    assert len(frozen) == count and all(hasattr(m, "parametrizations") for m in frozen)
    after = model(**inputs)[0].float()
    assert (after - before).norm() / before.norm() < 0.1
    after.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="memory modes other than cpu need a CUDA GPU")
@pytest.mark.parametrize("mode", ["bf16", "fp8", "offload"])
def test_each_gpu_memory_mode_trains_the_tiny_model(mode: str, dataset: Dataset, data_dir: Path,
                                                     tmp_path: Path) -> None:
    events: list[ev.Event] = []
    device = f"cuda:{torch.cuda.device_count() - 1}"  # the last GPU: a job queue worker may run on any
    result = train_lora(dataset, _quick(memory_mode=mode), tmp_path, base_model="tiny", data_dir=data_dir,
                        on_event=events.append, device=device)
    assert result.status == "completed", result.error
    assert torch.cuda.max_memory_allocated(device) > 0
    assert all(math.isfinite(x) for x in result.losses) and result.lora_path.is_file()
    assert any(isinstance(e, ev.Message) and e.text.startswith(f"memory mode {mode}") for e in events)


def test_stop_between_two_sample_images(dataset: Dataset, data_dir: Path, tmp_path: Path) -> None:
    """Stop pressed while samples are drawn ends the drawing after the image under way (issue 32: every image of a
    sample, an assessment or a video is a place to stop), not after all of them."""
    def stop() -> bool:  # pressed once the first sample image is on disk
        return any((tmp_path / "samples").glob("step-*.png"))

    prompts = tuple(f"a photo of {{trigger}}, view {i}" for i in range(4))
    result = train_lora(dataset, _quick(steps=4, sample_every=2, sample_prompts=prompts), tmp_path,
                        base_model="tiny", data_dir=data_dir, should_stop=stop)
    assert result.status == "cancelled"
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step-000002-0.png"]

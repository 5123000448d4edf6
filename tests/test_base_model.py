"""The embedded tiny FLUX model: built once, loaded through FluxPipeline.from_pretrained, generates images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models.base_model import (
    BaseModelError,
    default_train_settings,
    ensure_tiny_model,
    explain_load_failure,
    is_tiny,
    load_pipeline,
    resolve_base_model,
)
from pipeline.settings import FLUX_DEV, TINY_MODEL, TrainSettings


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def pipe(data_dir: Path):
    return load_pipeline("tiny", data_dir, device="cpu")


def test_tiny_model_is_a_saved_diffusers_flux_folder(data_dir: Path) -> None:
    folder = ensure_tiny_model(data_dir)
    assert folder == data_dir / "base_models" / "tiny"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    config = json.loads((folder / "transformer" / "config.json").read_text())
    assert config["guidance_embeds"] is True
    assert sum(config["axes_dims_rope"]) == config["attention_head_dim"]
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert vae["latent_channels"] == 16 and len(vae["block_out_channels"]) == 4
    # No leftovers from the atomic build.
    assert [p.name for p in folder.parent.iterdir()] == ["tiny"]


def test_second_call_reuses_the_folder(data_dir: Path) -> None:
    folder = ensure_tiny_model(data_dir)
    weights = next((folder / "transformer").glob("*.safetensors"))
    before = weights.stat().st_mtime_ns
    assert ensure_tiny_model(data_dir) == folder
    assert weights.stat().st_mtime_ns == before


def test_build_is_deterministic(tmp_path: Path, data_dir: Path) -> None:
    a = next((ensure_tiny_model(data_dir) / "transformer").glob("*.safetensors")).read_bytes()
    b = next((ensure_tiny_model(tmp_path) / "transformer").glob("*.safetensors")).read_bytes()
    assert a == b


def test_pipeline_generates_an_image_in_eval_mode(pipe) -> None:
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        assert not module.training
    image = pipe(prompt="a photo of sks person", height=64, width=64, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    assert np.asarray(image).std() > 1.0  # not a blank image


def test_latents_are_8x_smaller_with_16_channels(pipe) -> None:
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(image).latent_dist.mean
    assert latents.shape == (1, 16, 8, 8)


@pytest.mark.parametrize("text", ["a photo of sks person", "ohwx_Zoë, 42 years!", "Müller-Lüdenscheid?"])
def test_any_text_tokenizes_without_unknowns(pipe, text: str) -> None:
    clip_ids = pipe.tokenizer(text).input_ids
    t5_ids = pipe.tokenizer_2(text).input_ids
    assert pipe.tokenizer.unk_token_id not in clip_ids[1:-1]
    assert pipe.tokenizer_2.unk_token_id not in t5_ids
    assert len(t5_ids) > 2


def test_resolve_base_model(data_dir: Path, tmp_path: Path) -> None:
    tiny_path = resolve_base_model("tiny", data_dir)
    assert is_tiny(tiny_path) and is_tiny(TINY_MODEL)
    assert resolve_base_model(None, data_dir) == tiny_path
    assert resolve_base_model(FLUX_DEV, data_dir) == FLUX_DEV
    assert not is_tiny(FLUX_DEV)
    with pytest.raises(BaseModelError, match="model_index.json"):
        resolve_base_model(str(tmp_path), data_dir)
    with pytest.raises(BaseModelError, match="hub id"):
        resolve_base_model("not a model name", data_dir)


def test_unreachable_hub_model_says_how_to_fix(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelError) as info:
        load_pipeline("likeness-test/no-such-flux-model", data_dir, device="cpu")
    message = str(info.value)
    assert "likeness-test/no-such-flux-model" in message
    assert "--base-model" in message


def test_gated_message_mentions_licence_and_token() -> None:
    import httpx
    from huggingface_hub.errors import GatedRepoError

    message = explain_load_failure(FLUX_DEV, OSError("wrapped"))
    assert FLUX_DEV in message
    gated = OSError("cannot load")
    response = httpx.Response(403, request=httpx.Request("GET", f"https://huggingface.co/{FLUX_DEV}"))
    gated.__cause__ = GatedRepoError("Access to model is restricted", response=response)
    message = explain_load_failure(FLUX_DEV, gated)
    assert "licence" in message and "HF_TOKEN" in message


def test_default_train_settings(data_dir: Path) -> None:
    assert default_train_settings("tiny") == TrainSettings.quick()
    assert default_train_settings(str(ensure_tiny_model(data_dir)), steps=10).steps == 10
    assert default_train_settings(FLUX_DEV) == TrainSettings()


def test_loads_in_two_threads_at_once_leave_new_modules_with_real_weights(data_dir: Path) -> None:
    """Loading patches process-wide functions (weights on the meta device, no initialisation) for its length; two
    loads at once, or a load beside a LoRA being added, must not leave a patch behind (a training worker and a
    generation do this in the app). Seen here: every later training failed with "Cannot copy out of meta tensor"."""
    import sys
    import threading

    # What loading patches: Module's registration methods and the init functions torch.nn's modules call.
    patched = [torch.nn.Module, *(m for name, m in list(sys.modules.items()) if name.startswith("torch.nn") and m)]
    originals = [(owner, dict(vars(owner))) for owner in patched]
    errors: list[BaseException] = []

    def load_many() -> None:
        try:
            for _ in range(4):
                load_pipeline("tiny", data_dir, device="cpu")
        except BaseException as exc:  # reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=load_many) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not any(thread.is_alive() for thread in threads), "the loads did not finish (a deadlock?)"
        assert not errors, errors
        left = [f"{getattr(owner, '__name__', owner)}.{name}" for owner, before in originals
                for name, value in before.items() if callable(value) and vars(owner).get(name) is not value]
        assert left == [], left  # a patch left in place
        layer = torch.nn.Linear(4, 4)
        assert layer.weight.device.type == "cpu" and layer.weight.abs().sum() > 0
    finally:  # a failure here must not break every later test of the run
        for owner, before in originals:
            for name, value in before.items():
                if callable(value) and vars(owner).get(name) is not value:
                    setattr(owner, name, value)

"""Base-model families: detection, and FLUX.2 [klein] through the app's own path on the tiny klein built in code.

The tiny klein (pipeline/models/families/tiny_klein.py) has the real classes — Flux2Transformer2DModel,
AutoencoderKLFlux2, Qwen3ForCausalLM — at toy sizes; a run here trains it with ``train_lora``, stops, resumes,
writes both LoRA files, and loads them back with diffusers' own ``Flux2KleinPipeline.load_lora_weights``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import photo_factory
import pytest
import torch
from safetensors.torch import load_file

from pipeline import events as ev
from pipeline.generation.generator import Generator
from pipeline.intake.dataset import Dataset, DatasetItem
from pipeline.models.base_info import family_trained_on, header_names_base
from pipeline.models.base_model import BaseModelError, default_test_generate_settings, resolve_base_model
from pipeline.models.families import FamilyError, FamilyId, family_of
from pipeline.models.families.tiny_klein import TINY_KLEIN_MODEL, ensure_tiny_klein
from pipeline.models.lora_formats import convert_to_kohya, read_metadata
from pipeline.settings import GenerateSettings, SettingsError, TrainSettings
from pipeline.status import Status
from pipeline.training.trainer import list_checkpoints, train_lora

TRIGGER = "ohwx"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    folder = tmp_path_factory.mktemp("photos")
    items = []
    for i, image in enumerate(photo_factory.variants(photo_factory.astronaut(), 4, seed=5)):
        path = folder / f"face-{i}.png"
        image.resize((64, 64) if i % 2 else (64, 80)).save(path)  # two buckets
        items.append(DatasetItem(image=path, caption=f"a photo of {TRIGGER} person", source=path.name))
    return Dataset(items=tuple(items), trigger_word=TRIGGER, resolution=64)


def _settings() -> TrainSettings:
    # lr 1e-2: six steps must change the image visibly; one sample at the end draws with klein's CFG.
    return TrainSettings.quick(steps=6, checkpoint_every=3, keep_checkpoints=3, sample_every=6, learning_rate=1e-2,
                               caption_dropout=0.0, sample_prompts=("a photo of {trigger}",))


@pytest.fixture(scope="module")
def straight(dataset: Dataset, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    events: list[ev.Event] = []
    result = train_lora(dataset, _settings(), tmp_path_factory.mktemp("straight"), base_model=TINY_KLEIN_MODEL,
                        data_dir=data_dir, on_event=events.append)
    return result, events


def _write_index(folder: Path, class_name: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return folder


def test_the_family_comes_from_model_index_names_and_hub_ids(tmp_path: Path) -> None:
    for class_name, expected in (("FluxPipeline", FamilyId.FLUX1), ("Flux2KleinPipeline", FamilyId.FLUX2_KLEIN),
                                 ("Flux2Pipeline", FamilyId.FLUX2_DEV)):
        assert family_of(_write_index(tmp_path / class_name, class_name)).id is expected
    with pytest.raises(FamilyError, match="StableDiffusionXLPipeline.*FluxPipeline"):
        family_of(_write_index(tmp_path / "sdxl", "StableDiffusionXLPipeline"))
    named = {"tiny": FamilyId.FLUX1, "micro": FamilyId.FLUX1, "tiny-klein": FamilyId.FLUX2_KLEIN,
             "black-forest-labs/FLUX.1-schnell": FamilyId.FLUX1,
             "black-forest-labs/FLUX.2-klein-base-4B": FamilyId.FLUX2_KLEIN,
             "black-forest-labs/FLUX.2-dev": FamilyId.FLUX2_DEV,
             "someone/my-flux2-klein-finetune": FamilyId.FLUX2_KLEIN}
    assert {spec: family_of(spec).id for spec in named} == named
    # Each known hub model draws its test images with its own defaults.
    hub = ("black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell", "black-forest-labs/FLUX.2-klein-base-4B")
    defaults = [default_test_generate_settings(spec) for spec in hub]
    assert [(d.steps, d.guidance) for d in defaults] == [(28, 3.5), (4, 0.0), (50, 4.0)]
    # The embedded folders carry their pipeline's class like any diffusers folder.
    folder = ensure_tiny_klein(tmp_path / "data")
    assert resolve_base_model(TINY_KLEIN_MODEL, tmp_path / "data") == str(folder)
    assert family_of(folder).id is FamilyId.FLUX2_KLEIN


def test_flux2_dev_is_refused_with_what_it_needs(dataset: Dataset, tmp_path: Path) -> None:
    folder = _write_index(tmp_path / "flux2-dev", "Flux2Pipeline")
    with pytest.raises(BaseModelError, match="Mistral"):  # where the app starts
        resolve_base_model("black-forest-labs/FLUX.2-dev", tmp_path)
    result = train_lora(dataset, _settings(), tmp_path / "out", base_model=str(folder), data_dir=tmp_path / "data")
    assert result.status == Status.FAILED
    assert "FLUX.2 [dev]" in result.error and "Mistral" in result.error and "klein" in result.error


def test_klein_trains_samples_and_writes_both_files(straight, tmp_path: Path) -> None:
    result, events = straight
    assert result.status == Status.COMPLETED, result.error
    assert result.steps_done == 6 and all(np.isfinite(result.losses))
    keys = load_file(str(result.lora_path)).keys()
    # klein's own layers: SwiGLU feed-forwards and the fused single-block projection
    assert any(".ff.linear_in.lora_A" in k for k in keys) and any("attn.to_qkv_mlp_proj.lora_B" in k for k in keys)
    assert not any("ff.net" in k or "proj_mlp" in k for k in keys)
    metadata = read_metadata(result.kohya_path)
    assert header_names_base(metadata, TINY_KLEIN_MODEL) and metadata["likeness.base_family"] == "flux2-klein"
    samples = [e for e in events if isinstance(e, ev.SampleImages)]
    assert [s.step for s in samples] == [6] and samples[0].images[0].is_file()
    state = torch.load(result.checkpoints[0].path.parent / "training_state.pt", weights_only=True)
    assert state["family"] == "flux2-klein"

    # The best checkpoint's kohya file, as the assessment's choice writes it: the family named in the header, even
    # where the base's name says nothing of it (a relative folder).
    header = read_metadata(result.lora_path)
    assert family_trained_on({**header, "likeness.base_model": "models/my-base"}).id is FamilyId.FLUX2_KLEIN
    converted = convert_to_kohya(result.lora_path, tmp_path / "best_kohya.safetensors",
                                 family_trained_on(header).kohya_layout())
    written, again = load_file(str(result.kohya_path)), load_file(str(converted))
    assert written.keys() == again.keys() and all(torch.equal(written[k], again[k]) for k in written)


def test_a_stopped_klein_run_resumes_exactly_and_refuses_another_family(dataset: Dataset, data_dir: Path,
                                                                        tmp_path: Path, straight) -> None:
    events: list[ev.Event] = []
    folder = tmp_path / "run"
    stopped = train_lora(dataset, _settings(), folder, base_model=TINY_KLEIN_MODEL, data_dir=data_dir,
                         on_event=events.append,
                         should_stop=lambda: any(isinstance(e, ev.TrainStep) and e.step >= 3 for e in events))
    assert stopped.status == Status.CANCELLED and stopped.steps_done == 3

    other = train_lora(dataset, _settings(), folder, base_model="tiny", data_dir=data_dir)
    assert other.status == Status.FAILED
    assert "FLUX.2 [klein]" in other.error and "FLUX.1" in other.error and "cannot resume" in other.error
    assert [c.step for c in list_checkpoints(folder)] == [3]  # kept, not started afresh over

    resumed = train_lora(dataset, _settings(), folder, base_model=TINY_KLEIN_MODEL, data_dir=data_dir)
    assert resumed.status == Status.COMPLETED and resumed.steps_done == 6
    np.testing.assert_allclose(resumed.losses, straight[0].losses, rtol=1e-5)


def test_the_lora_loads_in_diffusers_klein_pipeline_and_kohya_matches(straight, data_dir: Path) -> None:
    from diffusers import Flux2KleinPipeline

    result, _events = straight
    folder = ensure_tiny_klein(data_dir)

    def draw(lora: Path | None, output_type: str = "np") -> np.ndarray:
        pipe = Flux2KleinPipeline.from_pretrained(folder, dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        if lora is not None:
            pipe.load_lora_weights(str(lora))  # diffusers' own reader (its Flux2 kohya converter for kohya keys)
        out = pipe(prompt=f"a photo of {TRIGGER}", height=64, width=64, num_inference_steps=2, guidance_scale=4.0,
                   max_sequence_length=64, generator=torch.Generator().manual_seed(0), output_type=output_type)
        return np.asarray(out.images[0])

    plain, with_lora, with_kohya = draw(None), draw(result.lora_path), draw(result.kohya_path)
    # The LoRA changes the image (six steps on random tiny weights: 3e-4 of the 0-1 range, 2e-3 in the latents),
    # both far above the tolerance the kohya file is held to.
    assert np.abs(with_lora - plain).mean() > 1e-4
    assert np.abs(draw(result.lora_path, "latent") - draw(None, "latent")).mean() > 1e-3
    np.testing.assert_allclose(with_kohya, with_lora, atol=1e-6)  # the kohya file is the same LoRA, exactly read


def test_the_generator_draws_klein_with_cfg_and_a_negative_prompt(straight, data_dir: Path) -> None:
    import dataclasses

    result, _events = straight
    defaults = default_test_generate_settings(TINY_KLEIN_MODEL)
    assert (defaults.width, defaults.steps, defaults.guidance) == (64, 4, 4.0)  # base klein: real CFG
    settings = dataclasses.replace(defaults, prompt=f"a photo of {TRIGGER}", steps=2)
    generator = Generator(TINY_KLEIN_MODEL, data_dir)
    plain = generator.generate(settings)[0]
    negative = generator.generate(dataclasses.replace(settings, negative_prompt="blurry"), lora_path=result.lora_path)
    assert plain.size == (64, 64) and negative[0].size == (64, 64)
    assert np.asarray(plain).tolist() != np.asarray(negative[0]).tolist()
    # Pre-encoded prompts (the morph clip blends two) draw the same image as the prompt itself.
    from pipeline.models.families import family_of_pipeline

    with generator.activated(None) as pipe:
        embeds = family_of_pipeline(pipe).render_embeds(pipe, settings.prompt)
        from_embeds = generator.render(pipe, settings, seed=settings.seed, embeds=embeds)
    assert np.asarray(from_embeds).tolist() == np.asarray(plain).tolist()


def test_train_step_alone_learns_and_repeats_its_step(data_dir: Path) -> None:
    """``train_step`` needs no run: a state and a batch built by hand (klein's 128-channel latents, text states)."""
    from pipeline.models.families import TextEmbedding, family
    from pipeline.training.trainer import Batch, TrainState, add_lora, load_transformer, make_optimizer, train_step

    settings = TrainSettings.quick(learning_rate=1e-2, caption_dropout=0.0)

    def fresh_state() -> TrainState:
        transformer = load_transformer(str(ensure_tiny_klein(data_dir)), "cpu", "cpu")
        torch.manual_seed(0)  # the LoRA's initialisation
        params = add_lora(transformer, rank=4, alpha=4, autocast=False)
        optimizer, schedule = make_optimizer(params, settings, fused=False)
        return TrainState(family=family(FamilyId.FLUX2_KLEIN), settings=settings, transformer=transformer.train(),
                          params=params, optimizer=optimizer, lr_scheduler=schedule, device="cpu", dtype=torch.float32)

    generator = torch.Generator().manual_seed(1)
    text = TextEmbedding(prompt=torch.randn(16, 96, generator=generator))
    batch = Batch(latents=torch.randn(2, 128, 4, 4, generator=generator), texts=(text, text), empty=text)
    state = fresh_state()
    first = train_step(state, batch, step=30)  # past the warm-up: a full-size step
    assert train_step(fresh_state(), batch, step=30) == first  # the same step draws the same noise and sigmas
    losses = [first.loss] + [train_step(state, batch, step=30).loss for _ in range(4)]
    assert losses[-1] < losses[0], losses  # the same noise each time: the LoRA learns it


def test_flux1_prompt_embeddings_draw_what_the_prompt_draws(data_dir: Path) -> None:
    from pipeline.models.families import family_of_pipeline

    generator = Generator("tiny", data_dir)
    settings = GenerateSettings(prompt="a photo of ohwx", steps=2, width=64, height=64)
    with generator.activated(None) as pipe:
        embeds = family_of_pipeline(pipe).render_embeds(pipe, settings.prompt)
        assert [tuple(e.shape) for e in embeds] == [(1, 512, 32), (1, 32)]  # T5 states and the pooled CLIP vector
        from_embeds = generator.render(pipe, settings, seed=0, embeds=embeds)
        from_prompt = generator.render(pipe, settings, seed=0)
    assert np.asarray(from_embeds).tolist() == np.asarray(from_prompt).tolist()


def test_the_estimate_sizes_a_klein_hub_model_by_its_own_transformer(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.settings import FLUX_DEV
    from pipeline.training.estimate import SpeedLog, estimate_training

    monkeypatch.setattr("pipeline.training.estimate.device_name", lambda: ("cuda", "an H100"))
    monkeypatch.setattr("pipeline.training.estimate._mode", lambda settings, variant: "bf16")
    settings = TrainSettings(resolution=512, finish_resolution=0)
    flux, klein4, klein9 = (estimate_training(settings, spec, SpeedLog(tmp_path), embedded=None)
                            for spec in (FLUX_DEV, "black-forest-labs/FLUX.2-klein-base-4B",
                                         "black-forest-labs/FLUX.2-klein-base-9B"))
    # klein base 4B's step is 21.1 of FLUX.1 [dev]'s 45.0 TFLOP; 9B's 46.8
    assert klein4.seconds == pytest.approx(flux.seconds * 21.1 / 45.0)
    assert klein9.seconds == pytest.approx(flux.seconds * 46.8 / 45.0)
    assert "FLUX.2 [klein] base 4B" in klein4.basis and "klein" not in flux.basis
    assert klein4.memory_gb < klein9.memory_gb < flux.memory_gb


def test_the_base_model_table_agrees_with_the_meta_device_bench() -> None:
    """The Settings tab's table of base models: each trainable hub model of each family, sized like
    bench/family_memory.py's meta-device count (bench/results/family_memory_meta.json)."""
    from pipeline.training.estimate import base_model_choices
    from ui.settings import base_models_markdown

    counted = json.loads((Path(__file__).parents[1] / "bench/results/family_memory_meta.json").read_text())["models"]
    names = {"black-forest-labs/FLUX.2-klein-base-4B": "klein-base-4b",
             "black-forest-labs/FLUX.2-klein-base-9B": "klein-base-9b", "black-forest-labs/FLUX.1-dev": "flux1-dev"}
    for resolution in (512, 1024):
        choices = base_model_choices(TrainSettings(resolution=resolution, finish_resolution=0, batch_size=1))
        listed = [c.variant.hub_id for c in choices]  # no distilled klein, no FLUX.2 [dev]
        assert listed == ["black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell", *list(names)[:2]]
        for choice in choices:
            if choice.variant.hub_id not in names:
                continue
            bench = counted[names[choice.variant.hub_id]]["memory_gb"]
            for mode, figure in choice.memory_gb.items():
                row = bench[f"{mode}_{resolution}px"]
                assert figure == pytest.approx(row.get("total_gb_with_own_block_share", row["total_gb"]), abs=0.06)
    table = base_models_markdown(choices, "black-forest-labs/FLUX.2-klein-base-4B")
    assert "FLUX.2 [klein] base 4B **(in use)**" in table and "Apache-2.0" in table


def test_the_settings_tab_lists_the_base_models_for_the_chosen_settings(tmp_path: Path) -> None:
    from pipeline.people.workspaces import Workspaces
    from pipeline.settings import AppSettings
    from ui.people import People
    from ui.settings import _Handlers, form_spec, to_form

    klein = "black-forest-labs/FLUX.2-klein-base-4B"
    workspaces = Workspaces(AppSettings(data_dir=tmp_path / "data", base_model=klein), start_worker=False)
    try:
        defaults = workspaces.local.default_train_settings()
        items = form_spec(defaults)
        handlers = _Handlers(People(workspaces, per_person=False), [i.name for i in items], defaults)
        values = {i.name: to_form(handlers.fields[i.name], getattr(defaults, i.name)) for i in items}
        values["rank"] = 16  # the meta-device table's LoRA (klein's default is 32)
        at_512 = handlers.base_models_text(None, *(values | {"finish_resolution": 0}).values())
        at_1024 = handlers.base_models_text(None, *(values | {"resolution": 1024, "finish_resolution": 0}).values())
    finally:
        workspaces.close()
    assert f"In use: **{klein}**" in at_512 and "FLUX.2 [klein] base 4B **(in use)**" in at_512
    assert "| 8 / 4.4 / 2.8 / 1.6 GB |" in at_512 and "| 8.9 / 5.3 / 3.7 / 2.5 GB |" in at_1024  # klein base 4B


def test_the_cards_load_their_base_with_its_family_pipeline(straight, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import re
    import shutil

    from huggingface_hub import ModelCard

    from pipeline.library.catalog import Library
    from pipeline.library.modelcard import model_card

    library = Library(tmp_path / "library")
    hub = model_card(library.create("Anna", "black-forest-labs/FLUX.2-klein-base-4B", {"steps": 1000}))
    assert ModelCard(hub).data.license == "apache-2.0" and "from diffusers import Flux2KleinPipeline" in hub
    assert "num_inference_steps=50, guidance_scale=4)" in hub

    # The tiny klein's snippet runs as written, inside the project, next to the download's diffusers folder.
    card = model_card(library.create("Ben", TINY_KLEIN_MODEL, {"steps": 6}))
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert "ensure_tiny_klein" in code and "Flux2KleinPipeline.from_pretrained" in code
    (tmp_path / "download" / "diffusers").mkdir(parents=True)
    shutil.copy(straight[0].lora_path, tmp_path / "download" / "diffusers" / "pytorch_lora_weights.safetensors")
    monkeypatch.chdir(tmp_path / "download")
    exec(compile(code, "card", "exec"), {})
    assert (tmp_path / "download" / "me.png").is_file()


def test_the_command_line_trains_assesses_and_lists_a_tiny_klein_model(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    folder = tmp_path / "photos"
    photo_factory.portrait_set(folder, 8)
    data = ["--data-dir", str(tmp_path / "data"), "--base-model", TINY_KLEIN_MODEL]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline", *args, *data], cwd=Path(__file__).parents[1],
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600)

    trained = cli("train", str(folder), "--name", "klein", "--steps", "4", "--anyway", "--json")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    record = json.loads(trained.stdout)
    assert record["status"] == "ready" and record["scores"]["verdict"]  # trained, assessed
    assert read_metadata(Path(record["kohya_path"]))["likeness.base_family"] == "flux2-klein"  # exported
    listed = json.loads(cli("models", "--json").stdout)
    assert [(m["name"], m["family"]) for m in listed] == [("klein", "flux2-klein")]


def test_klein_refuses_the_modulation_setting_before_anything_runs(dataset: Dataset, tmp_path: Path) -> None:
    """klein's three shared modulation layers have no kohya/ComfyUI name: a run would train, then fail writing its
    files. Refused up front, by the training and by the Workflow before a job is queued."""
    settings = dataclasses.replace(_settings(), lora_modulation=True)
    with pytest.raises(SettingsError, match="lora_modulation"):
        train_lora(dataset, settings, tmp_path / "out", base_model=TINY_KLEIN_MODEL, data_dir=tmp_path / "data")
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()
    family_of("tiny").check_settings(settings)  # FLUX.1 names them (kohya's *_mod_lin)

    from pipeline.settings import AppSettings
    from pipeline.workflow import Workflow

    workflow = Workflow(AppSettings(data_dir=tmp_path / "app", base_model=TINY_KLEIN_MODEL))
    try:
        with pytest.raises(SettingsError, match="lora_modulation"):
            workflow.start_training(settings)
        assert workflow.jobs.list() == [] and workflow.library.list() == []
    finally:
        workflow.close()


def test_a_text_encoder_too_big_for_the_free_memory_streams_from_host_ram() -> None:
    """fp8 is chosen for klein base 4B from 7.4 GB free by the training step's needs, but its Qwen3-4B is 7.5 GB in
    bf16 while the captions are encoded: below about 9.5 GB free it streams (klein 9B's 15.3 GB the same); FLUX.1-dev's
    encoders (9.1 GB) stay whole from its fp8 threshold, 20 GB, as before."""
    from pipeline.models.families.flux1 import FLUX1_DEV
    from pipeline.models.families.flux2 import KLEIN_BASE_4B, KLEIN_BASE_9B
    from pipeline.training.trainer import _encoders_exceed

    assert _encoders_exceed(KLEIN_BASE_4B, 8.0) and not _encoders_exceed(KLEIN_BASE_4B, 10.0)
    assert _encoders_exceed(KLEIN_BASE_9B, 16.0) and not _encoders_exceed(KLEIN_BASE_9B, 18.0)
    assert not _encoders_exceed(FLUX1_DEV, 20.0) and _encoders_exceed(FLUX1_DEV, 10.0)
    assert not _encoders_exceed(None, 4.0) and not _encoders_exceed(KLEIN_BASE_4B, None)  # tiny models; the CPU

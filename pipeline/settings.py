"""Settings for each stage: one frozen dataclass per stage, validated with errors that name the field.

Every run saves its settings as JSON beside its outputs, so a model can always say how it was made.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

TINY_MODEL = "tiny"
MICRO_MODEL = "micro"
FLUX_DEV = "black-forest-labs/FLUX.1-dev"


class SettingsError(ValueError):
    """A setting has a value the pipeline cannot use; the message names the field."""


def _check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise SettingsError(f"{field_name}: {message}")


@dataclass(frozen=True)
class IntakeSettings:
    """Limits applied when photos are uploaded (before any classification)."""

    max_photos: int = 40  # more than the 15–20 we train on, so the selector has room to choose
    max_file_mb: float = 40.0  # a 12 MP JPEG is ~5 MB, a 50 MP RAW-converted PNG ~60 MB
    max_pixels: int = 90_000_000  # above ~90 MP we refuse: decompression bombs and needless memory
    min_side: int = 256  # smaller than this cannot give a usable face crop at any resolution

    def validate(self) -> IntakeSettings:
        _check(self.max_photos >= 1, "max_photos", f"must be at least 1, got {self.max_photos}")
        _check(self.max_file_mb > 0, "max_file_mb", f"must be positive, got {self.max_file_mb}")
        _check(self.max_pixels > 0, "max_pixels", f"must be positive, got {self.max_pixels}")
        return self


@dataclass(frozen=True)
class ClassifySettings:
    """Thresholds of the photo classifier. The README documents each and why."""

    detect_max_side: int = 640  # MTCNN runs on a copy this size: 0.07 s instead of ~2 s on 12 MP
    min_face_confidence: float = 0.90
    min_face_fraction: float = 0.015  # face box area / image area: half-body shots are ~0.03, keep them
    max_yaw_degrees: float = 45.0
    min_eye_brightness: float = 0.45  # eye patches' luma / the face's: bare eyes 0.90–1.04, sunglasses 0.14–0.35
    max_edge_blur: float = 1.88  # face edge width (Gaussian sigma, px) with the face at 128 px; see quality.edge_blur
    min_mean_luma: float = 62.0
    max_mean_luma: float = 205.0
    max_clipped_fraction: float = 0.25
    min_face_pixels: int = 128  # face box side in original pixels
    duplicate_hash_distance: int = 6  # perceptual-hash Hamming distance (64-bit hashes)
    identity_threshold: float = 0.57  # dlib embedding distance to the set's consensus
    target_min: int = 15
    target_max: int = 20
    training_resolution: int = 512
    # Added with the classifier (issue 4); the README's table explains each.
    analysis_max_side: int = 1600  # photos are decoded to this size (JPEG draft), not in full
    detect_fallback_side: int = 1600  # second, finer MTCNN look when nothing was found at detect_max_side
    min_border_margin: float = 0.02  # face box gap to the frame edge, in face sizes; less: face_cut_off
    second_face_ratio: float = 0.35  # another face at least this size (vs the main face) makes multiple_faces
    crop_factor: float = 2.2  # square crop side / face side: head, hair and some shoulders
    min_identity_photos: int = 3  # below this there is no consensus to compare with

    def validate(self) -> ClassifySettings:
        _check(0 < self.min_face_confidence <= 1, "min_face_confidence", "must be in (0, 1]")
        _check(0 < self.min_face_fraction < 1, "min_face_fraction", "must be in (0, 1)")
        _check(1 <= self.target_min <= self.target_max, "target_min", "must be between 1 and target_max")
        return self


# Upper bounds that keep one request from holding the only GPU for weeks (10^12 steps were accepted before).
MAX_STEPS = 100_000
MAX_BATCH = 64
MAX_RANK = 256
# Every image a training draws is bounded too: a checkpoint's assessment draws one test image per test prompt (10 000
# prompts held the slot for hours and ignored Stop), each checkpoint is assessed, and each sample draws every sample
# prompt. On FLUX.1-dev an image costs seconds.
MAX_TEST_PROMPTS = 32  # 4x the built-in set of 8
MAX_SAMPLE_PROMPTS = 8
MAX_PROMPT_CHARS = 1000  # T5 reads ~512 tokens (about 2000 characters); CLIP 77 tokens
MAX_CHECKPOINTS = 400  # steps / checkpoint_every, each saved and assessed: MAX_STEPS at the default interval
MAX_SAMPLE_IMAGES = 1000  # steps / sample_every x sample prompts: MAX_STEPS at the default interval and prompts
MICRO_STEPS = 5000  # the micro model's default training length (see TrainSettings.micro)
MICRO_RESOLUTION = 96  # the size the micro model draws at (its identity survives the VAE at 96 px, not at 64: README)

# The values a choice setting takes: validate() accepts these, the Settings tab offers them.
# The modes a GPU trains in (memory.py sizes each; auto picks one of them), most memory first.
GPU_MEMORY_MODES = ("bf16", "fp8", "nf4", "offload")
MEMORY_MODES = ("auto", *GPU_MEMORY_MODES)
OPTIMIZERS = ("adamw", "adamw8bit")
LR_SCHEDULES = ("constant", "cosine")
TIMESTEP_SAMPLINGS = ("logit_normal", "shift", "uniform")
# The sizes the Settings tab offers (with the base model's default); any multiple of 16 in 32..2048 is valid.
RESOLUTIONS = (512, 768, 1024)
FINISH_RESOLUTIONS = (0, 768, 1024)  # 0: none, the resolution throughout


class Group(StrEnum):
    """Where a setting shows: on the Settings tab, in its Advanced section, or only in code and saved runs."""

    BASIC = "basic"
    ADVANCED = "advanced"
    HIDDEN = "hidden"


class Widget(StrEnum):
    """How a form shows a setting."""

    TEXT = "text"  # one line
    LINES = "lines"  # a tuple of text, one item per line
    NUMBER = "number"  # whole numbers for an int field
    DROPDOWN = "dropdown"
    SLIDER = "slider"
    CHECKBOX = "checkbox"


@dataclass(frozen=True)
class Setting:
    """A setting's declaration, kept in its dataclass field's metadata (see ``setting``): what the Settings tab, the
    CLI and the model card say about it. The value's type and default are the field's."""

    label: str
    group: Group = Group.HIDDEN  # HIDDEN: neither on the form nor a CLI option
    widget: Widget = Widget.NUMBER
    info: str = ""  # the help under the form's label and the CLI option's help (FLUX.1-dev's advice)
    # The info on an embedded base (tiny, micro), where FLUX.1-dev's sizes are no advice; {kind} and {default} (the
    # base's default) are filled in. Empty: ``info`` on every base.
    embedded_info: str = ""
    row: int = 0  # the row of its group on the form (a row of one component takes the full width)
    choices: tuple = ()
    closed: bool = True  # only the choices are valid (validate() says so); False: they are suggestions
    choice_names: tuple[tuple[Any, str], ...] = ()  # (value, what the form shows) where not str(value)
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    lines: int = 3  # the text box's height for Widget.LINES
    estimate: bool = False  # the time estimate depends on it: a change computes it again
    flag: str = ""  # the CLI option; empty: --the-field-name
    cli_required: bool = False
    card: str = ""  # its name in the model card's table; empty: not on the card
    unit: str = ""  # after the value on the card
    card_if: Callable[[Any], bool] | None = None  # on the card only when this holds for the run's settings

    def info_for(self, embedded: str | None, default: Any) -> str:
        """The help on a base: ``embedded`` is "tiny" or "micro" for the embedded models, None for FLUX.1-dev;
        ``default`` is that base's default value."""
        if embedded and self.embedded_info:
            return self.embedded_info.format(kind=embedded, default=default)
        return self.info

    def shows(self, choice: Any) -> str:
        return dict(self.choice_names).get(choice, str(choice))


def setting(default: Any, label: str, group: Group = Group.HIDDEN, widget: Widget = Widget.NUMBER,
            **declaration: Any) -> Any:
    """A dataclass field with ``default`` that declares itself (``Setting``) in its metadata."""
    declared = Setting(label, group, widget, **declaration)
    return field(default=default, metadata={"setting": declared})


def declaration(settings_field: dataclasses.Field) -> Setting:
    """The field's declaration; a field declared without one is hidden, labelled by its name."""
    return settings_field.metadata.get("setting") or Setting(settings_field.name.replace("_", " "))


def declared_fields(cls: type, *groups: Group) -> list[dataclasses.Field]:
    """The fields of ``cls`` in ``groups``, group by group, each in field order (the form's order)."""
    fields = dataclasses.fields(cls)
    return [f for group in groups for f in fields if declaration(f).group == group]


@dataclass(frozen=True)
class TrainSettings:
    """One LoRA training run. Defaults are for FLUX.1-dev on a face (see README: where each comes from).

    Each field declares itself (``setting``): the Settings tab, the CLI's ``train`` options and the model card are
    built from these declarations, so a new setting is one field here (and a test)."""

    name: str = setting("my-likeness", "Model name", Group.BASIC, Widget.TEXT, cli_required=True,
                        info="how the model is listed; the trigger word, not the name, brings you in")
    trigger_word: str = setting("", "Trigger word (empty: generated)", Group.ADVANCED, Widget.TEXT)
    steps: int = setting(1000, "Training steps", Group.BASIC, minimum=1, estimate=True, card="steps",
                         info="more steps learn the face more closely; too many copy the photos' clothes and light. "
                              "The best checkpoint is chosen by measurement")
    learning_rate: float = setting(1e-4, "Learning rate", Group.BASIC, flag="--lr", card="learning rate",
                                   info="how big each step is: higher learns faster but can overshoot (noisy loss, "
                                        "burnt images)")
    batch_size: int = setting(0, "Batch size (0 = automatic from photos and memory)", Group.BASIC, row=1,
                              minimum=0, estimate=True,
                              info="photos per step; automatic fits the GPU and the photo count")
    resolution: int = setting(512, "Resolution (px)", Group.BASIC, Widget.DROPDOWN, row=1,
                              choices=RESOLUTIONS, closed=False, estimate=True, card="resolution",
                              info="the size most steps train at: 512 learns a face fast, 1024 adds detail",
                              embedded_info="the {kind} model draws at {default} px: train at {default} (larger "
                                            "sizes only slow it down; 512–1024 are for FLUX.1-dev)")
    # The last quarter of the steps at this size when it is above ``resolution`` (0: ``resolution`` throughout):
    # most of the learning at the cheap size, then the detail FLUX.1-dev is used at.
    finish_resolution: int = setting(1024, "Finish at (px): the last quarter of the steps, if above the resolution",
                                     Group.BASIC, Widget.DROPDOWN, row=1, choices=FINISH_RESOLUTIONS,
                                     closed=False, choice_names=((0, "none"),), estimate=True,
                                     card="last quarter of the steps at", unit="px",
                                     card_if=lambda s: len(s.resolutions) > 1)
    rank: int = setting(16, "LoRA rank", Group.ADVANCED, minimum=1, estimate=True, card="rank",
                        info="capacity of the LoRA: 16 holds a face; more learns faster, overfits sooner",
                        embedded_info="capacity of the LoRA: {default} is this model's default; more learns faster, "
                                      "overfits sooner")
    alpha: float = setting(16.0, "LoRA alpha", Group.ADVANCED, card="alpha",
                           info="scales the LoRA's effect (alpha / rank); equal to the rank is neutral")
    # Also train each block's adaptive-norm modulation (the micro model's default: at 128 wide it is a large share
    # of what sets a face; on FLUX.1-dev it would add ~20 M parameters to a rank-16 LoRA).
    lora_modulation: bool = setting(False, "Train the blocks' adaptive-norm modulation too", widget=Widget.CHECKBOX)
    # Also train the transformer's layers outside the blocks: the image, text, time and guidance embedders and the
    # final norm and projection (kohya: img_in, txt_in, time_in, vector_in, guidance_in, final_layer). The micro
    # model's default: there it took the astronaut's recognised test images from 1 to 5 of 8 (README: the micro base
    # model).
    lora_outer_layers: bool = setting(False, "Train the layers outside the blocks too", widget=Widget.CHECKBOX)
    seed: int = setting(42, "Seed", Group.ADVANCED, info="the same seed, photos and settings train the same LoRA")
    memory_mode: str = setting("auto", "Memory mode", Group.ADVANCED, Widget.DROPDOWN, row=1,
                               choices=MEMORY_MODES, estimate=True,
                               info="how the base model is held: auto picks by free GPU memory and the model's "
                                    "size (FLUX.1-dev: bf16 ≥ 40 GB, fp8 24 GB, nf4 16 GB, offload 12 GB; klein base "
                                    "4B: bf16 on 16 GB)",
                               embedded_info="the {kind} model trains on the CPU in float32 whatever is chosen here: "
                                             "memory modes are for FLUX.1-dev on a GPU")
    optimizer: str = setting("adamw", "Optimizer (8-bit needs bitsandbytes and a GPU)", Group.ADVANCED,
                             Widget.DROPDOWN, row=1, choices=OPTIMIZERS, estimate=True,
                             info="8-bit keeps the optimizer's memory 4x smaller")
    warmup_steps: int = setting(50, "Warm-up steps", info="steps over which the learning rate rises from 0")
    lr_schedule: str = setting("constant", "Learning-rate schedule", widget=Widget.DROPDOWN, choices=LR_SCHEDULES)
    max_grad_norm: float = setting(1.0, "Gradient clipping (largest gradient norm)")
    timestep_sampling: str = setting("logit_normal", "Timestep sampling", widget=Widget.DROPDOWN,
                                     choices=TIMESTEP_SAMPLINGS)
    guidance: float = setting(1.0, "Guidance while training", info="FLUX.1-dev's guidance embedding while training")
    gradient_checkpointing: bool = setting(True, "Gradient checkpointing", widget=Widget.CHECKBOX,
                                           info="recompute activations: less memory, slower steps")
    checkpoint_every: int = setting(250, "Checkpoint every N steps", Group.ADVANCED, row=1, minimum=1,
                                    estimate=True,
                                    info="each checkpoint is tested for likeness; Resume starts there")
    keep_checkpoints: int = setting(3, "Checkpoints kept on disk")
    sample_every: int = setting(250, "Sample images every N steps", Group.ADVANCED, row=1, minimum=1, estimate=True,
                                info="pictures on the Training tab as the face appears")
    caption_dropout: float = setting(0.05, "Caption dropout", Group.ADVANCED, Widget.SLIDER, row=1, minimum=0,
                                     maximum=0.5, step=0.01,
                                     info="share of steps trained without a caption: the face then comes with the "
                                          "trigger word less exclusively")
    sample_prompts: tuple[str, ...] = setting(
        ("a portrait photo of {trigger}", "{trigger} smiling, outdoors, natural light"),
        "Sample prompts ({trigger} = the trigger word)", widget=Widget.LINES)
    # The assessment's prompts; empty: generation.DEFAULT_TEST_PROMPTS.
    test_prompts: tuple[str, ...] = setting(
        (), "Test prompts for the assessment, one per line ({trigger} = the trigger word); empty: the built-in "
            "portrait, style, setting and expression set", Group.ADVANCED, Widget.LINES, row=2, estimate=True)

    def validate(self) -> TrainSettings:
        _check(bool(self.name.strip()), "name", "must not be empty")
        _check(1 <= self.steps <= MAX_STEPS, "steps", f"must be between 1 and {MAX_STEPS}, got {self.steps}")
        _check(0 < self.learning_rate < 1, "learning_rate", f"must be in (0, 1), got {self.learning_rate}")
        _check(0 <= self.batch_size <= MAX_BATCH, "batch_size",
               f"must be 0 (automatic) or up to {MAX_BATCH}, got {self.batch_size}")
        _check(
            self.resolution % 16 == 0 and 32 <= self.resolution <= 2048,
            "resolution",
            f"must be a multiple of 16 between 32 and 2048, got {self.resolution}",
        )
        _check(
            self.finish_resolution == 0 or (self.finish_resolution % 16 == 0 and 32 <= self.finish_resolution <= 2048),
            "finish_resolution",
            f"must be 0 (none) or a multiple of 16 between 32 and 2048, got {self.finish_resolution}",
        )
        _check(1 <= self.rank <= MAX_RANK, "rank", f"must be between 1 and {MAX_RANK}, got {self.rank}")
        _check(0 < self.alpha <= 4 * MAX_RANK, "alpha", f"must be in (0, {4 * MAX_RANK}], got {self.alpha}")
        _check(0 <= self.seed < 2**32, "seed", f"must be between 0 and 2**32 - 1, got {self.seed}")
        _check(0 <= self.warmup_steps <= MAX_STEPS, "warmup_steps",
               f"must be between 0 and {MAX_STEPS}, got {self.warmup_steps}")
        _check(0 < self.max_grad_norm <= 1000, "max_grad_norm", f"must be in (0, 1000], got {self.max_grad_norm}")
        _check(0 <= self.guidance <= 30, "guidance", f"must be between 0 and 30, got {self.guidance}")
        _check(self.optimizer in OPTIMIZERS, "optimizer", f"unknown optimizer {self.optimizer!r}")
        _check(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"unknown schedule {self.lr_schedule!r}")
        _check(self.timestep_sampling in TIMESTEP_SAMPLINGS, "timestep_sampling",
               f"unknown sampling {self.timestep_sampling!r}")
        _check(self.memory_mode in MEMORY_MODES, "memory_mode", f"unknown memory mode {self.memory_mode!r}")
        _check(0 <= self.caption_dropout < 1, "caption_dropout", "must be in [0, 1)")
        _check(1 <= self.checkpoint_every <= MAX_STEPS, "checkpoint_every",
               f"must be between 1 and {MAX_STEPS}, got {self.checkpoint_every}")
        _check(self.steps // self.checkpoint_every <= MAX_CHECKPOINTS, "checkpoint_every",
               f"{self.checkpoint_every} makes {self.steps // self.checkpoint_every} checkpoints of {self.steps} "
               f"steps, each saved and assessed; use at least {-(-self.steps // MAX_CHECKPOINTS)} (at most "
               f"{MAX_CHECKPOINTS} checkpoints)")
        _check(1 <= self.keep_checkpoints <= 50, "keep_checkpoints", "must be between 1 and 50")
        _check(1 <= self.sample_every <= MAX_STEPS, "sample_every",
               f"must be between 1 and {MAX_STEPS}, got {self.sample_every}")
        self._check_prompts("test_prompts", self.test_prompts, MAX_TEST_PROMPTS)
        self._check_prompts("sample_prompts", self.sample_prompts, MAX_SAMPLE_PROMPTS)
        samples = self.steps // self.sample_every * len(self.sample_prompts)
        _check(samples <= MAX_SAMPLE_IMAGES, "sample_every",
               f"{self.sample_every} with {len(self.sample_prompts)} sample prompt(s) draws {samples} sample images "
               f"in {self.steps} steps; at most {MAX_SAMPLE_IMAGES}: sample less often or with fewer prompts")
        return self

    @staticmethod
    def _check_prompts(name: str, prompts: tuple[str, ...], most: int) -> None:
        _check(isinstance(prompts, tuple | list), name, f"must be a list of prompts, got {type(prompts).__name__}")
        _check(len(prompts) <= most, name, f"at most {most} prompts (each draws an image), got {len(prompts)}")
        for index, prompt in enumerate(prompts):
            _check(isinstance(prompt, str), name, f"prompt {index + 1} must be text, got {type(prompt).__name__}")
            _check(len(prompt) <= MAX_PROMPT_CHARS, name,
                   f"prompt {index + 1} has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Every resolution the run trains at, in order."""
        if self.finish_resolution > self.resolution:
            return self.resolution, self.finish_resolution
        return (self.resolution,)

    @classmethod
    def micro(cls, **overrides: Any) -> TrainSettings:
        """Settings for the embedded micro model: 96 px, a LoRA as wide as the model (rank 128 of 128, with the
        blocks' modulation and the layers outside the blocks), trained at the guidance it generates with; minutes on a
        CPU. Measured in bench/micro_likeness.py (README: the micro base model)."""
        base = dict(steps=MICRO_STEPS, resolution=MICRO_RESOLUTION, finish_resolution=0, rank=128, alpha=128.0,
                    lora_modulation=True, lora_outer_layers=True, learning_rate=1e-3, guidance=3.5, warmup_steps=50,
                    checkpoint_every=MICRO_STEPS // 5, sample_every=MICRO_STEPS // 5, gradient_checkpointing=False)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def quick(cls, **overrides: Any) -> TrainSettings:
        """Settings for the embedded tiny model: 50 steps at 64 px, seconds on a CPU."""
        base = dict(steps=50, resolution=64, finish_resolution=0, rank=4, alpha=4.0, learning_rate=1e-3,
                    warmup_steps=5, checkpoint_every=25, sample_every=25, gradient_checkpointing=False)
        base.update(overrides)
        return cls(**base)


@dataclass(frozen=True)
class GenerateSettings:
    """One generation request in the playground."""

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 28
    guidance: float = 3.5
    width: int = 512
    height: int = 512
    lora_scale: float = 1.0
    num_images: int = 1

    def validate(self) -> GenerateSettings:
        _check(bool(self.prompt.strip()), "prompt", "must not be empty")
        _check(1 <= self.steps <= 100, "steps", f"must be between 1 and 100, got {self.steps}")
        _check(1 <= self.num_images <= 8, "num_images", f"must be between 1 and 8, got {self.num_images}")
        _check(0 <= self.guidance <= 30, "guidance", f"must be between 0 and 30, got {self.guidance}")
        _check(-4 <= self.lora_scale <= 4, "lora_scale", f"must be between -4 and 4, got {self.lora_scale}")
        _check(0 <= self.seed < 2**32, "seed", f"must be between 0 and 2**32 - 1, got {self.seed}")
        for name in ("width", "height"):
            value = getattr(self, name)
            _check(value % 16 == 0 and 32 <= value <= 2048, name, f"must be a multiple of 16 in 32..2048, got {value}")
        return self


@dataclass(frozen=True)
class VideoSettings:
    """A short clip along a smooth path between two seeds' starting noise (and, if given, two prompts)."""

    prompt: str = ""
    prompt_b: str = ""  # empty: the same prompt all along
    frames: int = 16
    fps: int = 8  # the clip lasts frames / fps seconds
    seed_a: int = 0
    seed_b: int = 1
    width: int = 512
    height: int = 512
    steps: int = 28
    guidance: float = 3.5
    lora_scale: float = 1.0
    loop: bool = False  # 0 → 1 → back to 0, for a seamless loop

    MAX_FRAMES = 240  # 30 s at 8 fps; more is a long wait for a LoRA preview

    def still(self) -> GenerateSettings:
        """The generation settings of frame 0 (the still image ``prompt`` at ``seed_a`` gives)."""
        return GenerateSettings(prompt=self.prompt, seed=self.seed_a, steps=self.steps, guidance=self.guidance,
                                width=self.width, height=self.height, lora_scale=self.lora_scale)

    def validate(self) -> VideoSettings:
        self.still().validate()
        _check(2 <= self.frames <= self.MAX_FRAMES, "frames",
               f"must be between 2 and {self.MAX_FRAMES}, got {self.frames}")
        _check(1 <= self.fps <= 60, "fps", f"must be between 1 and 60, got {self.fps}")
        return self


@dataclass(frozen=True)
class ImageToVideoSettings:
    """A clip a video model animates from a still (``pipeline.video.i2v``): the motion prompt and the clip's length.
    Sizes come from the still (rounded to what the model takes); frames are made in the count the model needs
    (4k+1 for Wan, 8k+1 for LTX-Video) and the first ``frames`` kept."""

    prompt: str = ""  # the motion: "turns to the camera and smiles"
    frames: int = 13
    fps: int = 8
    steps: int = 4
    guidance: float = 1.0  # 1: no classifier-free guidance (one transformer pass per step)
    seed: int = 0
    negative_prompt: str = ""

    MAX_FRAMES = 241  # 10 s at 24 fps: Wan 2.2 TI2V's 121 frames and LTX-Video's 161 fit

    def validate(self) -> ImageToVideoSettings:
        _check(bool(self.prompt.strip()), "prompt", "describe the motion, e.g. 'turns to the camera and smiles'")
        _check(2 <= self.frames <= self.MAX_FRAMES, "frames",
               f"must be between 2 and {self.MAX_FRAMES}, got {self.frames}")
        _check(1 <= self.fps <= 60, "fps", f"must be between 1 and 60, got {self.fps}")
        _check(1 <= self.steps <= 200, "steps", f"must be between 1 and 200, got {self.steps}")
        _check(0 <= self.guidance <= 20, "guidance", f"must be between 0 and 20, got {self.guidance}")
        return self


@dataclass(frozen=True)
class SmtpSettings:
    """Where to send the 'training finished' e-mail. Empty host: no e-mail."""

    host: str = ""
    port: int = 587
    username: str = ""
    password: str = field(default="", repr=False)  # never logged or shown
    sender: str = "likeness@localhost"
    recipient: str = ""
    starttls: bool = True
    use_ssl: bool = False  # implicit TLS from the first byte (usually port 465) instead of STARTTLS
    ca_file: str = ""  # extra CA bundle to trust (a self-hosted mail server's own certificate)
    timeout: float = 30.0  # seconds to wait for the mail server

    @property
    def enabled(self) -> bool:
        return bool(self.host and self.recipient)


@dataclass(frozen=True)
class AppSettings:
    """Where the app keeps its data and which base model it trains on."""

    data_dir: Path = Path("data")
    # "micro", "tiny", "tiny-klein", a hub id, a local diffusers folder, or "auto": resolved once where the app starts
    # (``Workspaces``) into the model that fits the GPU's free memory (pipeline/models/base_choice.py).
    base_model: str = MICRO_MODEL
    # Videos: "auto" (the default: a video model by the GPU's free memory, a morph without one;
    # ``pipeline.video.choice``), "morph" or "" (a morph between stills), "tiny" (the tiny random image-to-video
    # model, built in code), or a Wan 2.2 TI2V / Wan I2V / LTX-Video hub id or local diffusers folder.
    video_model: str = "auto"
    smtp: SmtpSettings = SmtpSettings()
    # Free disk space a training needs before it starts (checkpoints, LoRAs, assessment images); 0: by base model,
    # 0.2 GB for the embedded models and 2 GB for FLUX.1-dev (rank-16 checkpoints with optimizer state ~0.5 GB each).
    min_free_disk_gb: float = 0.0
    # Fair sharing when several people use one app (a Space, a shared link): 0 means no limit. The app sets
    # trainings_per_person to 1 when it gives each person a workspace.
    trainings_per_person: int = 0  # trainings of one person that may wait or run at once
    disk_per_person_gb: float = 0.0  # a person's photos, models and outputs; uploads and trainings stop above it
    max_workspaces: int = 1000  # workspaces on disk (empty anonymous ones are pruned first); 0: no limit
    # Trainings run in this process ("") or as tasks on a Ray cluster: "auto" (the cluster this machine joined
    # with `ray start`) or the head's address ("10.0.0.5:6379"). The data dir must be on a disk every node sees.
    ray_address: str = ""

    def validate(self) -> AppSettings:
        _check(self.trainings_per_person >= 0, "trainings_per_person", "must be 0 (no limit) or more")
        _check(self.disk_per_person_gb >= 0, "disk_per_person_gb", "must be 0 (no limit) or more")
        _check(self.max_workspaces >= 0, "max_workspaces", "must be 0 (no limit) or more")
        _check(self.min_free_disk_gb >= 0, "min_free_disk_gb", "must be 0 (by base model) or more")
        return self


def to_json(settings: Any) -> str:
    """Settings as JSON (tuples become lists, paths strings; passwords are left out)."""
    data = dataclasses.asdict(settings)
    data.pop("password", None)
    return json.dumps(data, indent=2, default=str)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a settings dataclass from a dict, ignoring unknown keys (older/newer saved runs)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
    return cls(**kwargs)


def coerce(cls: type, data: dict[str, Any]) -> Any:
    """Build a settings dataclass from loosely typed values (a form, an API call), each converted to its field's
    type; a missing or unconvertible value is a SettingsError that names the field instead of a TypeError deep in
    the pipeline. Optional text fields may be empty (None counts as "")."""
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
                for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in defaults:
            raise SettingsError(f"{key}: not a setting of {cls.__name__}")
        default = defaults[key]
        if isinstance(default, str):
            kwargs[key] = "" if value is None else str(value)
            continue
        if value is None or (isinstance(value, str) and not value.strip()):
            raise SettingsError(f"{key}: must be given, got nothing")
        try:
            if isinstance(default, bool):
                kwargs[key] = value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                number = float(value)
                if not number.is_integer():
                    raise ValueError
                kwargs[key] = int(number)
            elif isinstance(default, float):
                kwargs[key] = float(value)
            elif isinstance(default, tuple):
                kwargs[key] = tuple(value)
            else:
                kwargs[key] = value
        except (TypeError, ValueError, OverflowError):
            kind = "a whole number" if isinstance(default, int) else "a number"
            raise SettingsError(f"{key}: must be {kind}, got {value!r}") from None
    return cls(**kwargs)

"""FLUX LoRA training: flow matching on the transformer with peft, the same code for the tiny models, FLUX.1 and
FLUX.2 [klein]. What differs between base-model families (text encoding, latent normalisation, the loss's inputs,
the sigma shift, LoRA targets, kohya names) the run asks its family (pipeline/models/families).

One run (``_train``, numbered there):
1. Set up: the base model's family and memory mode; each photo is fitted to an aspect bucket at each resolution of
   the run (the chosen one, and the finishing one for the last quarter of the steps where set), VAE-encoded once,
   and every caption (plus the empty caption for caption dropout and the sample prompts) is text-encoded once. Both
   are cached on disk under ``data_dir/cache`` keyed by image hash / caption and base model, then the text encoders
   are freed. The frozen transformer gets peft LoRA layers on its attention and MLP projections, and the optimiser.
2. Resume from the latest checkpoint made with the same settings, photos and base model, or start afresh.
3. Train: each step (``train_step(state, batch, step)``) draws noise and sigmas (logit-normal around a
   resolution-dependent shift), mixes ``x_t = (1 - σ) x0 + σ ε`` and regresses the velocity ``ε - x0``. All
   randomness of a step comes from a generator seeded by (seed, step), so a resumed run repeats the uninterrupted
   one exactly. Checkpoints every N steps (atomic, last K kept) hold a loadable LoRA plus optimiser and scheduler
   state; a Stop ends at a step boundary with a checkpoint.
4. The final LoRA, in diffusers and kohya layouts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import pickle
import random
import re
import shutil
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline import events as ev
from pipeline.intake.dataset import Dataset
from pipeline.models import lora_formats, memory, offload
from pipeline.models.base_info import base_info
from pipeline.models.base_model import (
    BaseModelError,
    default_test_generate_settings,
    explain_load_failure,
    is_embedded,
    quiet_library_logs,
    resolve_base_model,
    tiny_model_version,
)
from pipeline.models.families import (
    BaseVariant,
    FamilyError,
    FamilyId,
    ModelFamily,
    TextEmbedding,
    family,
    family_of,
    sized_variant,
)
from pipeline.settings import TrainSettings, to_json
from pipeline.status import Status
from pipeline.training.estimate import (
    LiveEta,
    SpeedLog,
    embedded_kind,
    expected_times,
    left_after,
    preparing_seconds,
    speed_key,
)
from pipeline.weights_lock import WEIGHTS_LOCK

logger = logging.getLogger(__name__)

PHASES = ("initial learning", "feature refinement", "style adaptation", "final optimisation")
COMPILE_MIN_STEPS = 300  # on CUDA, runs this long compile the transformer blocks first
MAX_TEXT_TOKENS = 512  # text tokens (T5's, Qwen3's): what the pipelines pad to at inference
FINISH_SHARE = 0.25  # of the steps, trained at ``finish_resolution``
# Torch threads for the embedded (tiny, micro) models on a CPU. Their matrices are too small to share across cores:
# on 2 cores (bench/results/embedded_threads_cpu.json, 96 px, peft's LoRA layers) the micro model takes 0.25-0.31
# s/step on one thread whether or not the other core is busy, and on two threads 0.21-0.25 when idle but 0.79-1.08
# beside one busy core (at 64 px: 0.12-0.13, 0.095 and 0.29-0.33; the tiny model: 0.04 against 0.2-0.7). One thread
# also lets two trainings (Ray slots, tests) share two cores. (The merged-weight layers,
# pipeline/training/merged_lora.py, take
# 0.73 of peft's time on one thread: bench/results/merged_lora_cpu.json.)
EMBEDDED_CPU_THREADS = 1
_init_lock = threading.Lock()  # torch's global generator seeds the LoRA's initialisation
_ASPECTS = (1.0, 4 / 5, 5 / 4, 3 / 4, 4 / 3, 2 / 3, 3 / 2, 9 / 16, 16 / 9)  # width / height
_STEP_DIR = re.compile(r"^step-(\d{6})$")
_STATE_FILE = "training_state.pt"
_LORA_FILE = "lora.safetensors"
_KOHYA_FILE = "lora_kohya.safetensors"
# Settings that do not change what a step computes: a run may resume after they changed.
_RESUME_FREE_FIELDS = {"name", "steps", "checkpoint_every", "keep_checkpoints", "sample_every", "sample_prompts"}
# TrainSettings fields newer than the resume fingerprint, with their defaults: left out of it at those.
_LATER_FIELDS = {"lora_outer_layers": False}


class TrainingError(ValueError):
    """The dataset or output folder cannot be trained on; the message names what and how to fix it."""


class FamilyMismatchError(BaseModelError):
    """The checkpoints to resume come from a base model of another family: their LoRA layers do not fit."""


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path  # a diffusers-layout LoRA safetensors, loadable by ``FluxPipeline.load_lora_weights``


@dataclass(frozen=True)
class TrainResult:
    status: Status  # one of RESULT_STATUSES: COMPLETED, CANCELLED or FAILED
    lora_path: Path | None
    kohya_path: Path | None
    checkpoints: tuple[CheckpointInfo, ...]
    steps_done: int
    final_loss: float | None
    losses: tuple[float, ...]
    error: str = ""
    seconds: float = 0.0


def phase_for(step: int, total: int) -> str:
    """The seed's four training phases, by the fraction of steps done."""
    return PHASES[min(3, int(4 * (step - 1) / max(total, 1)))]


@dataclass(frozen=True)
class Stage:
    """Steps ``first``..``last`` (1-based, inclusive) train at ``resolution``."""

    resolution: int
    first: int
    last: int


def resolution_stages(settings: TrainSettings) -> tuple[Stage, ...]:
    """The run's resolutions over its steps: all at ``resolution``, or its last quarter at ``finish_resolution``."""
    resolutions = settings.resolutions
    if len(resolutions) == 1:
        return (Stage(resolutions[0], 1, settings.steps),)
    finish = math.ceil(settings.steps * FINISH_SHARE)
    stages = (Stage(resolutions[0], 1, settings.steps - finish), Stage(resolutions[1], settings.steps - finish + 1,
                                                                      settings.steps))
    return tuple(stage for stage in stages if stage.first <= stage.last)


def aspect_buckets(resolution: int) -> tuple[tuple[int, int], ...]:
    """(width, height) buckets of about ``resolution``² pixels, sides multiples of 16 (8x VAE · 2x2 patches)."""
    buckets = []
    for aspect in _ASPECTS:
        width = max(16, round(resolution * math.sqrt(aspect) / 16) * 16)
        height = max(16, round(resolution / math.sqrt(aspect) / 16) * 16)
        buckets.append((width, height))
    return tuple(dict.fromkeys(buckets))


def bucket_for(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest (in log space) to the image's."""
    aspect = math.log(width / height)
    return min(aspect_buckets(resolution), key=lambda b: abs(math.log(b[0] / b[1]) - aspect))


def lora_target_modules(transformer: torch.nn.Module, *, modulation: bool = False, outer_layers: bool = False,
                        model_family: ModelFamily | None = None) -> list[str]:
    """The layers a LoRA trains on ``transformer``, as its family says (``ModelFamily.lora_targets``; by default the
    family whose transformer class it is)."""
    chosen = model_family or _family_of_transformer(transformer)
    return chosen.lora_targets(transformer, modulation=modulation, outer_layers=outer_layers)


def _family_of_transformer(transformer: torch.nn.Module) -> ModelFamily:

    # FLUX.2 [dev] shares klein's transformer class and its layer names.
    klein = family(FamilyId.FLUX2_KLEIN)
    return klein if type(transformer).__name__ == klein.transformer_class_name else family(FamilyId.FLUX1)


def add_lora(transformer: torch.nn.Module, *, rank: int, alpha: float, autocast: bool,
             modulation: bool = False, outer_layers: bool = False,
             merge_when_cheaper: bool = False, model_family: ModelFamily | None = None) -> list[torch.nn.Parameter]:
    """Freeze ``transformer`` and add peft LoRA layers to the modules of :func:`lora_target_modules`; returns the
    trainable parameters.

    ``merge_when_cheaper``: layers whose LoRA path costs more than merging the weight each step run merged
    (:mod:`pipeline.training.merged_lora`; the micro model's rank-128 LoRA on a 128-wide model). For the CPU only:
    peft's
    custom-layer hook comes before its bitsandbytes dispatch, so on a GPU it would take over the nf4 layers too.

    The LoRA weights (and so their gradients and AdamW state) are fp32 whatever the base dtype. Under bf16 autocast
    peft's cast of each layer's input to fp32 is switched off: autocast runs the LoRA matmuls in bf16 anyway, and
    the cast copied every activation to fp32 in 418 layers (FLUX.1-dev) per step for nothing.
    """
    from peft import LoraConfig
    from peft.tuners.tuners_utils import BaseTunerLayer

    transformer.requires_grad_(False)
    targets = lora_target_modules(transformer, modulation=modulation, outer_layers=outer_layers,
                                  model_family=model_family)
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", lora_dropout=0.0,
                        target_modules=targets)
    if merge_when_cheaper:
        from pipeline.training.merged_lora import MergedWeightLoraLinear, merging_can_pay

        modules = dict(transformer.named_modules())
        # Only where some layer can merge: the merged layer's check on every call costs ~1 ms a step for nothing on
        # a model whose layers never merge (tiny klein at rank 4: bench/peer_klein.py).
        if any(merging_can_pay(modules[name].in_features, modules[name].out_features, rank) for name in targets):
            config._register_custom_module({torch.nn.Linear: MergedWeightLoraLinear})
    transformer.add_adapter(config)
    if autocast:
        for module in transformer.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def training_attention() -> contextlib.AbstractContextManager[None]:
    """SDPA backends for a training step, forward and backward: flash, memory-efficient, math; not cuDNN.

    cuDNN attention gave NaN LoRA gradients and then failed its backward ("mha_graph.execute ... is_good()") on an
    H100 with torch 2.11 (bench/train.py, 2026-11-25). Wrap the backward too: gradient checkpointing re-runs
    the forward inside it.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


# --- preparation: buckets and caches -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    # Per resolution, per item: normalised as the transformer sees them (FLUX.1: (16, h/8, w/8) scaled and shifted;
    # FLUX.2: (128, h/16, w/16) patchified and normalised by the VAE's BatchNorm statistics).
    latents: dict[int, tuple[torch.Tensor, ...]]
    texts: tuple[TextEmbedding, ...]  # per item
    empty: TextEmbedding  # the empty caption, for caption dropout and klein's CFG samples
    samples: tuple[TextEmbedding, ...]  # the sample prompts


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _key(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:40]


def _model_key(model_path: str) -> str:
    # A rebuilt tiny model (new version) must not reuse latents or text embeddings cached for the old one.
    return f"{model_path}|{tiny_model_version(model_path)}"


def load_training_image(path: Path, bucket: tuple[int, int]) -> torch.Tensor:
    """A dataset image as training encodes it: upright, RGB, fitted to ``bucket`` (width, height), CHW in [-1, 1]."""
    try:
        with Image.open(path) as raw:
            image = ImageOps.exif_transpose(raw).convert("RGB")
    except OSError as exc:
        raise TrainingError(f"dataset image {str(path)!r} cannot be read ({exc}); rebuild the dataset") from exc
    image = ImageOps.fit(image, bucket, method=Image.Resampling.LANCZOS)
    array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(bucket[1], bucket[0], 3)
    return array.permute(2, 0, 1).float().div(127.5).sub(1.0)


def _prepare(dataset: Dataset, settings: TrainSettings, model_path: str, data_dir: Path, device: str,
             dtype: torch.dtype, on_event: ev.EventCallback, *, offload_encoders: bool = False,
             model_family: ModelFamily | None = None) -> tuple[_Prepared, torch.nn.Module]:
    """Cached latents and text embeddings for the dataset; returns them and the VAE (kept for sample images)."""
    fam = model_family or family_of(model_path)
    cache = Path(data_dir) / "cache"
    model_key = _model_key(model_path)
    with WEIGHTS_LOCK:  # loads patch torch process-wide (pipeline.weights_lock)
        vae = fam.vae_class().from_pretrained(model_path, subfolder="vae", dtype=dtype).to(device).eval()
    vae.requires_grad_(False)

    latents: dict[int, list[torch.Tensor]] = {resolution: [] for resolution in settings.resolutions}
    total = len(dataset.items) * len(latents)
    for i, item in enumerate(dataset.items):
        image_path = item.training_image
        if not image_path.is_file():
            raise TrainingError(f"dataset image {str(image_path)!r} does not exist; rebuild the dataset")
        with Image.open(image_path) as probe:
            size = ImageOps.exif_transpose(probe).size
        digest = _file_hash(image_path)
        for r, (resolution, encoded) in enumerate(latents.items()):
            bucket = bucket_for(*size, resolution)
            path = cache / "latents" / f"{_key(digest, bucket, model_key)}.safetensors"
            if path.is_file():
                latent = load_file(str(path))["latent"]
            else:
                pixels = load_training_image(image_path, bucket).unsqueeze(0).to(device, dtype)
                with torch.no_grad():
                    latent = fam.encode_latents(vae, pixels)[0].float().cpu()
                path.parent.mkdir(parents=True, exist_ok=True)
                _atomic_save({"latent": latent}, path)
            encoded.append(latent)
            on_event(ev.Progress("train", i * len(latents) + r + 1, total,
                                 "encoding photos (cached for later runs)"))

    prompts = [item.caption for item in dataset.items]
    sample_prompts = [p.replace("{trigger}", dataset.trigger_word) for p in settings.sample_prompts]
    wanted = dict.fromkeys(prompts + [""] + sample_prompts)
    tokens = fam.text_tokens(model_path)
    text_paths = {p: cache / "text" / f"{_key(p, model_key, tokens)}.safetensors" for p in wanted}
    missing = [p for p, path in text_paths.items() if not path.is_file()]
    if missing:
        on_event(ev.Message(f"encoding {len(missing)} captions with {fam.text_encoder_words}"))
        with WEIGHTS_LOCK:
            encoders = fam.pipeline_class().from_pretrained(model_path, transformer=None, vae=None, dtype=dtype)
            for encoder in (getattr(encoders, name) for name in fam.text_encoder_names):
                encoder.eval().requires_grad_(False)
                if offload_encoders:
                    # T5-XXL alone is 9.5 GB in bf16: on 16 and 12 GB cards its weights stream from host RAM instead.
                    offload.stream_linear_weights(encoder, device)
                else:
                    encoder.to(device)
        with torch.no_grad():
            for prompt in missing:
                encoded = fam.encode_prompt(encoders, prompt, device=device, tokens=tokens)
                text_paths[prompt].parent.mkdir(parents=True, exist_ok=True)
                _atomic_save(encoded.tensors(), text_paths[prompt])
        # Free the text encoders (T5-XXL alone is 9.5 GB in bf16, Qwen3-4B 8.8) before the transformer is loaded.
        del encoders
        memory.empty_caches()
    texts = {prompt: TextEmbedding.from_tensors(load_file(str(path))) for prompt, path in text_paths.items()}
    prepared = _Prepared(latents={r: tuple(items) for r, items in latents.items()},
                         texts=tuple(texts[p] for p in prompts), empty=texts[""],
                         samples=tuple(texts[p] for p in sample_prompts))
    return prepared, vae


ENCODER_HEADROOM_GB = 2.0  # beside the text encoder's bf16 weights while captions are encoded: activations, CUDA


def _encoders_exceed(variant: BaseVariant | None, free_gb: float | None) -> bool:
    """Whether the base's text encoders in bf16 would not fit the free GPU memory (klein base 4B's Qwen3-4B is 7.5 GB,
    9B's Qwen3-8B 15.3 GB: fp8 training is chosen from 7.4 and 15.6 GB free by the step's own needs)."""
    if variant is None or free_gb is None:
        return False
    return 2 * variant.text_encoder_params / memory.GB > free_gb - ENCODER_HEADROOM_GB


def load_transformer(model_path: str, mode: str, device: str,
                     model_family: ModelFamily | None = None) -> torch.nn.Module:
    """The base model's transformer (its family's class) as memory ``mode`` needs it, never with a second copy in
    host RAM.

    bf16 goes straight from the safetensors files to the GPU; fp8 and offload load into host RAM (bf16 weights would
    not fit the GPUs they are for) and move later, layer by layer; nf4 quantises while loading. ``cpu``: float32.
    """
    transformer_class = (model_family or family_of(model_path)).transformer_class()
    dtype = torch.float32 if mode == "cpu" else torch.bfloat16
    device_map = device if device.startswith("cuda") and mode not in ("fp8", "offload") else None
    quantization = None
    if mode == "nf4":
        # bitsandbytes 4-bit NormalFloat (peft trains LoRA on bnb Linear4bit layers). Not measured here: bitsandbytes
        # was absent on the lent H100.
        from diffusers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_compute_dtype=torch.bfloat16)
    return transformer_class.from_pretrained(model_path, subfolder="transformer", dtype=dtype,
                                             device_map=device_map, low_cpu_mem_usage=True,
                                             quantization_config=quantization)


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


# --- batches -------------------------------------------------------------------------------------------------------


def _batches(latents: Sequence[torch.Tensor], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of item indices, one bucket (latent shape) per batch, reshuffled every epoch from the seed."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, latent in enumerate(latents):
        by_shape.setdefault(tuple(latent.shape), []).append(i)
    epoch = 0
    while True:
        rng = random.Random(seed * 100_003 + epoch)
        batches = []
        for indices in by_shape.values():
            order = indices[:]
            rng.shuffle(order)
            batches += [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        rng.shuffle(batches)
        yield from batches
        epoch += 1


# --- one step ------------------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """What a step reads and changes: the transformer with its LoRA, the trainable parameters, the optimiser and its
    schedule, and how the family computes (nanoGPT's model + optimizer; lerobot's policy + optimizer)."""

    family: ModelFamily
    settings: TrainSettings
    transformer: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    device: str
    dtype: torch.dtype


@dataclass(frozen=True)
class Batch:
    """One step's items: their cached latents (one bucket) and captions, and the empty caption for dropout."""

    latents: torch.Tensor  # (B, C, h, w) as the family normalises them
    texts: tuple[TextEmbedding, ...]
    empty: TextEmbedding


@dataclass(frozen=True)
class StepMetrics:
    loss: float
    learning_rate: float  # after the step's schedule update


def train_step(state: TrainState, batch: Batch, step: int) -> StepMetrics:
    """One optimisation step at ``step`` (1-based): noise, sigmas and caption dropout from a generator seeded by
    (seed, step) — so a resumed run repeats the uninterrupted one —, the family's loss and its backward, gradient
    clipping, the optimiser and the schedule. A loss that is not finite raises FloatingPointError."""
    s = state.settings
    generator = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
    x0 = batch.latents
    noise = torch.randn(x0.shape, generator=generator)
    sigmas = state.family.sample_sigmas(x0.shape[0], method=s.timestep_sampling,
                                        image_tokens=state.family.image_tokens(x0.shape), generator=generator)
    dropped = torch.rand(x0.shape[0], generator=generator) < s.caption_dropout
    texts = [batch.empty if drop else text for text, drop in zip(batch.texts, dropped.tolist(), strict=True)]
    with training_attention():
        loss = state.family.loss(state.transformer, x0, noise, sigmas, texts, guidance=s.guidance,
                                 device=state.device, dtype=state.dtype)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step}: lower learning_rate "
                                     f"(now {s.learning_rate}) or max_grad_norm")
        loss.backward()
    torch.nn.utils.clip_grad_norm_(state.params, s.max_grad_norm)
    state.optimizer.step()
    state.lr_scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    return StepMetrics(loss=loss.item(), learning_rate=state.lr_scheduler.get_last_lr()[0])


def make_optimizer(params: list[torch.nn.Parameter], settings: TrainSettings, *, fused: bool,
                   on_event: ev.EventCallback = ev.ignore) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (8-bit where asked and bitsandbytes works) and the learning-rate schedule with its warm-up."""
    from diffusers.optimization import get_scheduler

    s = settings
    if s.optimizer == "adamw8bit" and memory.bitsandbytes_works():
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=s.learning_rate, weight_decay=1e-4)
    else:
        if s.optimizer == "adamw8bit":
            on_event(ev.Message("adamw8bit needs bitsandbytes with CUDA, which does not work here: using AdamW "
                                "(the LoRA's optimiser state is small either way)", level="warning"))
        optimizer = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=1e-4, fused=fused)
    lr_scheduler = get_scheduler("cosine" if s.lr_schedule == "cosine" else "constant_with_warmup", optimizer,
                                 num_warmup_steps=min(s.warmup_steps, s.steps), num_training_steps=s.steps)
    return optimizer, lr_scheduler


# --- checkpoints ---------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: Path) -> tuple[CheckpointInfo, ...]:
    """Complete checkpoints in ``output_dir/checkpoints``, oldest first."""
    folder = Path(output_dir) / "checkpoints"
    found = []
    if folder.is_dir():
        for child in folder.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / _STATE_FILE).is_file() and (child / _LORA_FILE).is_file():
                found.append(CheckpointInfo(step=int(match.group(1)), path=child / _LORA_FILE))
    return tuple(sorted(found, key=lambda c: c.step))


def _resume_fingerprints(settings: TrainSettings, base_model: str, model_path: str,
                         dataset: Dataset) -> tuple[str, str]:
    """What a checkpoint must have been trained on to be resumed: (this version's, the one before).

    This version's names the photos by their place inside the dataset and the base model by its name and build, not
    by where they lie, so a checkpoint resumes on another machine (a cluster node without the app's disk) or after the
    data dir moved. The one before hashed absolute paths; it is still accepted, so runs stopped before keep resuming.
    """
    free = _RESUME_FREE_FIELDS - ({"steps"} if len(settings.resolutions) > 1 else set())  # steps place the switch
    # fields added since at their default are left out, so the runs stopped before them still resume
    free |= {k for k, default in _LATER_FIELDS.items() if getattr(settings, k) == default}
    data = json.dumps({k: v for k, v in dataclasses.asdict(settings).items() if k not in free}, sort_keys=True,
                      default=str)
    images = [i.training_image for i in dataset.items]
    root = Path(os.path.commonpath(images)) if len(images) > 1 else images[0].parent if images else Path()
    placed = [(i.training_image.relative_to(root).as_posix(), i.caption) for i in dataset.items]
    current = _key("v2", data, f"{base_model}|{tiny_model_version(model_path)}", placed)
    before = _key(data, _model_key(model_path), [(str(i.training_image), i.caption) for i in dataset.items])
    return current, before


# --- the run -------------------------------------------------------------------------------------------------------


def software_version() -> str:
    """This program's version and the libraries that shape a LoRA, for the file header."""
    import diffusers
    import peft

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    version = "unknown"
    if pyproject.is_file():
        version = tomllib.loads(pyproject.read_text())["project"]["version"]
    return f"likeness {version}; diffusers {diffusers.__version__}; peft {peft.__version__}; torch {torch.__version__}"


def lora_header(settings: TrainSettings, *, trigger_word: str, photos: int, base_model: str,
                step: int) -> dict[str, str]:
    """The safetensors header of both LoRA files at ``step``: the run's settings and the base it fits, in Likeness's
    keys and kohya's (read by ComfyUI/Forge/A1111 model browsers)."""
    s = settings
    return {
        "likeness.name": s.name, "likeness.trigger_word": trigger_word,
        "likeness.steps": str(step), "likeness.total_steps": str(s.steps),
        "likeness.rank": str(s.rank), "likeness.alpha": str(s.alpha), "likeness.resolution": str(s.resolution),
        "likeness.resolutions": ",".join(str(r) for r in s.resolutions),
        "likeness.learning_rate": str(s.learning_rate), "likeness.photos": str(photos),
        "likeness.software": software_version(), "likeness.settings": to_json(s),
        "ss_network_module": "networks.lora_flux", "ss_network_dim": str(s.rank), "ss_network_alpha": str(s.alpha),
        "ss_output_name": s.name, "ss_steps": str(step),
        "ss_resolution": f"({max(s.resolutions)}, {max(s.resolutions)})",
        "ss_num_train_images": str(photos),
        "ss_learning_rate": str(s.learning_rate),
        # The base by name (likeness.base_model, ss_base_model_version, ...): a micro LoRA must not say flux1.
        **base_info(base_model).header(),
    }


class _Run:
    """State of one training run; ``train_lora`` is its only entry point."""

    def __init__(self, dataset: Dataset, settings: TrainSettings, output_dir: Path, base_model: str, data_dir: Path,
                 on_event: ev.EventCallback, should_stop: ev.StopCheck, device: str) -> None:
        self.device = device
        self.cuda = torch.device(device).type == "cuda"
        self.dataset = dataset
        self.settings = settings
        self.output_dir = Path(output_dir)
        self.base_model = base_model
        self.data_dir = Path(data_dir)
        self._on_event = on_event
        self.should_stop = should_stop
        self.losses: list[float] = []
        self.loss_smooth: float | None = None
        self.checkpoints: list[CheckpointInfo] = []
        # The ETA's own clock, primed with what earlier runs like this one took here (or the bench's figures).
        self.speed_key = speed_key(base_model, "cuda" if self.cuda else "cpu", settings)
        self.live = LiveEta(expected_times(settings, base_model, SpeedLog(self.data_dir),
                                           embedded=embedded_kind(base_model))[0])

    def release(self) -> None:
        """Drop the models, optimiser and cached tensors and hand the memory back: the assessment's generator, loaded
        next, picks its placement from the GPU memory that is free then."""
        for name in ("state", "vae", "prepared"):
            self.__dict__.pop(name, None)
        memory.empty_caches()

    def emit(self, event: ev.Event) -> None:
        try:
            self._on_event(event)
        except Exception:  # a broken renderer must not end a long training run
            logger.exception("on_event callback failed for %s", type(event).__name__)

    # - setup -

    def setup(self) -> None:
        """1. the base model, its family and the memory mode; 2. cached latents and text embeddings; 3. the
        transformer with its LoRA and the optimiser (``self.state``); 4. the resolution stages and batch sizes."""
        s = self.settings
        quiet_library_logs()  # before any model loads (here, in a CLI run, or in a Ray worker process)
        self.model_path = resolve_base_model(self.base_model, self.data_dir)
        try:
            self.family = family_of(self.model_path if Path(self.model_path).exists() else self.base_model)
            self.family.check_implemented()
        except FamilyError as exc:
            raise BaseModelError(str(exc)) from exc
        self.fingerprint, self.legacy_fingerprint = _resume_fingerprints(s, self.base_model, self.model_path,
                                                                         self.dataset)
        free_gb = memory.free_gpu_gb(self.device)
        variant = sized_variant(self.model_path)
        # auto's thresholds are the model's own (klein base 4B: bf16 from 14 GB; FLUX.1-dev: 40 as before).
        thresholds = memory.auto_thresholds(variant)
        mode, reason = memory.choose_mode(s.memory_mode, free_gb, thresholds)
        if mode == "nf4" and not memory.bitsandbytes_works():
            # Where fp8 would not fit either (klein base 4B between 5.5 and 7.4 GB free), the blocks are offloaded.
            fp8_from = dict(thresholds).get("fp8", 0.0)
            mode = "fp8" if free_gb is None or free_gb >= fp8_from or s.memory_mode != "auto" else "offload"
            reason = f"nf4 needs bitsandbytes, which does not work here: {mode} instead"
            self.emit(ev.Message(reason, level="warning"))
        self.mode = mode
        self.dtype = torch.float32 if mode == "cpu" else torch.bfloat16
        self.emit(ev.Message(f"memory mode {mode}: {reason}"))

        offload_encoders = mode in ("nf4", "offload") or _encoders_exceed(variant, free_gb)
        if offload_encoders and mode not in ("nf4", "offload"):
            self.emit(ev.Message(f"the text encoder ({variant.text_encoder}) does not fit the GPU's free memory at "
                                 "once: its weights stream from host RAM while the captions are encoded"))
        self.prepared, self.vae = _prepare(self.dataset, s, self.model_path, self.data_dir, self.device,
                                           self.dtype, self.emit, offload_encoders=offload_encoders,
                                           model_family=self.family)
        self.vae.to("cpu")  # latents are cached: the VAE visits the GPU again only to decode sample images
        with WEIGHTS_LOCK:  # loading, adding the LoRA and placing swap parameters (pipeline.weights_lock)
            transformer, params, self.checkpointing = self._load_and_place_transformer()
        transformer.train()
        optimizer, lr_scheduler = make_optimizer(params, s, fused=self.cuda, on_event=self.emit)
        self.state = TrainState(family=self.family, settings=s, transformer=transformer, params=params,
                                optimizer=optimizer, lr_scheduler=lr_scheduler, device=self.device, dtype=self.dtype)
        self.stages = resolution_stages(s)
        # Per resolution: a batch that fits at 512 px may not at 1024.
        self.batch_sizes = {stage.resolution: s.batch_size or self._auto_batch_size(stage.resolution)
                            for stage in self.stages}
        sizes = ", ".join(f"{size} at {resolution} px" for resolution, size in self.batch_sizes.items())
        self.emit(ev.Message(f"batch size {sizes}" + ("" if s.batch_size else " (automatic)")))
        if self.cuda:  # the GPU memory reported per step is training's, not the text encoders' (T5-XXL: 9.5 GB)
            torch.cuda.reset_peak_memory_stats(self.device)

    def _load_and_place_transformer(self) -> tuple[torch.nn.Module, list[torch.nn.Parameter], bool]:
        """The transformer placed for the memory mode with its LoRA, the LoRA's parameters, and whether blocks are
        recomputed in the backward (gradient checkpointing)."""
        s = self.settings
        transformer = load_transformer(self.model_path, self.mode, self.device, self.family)
        transformer.requires_grad_(False)
        # fp8 and offload must recompute blocks: otherwise every dequantised/onloaded weight stays saved.
        checkpointing = s.gradient_checkpointing or self.mode in ("fp8", "offload")
        if checkpointing and self.mode == "bf16" and s.memory_mode == "auto" and self._fits_without_recompute(
                transformer):
            # Recomputing costs ~50 % more time per step (0.60 -> 0.89 s at 512 px on an H100); skip it where the
            # saved activations fit (measured peak without it: 34 GB at 512 px, 56 GB at 1024 px, FLUX.1-dev, batch 1).
            checkpointing = False
            self.emit(ev.Message("enough GPU memory: gradient checkpointing off (faster steps)"))
        if checkpointing:
            transformer.enable_gradient_checkpointing()
        with _init_lock:  # two trainings in one process (a test, a bench) must not draw from each other's seed
            torch.manual_seed(s.seed)  # the LoRA A matrices' initialisation
            params = add_lora(transformer, rank=s.rank, alpha=s.alpha, autocast=self.cuda,
                                   modulation=s.lora_modulation, outer_layers=s.lora_outer_layers,
                                   merge_when_cheaper=not self.cuda, model_family=self.family)
        if self.mode == "fp8":
            memory.quantize_frozen_linears_fp8(transformer, device=self.device)
        if self.mode == "offload":
            report = offload.offload_block_weights(transformer, self.device)
            where = "pinned host RAM" if report.pinned else "host RAM, not pinned (slower copies)"
            self.emit(ev.Message(f"block offload: {report.host_bytes / memory.GB:.1f} GB of weights stay in {where}, "
                                 f"at most {report.largest_block_bytes / memory.GB:.2f} GB on the GPU at once"))
        elif self.mode == "fp8":  # the rest of the model; its Linear weights are on the GPU already
            transformer.to(self.device)
        if self.cuda and self.mode != "offload" and s.steps >= COMPILE_MIN_STEPS:
            # Regional compilation of the repeated blocks: 0.365 -> 0.231 s/step at 512 px, 0.64 -> 0.46 at 1024 px on
            # an H100 (bench/train.py) for about a minute of compiling, so worth it from a few hundred steps on.
            transformer.compile_repeated_blocks(fullgraph=False)
            self.emit(ev.Message("compiling the transformer blocks (about a minute, once per resolution)"))
        return transformer, params, checkpointing

    def _estimate(self, resolution: int, *, checkpointing: bool,
                  transformer: torch.nn.Module | None = None) -> memory.MemoryEstimate:
        transformer = transformer if transformer is not None else self.state.transformer
        config = transformer.config
        image_tokens = max(self.family.image_tokens(latent.shape) for latent in self.prepared.latents[resolution])
        return memory.estimate_memory(
            self.mode, base_parameters=0,
            lora_parameters=sum(4 * self.settings.rank * m.in_features for m in transformer.modules()
                                if isinstance(m, torch.nn.Linear)),  # upper bound, before the LoRA exists
            hidden_size=config.num_attention_heads * config.attention_head_dim,
            num_blocks=config.num_layers + config.num_single_layers,
            image_tokens=image_tokens, text_tokens=MAX_TEXT_TOKENS,
            gradient_checkpointing=checkpointing, optimizer=self.settings.optimizer)

    def _fits_without_recompute(self, transformer: torch.nn.Module) -> bool:
        free = memory.free_gpu_gb(self.device)
        largest = max(self.settings.resolutions)
        return free is not None and self._estimate(largest, checkpointing=False,
                                                   transformer=transformer).total_gb < 0.85 * free

    def _auto_batch_size(self, resolution: int) -> int:
        estimate = self._estimate(resolution, checkpointing=self.checkpointing)
        # Weights are loaded by now, so free memory already excludes them.
        return memory.auto_batch_size(len(self.dataset), free_gb=memory.free_gpu_gb(self.device),
                                      per_sample_gb=estimate.activations_gb,
                                      fixed_gb=estimate.lora_gb + estimate.optimizer_gb)

    # - checkpoints -

    def lora_state(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().float().cpu().clone()
                for k, v in get_peft_model_state_dict(self.state.transformer).items()}

    def header(self, step: int) -> dict[str, str]:
        return lora_header(self.settings, trigger_word=self.dataset.trigger_word, photos=len(self.dataset),
                           base_model=self.base_model, step=step)

    def write_lora(self, path: Path, step: int, kohya_path: Path | None = None) -> None:
        state = self.lora_state()
        factors = lora_formats.factors_from_peft(state, rank=self.settings.rank, alpha=self.settings.alpha)
        lora_formats.save_lora_file(path, lora_formats.to_diffusers(factors), self.header(step))
        if kohya_path is not None:
            lora_formats.save_lora_file(kohya_path, lora_formats.to_kohya(factors, self.family.kohya_layout()),
                                        self.header(step))

    def save_checkpoint(self, step: int) -> CheckpointInfo:
        folder = self.output_dir / "checkpoints"
        final = folder / f"step-{step:06d}"
        tmp = folder / f".step-{step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.write_lora(tmp / _LORA_FILE, step)
        torch.save({
            "step": step, "fingerprint": self.fingerprint, "family": self.family.id.value, "lora": self.lora_state(),
            "optimizer": self.state.optimizer.state_dict(), "lr_scheduler": self.state.lr_scheduler.state_dict(),
            "losses": self.losses, "loss_smooth": self.loss_smooth, "torch_rng": torch.get_rng_state(),
            "batch_sizes": self.batch_sizes,
        }, tmp / _STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        info = CheckpointInfo(step=step, path=final / _LORA_FILE)
        self.checkpoints = [c for c in self.checkpoints if c.step != step] + [info]
        for old in self.checkpoints[:-self.settings.keep_checkpoints]:
            shutil.rmtree(old.path.parent, ignore_errors=True)
        self.checkpoints = self.checkpoints[-self.settings.keep_checkpoints:]
        self.emit(ev.CheckpointSaved(step=step, path=info.path))
        return info

    def start_afresh(self) -> int:
        """Drop the folder's checkpoints; the step to continue after: 0."""
        shutil.rmtree(self.output_dir / "checkpoints", ignore_errors=True)
        return 0

    def try_resume(self) -> int:
        """Load the latest compatible checkpoint; returns the step to continue after (0 for a fresh run)."""
        from peft.utils import set_peft_model_state_dict

        found = list(list_checkpoints(self.output_dir))
        state = None
        while found and state is None:
            latest = found[-1]
            try:
                state = torch.load(latest.path.parent / _STATE_FILE, map_location="cpu", weights_only=True)
                load_file(str(latest.path))  # the LoRA file must read too: it is what the assessment loads
            except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, SafetensorError) as exc:
                # e.g. a disk that filled up or a kill mid-write: fall back to the newest checkpoint that loads.
                state = None
                found.pop()
                aside = latest.path.parent.with_name(f".corrupt-{latest.path.parent.name}")
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(latest.path.parent, aside)
                self.emit(ev.Message(f"the checkpoint at step {latest.step} cannot be read ({type(exc).__name__}: "
                                     f"{exc}); moved aside to {aside.name}, trying the one before", level="warning"))
        if state is None:
            return 0
        self._check_family(state)
        if state["fingerprint"] not in (self.fingerprint, self.legacy_fingerprint):
            self.emit(ev.Message(f"checkpoints in {self.output_dir} come from other settings, photos or base model: "
                                 "starting afresh", level="warning"))
            shutil.rmtree(self.output_dir / "checkpoints", ignore_errors=True)
            return 0
        set_peft_model_state_dict(self.state.transformer, state["lora"])
        self.state.optimizer.load_state_dict(state["optimizer"])
        self.state.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.losses = list(state["losses"])
        self.loss_smooth = state["loss_smooth"]
        torch.set_rng_state(state["torch_rng"])
        saved_sizes = state.get("batch_sizes", self.batch_sizes)
        if saved_sizes != self.batch_sizes and not self.settings.batch_size:
            # The automatic size follows free memory, which differs now; the run's own size repeats its batches.
            self.emit(ev.Message(f"keeping the run's batch sizes {saved_sizes} (automatic now: {self.batch_sizes})"))
            self.batch_sizes = dict(saved_sizes)
        self.checkpoints = list(found)
        self.emit(ev.Message(f"resuming from the checkpoint at step {latest.step}"))
        return latest.step

    def _check_family(self, state: dict) -> None:
        """Refuse checkpoints of another family (kept on disk): their LoRA layers do not exist on this transformer,
        and starting afresh over them would throw a run away unasked. Checkpoints from before families are FLUX.1."""
        saved = family(state.get("family", FamilyId.FLUX1))
        if saved.id is not self.family.id:
            raise FamilyMismatchError(
                f"cannot resume: the checkpoints in {self.output_dir / 'checkpoints'} were trained on a {saved.title} "
                f"base model, and this run's base model {self.base_model!r} is {self.family.title}; a LoRA cannot "
                f"continue on another family. Resume with the {saved.title} base model it was started on, or train "
                "afresh (Train instead of Resume; on the command line a new name)")

    # - steps -

    def stage_at(self, step: int) -> Stage:
        return next(stage for stage in self.stages if step <= stage.last)

    def batch(self, step: int, indices: list[int]) -> Batch:
        """The items ``indices`` at ``step``'s resolution."""
        latents = self.prepared.latents[self.stage_at(step).resolution]
        return Batch(latents=torch.stack([latents[i] for i in indices]),
                     texts=tuple(self.prepared.texts[i] for i in indices), empty=self.prepared.empty)

    def sample(self, step: int) -> None:
        s = self.settings
        if not self.prepared.samples:
            return
        transformer = self.state.transformer
        pipe = self.family.sampling_pipeline(self.model_path, self.vae, transformer)
        pipe.set_progress_bar_config(disable=True)
        # The embedded models' own step counts (4 tiny, 12 micro), FLUX.1-dev 20: a sample is a glimpse, not a test.
        steps = default_test_generate_settings(self.model_path).steps if is_embedded(self.model_path) else 20
        folder = self.output_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        size = self.stage_at(step).resolution
        transformer.eval()
        self.vae.to(self.device)
        try:
            for i, text in enumerate(self.prepared.samples):
                if self.should_stop():  # Stop between any two samples (on FLUX.1-dev each takes seconds)
                    break
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
                    image = pipe(**self.family.sample_kwargs(text, self.prepared.empty, device=self.device,
                                                             dtype=self.dtype),
                                 height=size, width=size, num_inference_steps=steps,
                                 generator=torch.Generator().manual_seed(i)).images[0]
                path = folder / f"step-{step:06d}-{i}.png"
                image.save(path)
                paths.append(path)
        finally:
            transformer.train()
            self.vae.to("cpu")
        prompts = tuple(p.replace("{trigger}", self.dataset.trigger_word) for p in s.sample_prompts)[:len(paths)]
        if paths:
            self.emit(ev.SampleImages(step=step, images=tuple(paths), prompts=prompts))

    def report_step(self, step: int, metrics: StepMetrics, seconds_per_step: float) -> None:
        s = self.settings
        loss = metrics.loss
        self.loss_smooth = loss if self.loss_smooth is None else 0.9 * self.loss_smooth + 0.1 * loss
        phase = phase_for(step, s.steps)
        if step == 1 or phase != phase_for(step - 1, s.steps):
            self.emit(ev.Message(f"phase: {phase} (from step {step} of {s.steps})"))
        gpu = torch.cuda.max_memory_allocated(self.device) / memory.GB if self.cuda else 0.0
        self.emit(ev.TrainStep(step=step, total_steps=s.steps, loss=loss, loss_smooth=self.loss_smooth,
                               learning_rate=metrics.learning_rate, seconds_per_step=seconds_per_step,
                               eta_seconds=self.eta(step, seconds_per_step), phase=phase, gpu_memory_gb=gpu,
                               host_memory_gb=memory.host_memory_gb(), resolution=self.stage_at(step).resolution))

    def eta(self, step: int, seconds_per_step: float) -> float:
        """Seconds to a ready model, smoothed (pipeline.training.estimate.LiveEta): this stage's steps at the median
        speed of
        the recent ones, a later stage's scaled from its tokens × batch, then the samples, checkpoints and final
        assessment still to come.

        Time grows slower than tokens: on an H100, 1024 px (4608 tokens with the text) took 2.0x the time of 512 px
        (1536 tokens), not 3x, hence the power 0.63 (= log 2 / log 3).
        """
        seconds_per_step = self.live.seconds_per_step() or seconds_per_step
        def work(stage: Stage) -> float:
            image_tokens = max(self.family.image_tokens(x.shape) for x in self.prepared.latents[stage.resolution])
            return (image_tokens + MAX_TEXT_TOKENS) * self.batch_sizes[stage.resolution]

        current = self.stage_at(step)
        steps = sum(seconds_per_step * (work(stage) / work(current)) ** 0.63 * (stage.last - max(step, stage.first - 1))
                    for stage in self.stages if stage.last > step)
        return self.live.smooth(time.perf_counter(), self.live.left(steps, *left_after(self.settings, step)))


def train_lora(
    dataset: Dataset,
    settings: TrainSettings,
    output_dir: Path,
    *,
    base_model: str,
    data_dir: Path,
    on_event: ev.EventCallback = ev.ignore,
    should_stop: ev.StopCheck = ev.never,
    resume: bool = True,
    device: str | None = None,
) -> TrainResult:
    """Train a LoRA of ``dataset``'s person on ``base_model``; outputs go to ``output_dir``.

    ``device``: where to train, e.g. "cuda:1" for the second GPU (the job queue runs one training per GPU);
    None: the current GPU, or the CPU where there is none.

    Raises SettingsError for invalid settings and TrainingError for an empty dataset, before anything runs. Every
    later failure (model cannot load, out of memory, loss not finite) ends as ``status="failed"`` with the reason.
    With ``resume`` a run continues from the latest checkpoint in ``output_dir`` made with the same settings.
    """
    settings.validate()
    with contextlib.suppress(FamilyError):  # an unknown base fails in setup, with the reason
        family_of(base_model).check_settings(settings)
    if len(dataset) == 0:
        raise TrainingError("the dataset has no photos: classify and select at least one photo before training")
    started = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    index = torch.device(device).index or 0
    if torch.device(device).type == "cuda" and index >= (torch.cuda.device_count() if torch.cuda.is_available() else 0):
        raise TrainingError(f"device: {device!r} asked for, but this machine has {torch.cuda.device_count()} working "
                            "CUDA GPU(s)")
    if len(settings.resolutions) > 1 and settings.finish_resolution > dataset.resolution:
        # Upscaled crops teach blur, not detail: finish only at a size the photos were cropped for.
        on_event(ev.Message(f"the dataset's crops are {dataset.resolution} px, so no finishing stage at "
                            f"{settings.finish_resolution} px (build the dataset at that size to have one)",
                            level="warning"))
        settings = dataclasses.replace(settings, finish_resolution=0)
    run = _Run(dataset, settings, output_dir, base_model, data_dir, on_event, should_stop, device)
    try:
        # Whatever still means "the current GPU" inside libraries then means this run's GPU (per thread).
        with torch.cuda.device(device) if run.cuda else _cpu_threads(
                EMBEDDED_CPU_THREADS if is_embedded(base_model) else None):
            return _train(run, settings, output_dir, base_model, started, resume)
    finally:
        run.release()


_threads_lock = threading.Lock()
_threads_users = 0  # trainings inside _cpu_threads now
_threads_before = 0  # torch's thread count before the first of them


@contextlib.contextmanager
def _cpu_threads(count: int | None) -> Iterator[None]:
    """Train on ``count`` torch threads (None: as they are). torch keeps the count per thread but also makes it the
    default of threads started later, so what is restored is the count from before the first of several trainings
    running at once, not what the second one found."""
    global _threads_users, _threads_before
    if count is None:
        yield
        return
    with _threads_lock:
        if _threads_users == 0:
            _threads_before = torch.get_num_threads()
        _threads_users += 1
        before = _threads_before
    torch.set_num_threads(count)
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
        torch.set_num_threads(before)


def _train(run: _Run, settings: TrainSettings, output_dir: Path, base_model: str, started: float,
           resume: bool) -> TrainResult:
    """One run as a recipe; every failure after the checks becomes a failed result with a reason to read."""
    step = 0
    try:
        run.setup()  # 1. base model, family, memory mode, caches, transformer + LoRA, optimiser
        step = run.try_resume() if resume else run.start_afresh()  # 2. resume or start afresh
        (output_dir / "settings.json").write_text(to_json(settings))
        fresh = step == 0  # a resumed run's times cover part of it: not noted for the estimate
        step, stopped = _loop(run, step, started)  # 3. the steps, with checkpoints and samples on their schedule
        if stopped:
            return _result(run, Status.CANCELLED, step, started)
        return _finish(run, step, started, fresh)  # 4. the last checkpoint and the final LoRA in both layouts
    except TrainingError:
        raise
    except Exception as exc:  # the run ends as "failed" with a reason the user can read
        return _failed(run, _failure_reason(exc, run, step, base_model), step, started)


def _loop(run: _Run, step: int, started: float) -> tuple[int, bool]:
    """Steps after ``step`` until the last or a Stop; returns the step reached and whether it was stopped."""
    settings = run.settings
    batches = _stage_batches(run, step)
    step_times: list[float] = []
    while step < settings.steps:
        if run.should_stop():
            if step > 0 and (not run.checkpoints or run.checkpoints[-1].step != step):
                run.save_checkpoint(step)
            run.emit(ev.Message(f"stopped at step {step} of {settings.steps}; the run can be resumed"))
            return step, True
        tic = time.perf_counter()
        if run.live.loading is None:
            run.live.loading = tic - started
        step += 1
        stage = run.stage_at(step)
        if step == stage.first and len(run.stages) > 1:
            run.emit(ev.Message(f"training at {stage.resolution} px: steps {stage.first}-{stage.last}"))
            step_times.clear()  # another size, another speed
            run.live.step_times.clear()
        metrics = train_step(run.state, run.batch(step, next(batches)), step)
        run.losses.append(metrics.loss)
        step_times.append(time.perf_counter() - tic)
        run.live.add_step(step_times[-1])
        # The first steps include warm-up (allocations, kernel selection): average the recent ones.
        recent = step_times[-20:] if len(step_times) > 3 else step_times
        run.report_step(step, metrics, sum(recent) / len(recent))
        if step % settings.checkpoint_every == 0 and step < settings.steps:
            _timed(run.live.checkpoint_times, run.save_checkpoint, step)  # with its live test generations
        if settings.sample_every > 0 and (step % settings.sample_every == 0 or step == settings.steps):
            _timed(run.live.sample_times, run.sample, step)
    return step, False


def _finish(run: _Run, step: int, started: float, fresh: bool) -> TrainResult:
    _timed(run.live.checkpoint_times, run.save_checkpoint, step)
    lora_path, kohya_path = run.output_dir / _LORA_FILE, run.output_dir / _KOHYA_FILE
    run.write_lora(lora_path, step, kohya_path)
    run.emit(ev.Message(f"training finished: {step} steps, LoRA saved to {lora_path}"))
    if fresh:  # the runner's record, once the checkpoint is chosen, adds the final assessment's time
        SpeedLog(run.data_dir).note_training(run.speed_key,
                                             run.live.measured(run.settings, preparing_seconds(run.output_dir.parent)))
    return _result(run, Status.COMPLETED, step, started, lora_path, kohya_path)


def _failure_reason(exc: Exception, run: _Run, step: int, base_model: str) -> str:
    """The one place an exception becomes the reason a failed run gives (call it inside the ``except``)."""
    if isinstance(exc, BaseModelError):  # already a sentence naming the model and the fix
        return str(exc)
    logger.exception("training failed at step %d", step)
    if isinstance(exc, torch.OutOfMemoryError):
        return (f"out of GPU memory at step {step} in memory mode {getattr(run, 'mode', '?')}: choose a lower memory "
                "mode (fp8, nf4, offload), a smaller batch size or resolution")
    if isinstance(exc, OSError) and not Path(str(base_model)).exists() and "state" not in run.__dict__:
        return explain_load_failure(base_model, exc)  # the model did not load
    return f"{type(exc).__name__}: {exc}"


def _timed(into: list[float], action: Callable[[int], object], step: int) -> None:
    tic = time.perf_counter()
    action(step)
    into.append(time.perf_counter() - tic)


def _stage_batches(run: _Run, done: int) -> Iterator[list[int]]:
    """Item indices for each step after ``done``, drawn as an uninterrupted run draws them (so resume repeats it)."""
    for index, stage in enumerate(run.stages):
        batches = _batches(run.prepared.latents[stage.resolution], run.batch_sizes[stage.resolution],
                           run.settings.seed + index)
        for step in range(stage.first, stage.last + 1):
            indices = next(batches)
            if step > done:
                yield indices


def _result(run: _Run, status: Status, step: int, started: float, lora_path: Path | None = None,
            kohya_path: Path | None = None) -> TrainResult:
    return TrainResult(status=status, lora_path=lora_path, kohya_path=kohya_path,
                       checkpoints=tuple(run.checkpoints), steps_done=step,
                       final_loss=run.losses[-1] if run.losses else None, losses=tuple(run.losses),
                       seconds=time.perf_counter() - started)


def _failed(run: _Run, reason: str, step: int, started: float) -> TrainResult:
    run.emit(ev.Message(f"training failed: {reason}", level="error"))
    return dataclasses.replace(_result(run, Status.FAILED, step, started), error=reason)

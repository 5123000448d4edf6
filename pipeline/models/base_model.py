"""The base model LoRAs are trained on: the embedded tiny models (``tiny``: FLUX.1, ``tiny-klein``: FLUX.2 [klein],
built by pipeline/models/families/tiny_klein.py), the micro model, a hub id or a local diffusers folder; its pipeline
class and what differs per family come from pipeline/models/families.

The tiny model has the real FLUX.1 architecture (FluxTransformer2DModel with guidance embedding, a 16-channel
AutoencoderKL with 8x downscale, CLIP and T5 text encoders, the flow-matching Euler scheduler) at toy sizes and with
seeded random weights. It is built in code once, saved with ``save_pretrained`` under the data dir and from then on
loaded with ``FluxPipeline.from_pretrained`` exactly like FLUX.1-dev, so both share one loading and training path.
Its images are noise: it proves the pipeline, not the likeness.
"""

from __future__ import annotations

import hashlib
import logging
import os
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.models.built_models import ensure_built
from pipeline.models.families.base import max_text_tokens  # noqa: F401  (imported from here by the video and tests)
from pipeline.settings import FLUX_DEV, MICRO_MODEL, MICRO_RESOLUTION, TINY_MODEL, GenerateSettings, TrainSettings
from pipeline.weights_lock import WEIGHTS_LOCK

# torch, diffusers and transformers take seconds to import: only what builds or loads a model imports them, so the
# app starts without waiting for them (torch is needed at start only to look for a GPU when no base model is given).
if TYPE_CHECKING:
    import torch
    from diffusers import FluxPipeline
    from transformers import CLIPTokenizer, T5Tokenizer

logger = logging.getLogger(__name__)

# Bumped when the tiny model's layout changes, so an old saved copy is rebuilt rather than half-loaded.
TINY_MODEL_VERSION = "1"
_TINY_FOLDER = "tiny"
_VERSION_FILE = "likeness_tiny_version.txt"
# Where the shipped micro model lives and the files that mark and check it (pipeline/models/micro.py builds it).
MICRO_FOLDER = Path(__file__).resolve().parents[2] / "assets" / "micro"
MICRO_VERSION_FILE = "likeness_micro.json"
MICRO_CHECKSUM_FILE = "SHA256SUMS"

# Words that appear in captions and prompts; whole-word tokens keep CLIP's 77-token window from filling with letters.
_COMMON_WORDS = (
    "a", "an", "the", "of", "in", "on", "with", "and", "photo", "portrait", "person", "man", "woman", "face",
    "smiling", "outdoors", "natural", "light", "close", "up", "headshot", "wearing", "background", "sks", "ohwx",
)


class BaseModelError(ValueError):
    """The chosen base model cannot be loaded; the message says what failed and how to fix it."""


def is_tiny(spec: str) -> bool:
    """True for an embedded tiny test model (FLUX.1's ``tiny``, FLUX.2 [klein]'s ``tiny-klein``), by name or by its
    folder: both train with the quick 64 px settings on one CPU thread."""
    from pipeline.models.families.tiny_klein import is_tiny_klein

    return spec == TINY_MODEL or (Path(spec) / _VERSION_FILE).is_file() or is_tiny_klein(spec)


def is_micro(spec: str) -> bool:
    """True for the embedded micro model (pretrained on faces, shipped in assets/micro), by name or by its folder."""
    return spec == MICRO_MODEL or (Path(spec) / MICRO_VERSION_FILE).is_file()


def is_embedded(spec: str) -> bool:
    """True for the models that ship with the app and run on a CPU (tiny at 64 px, micro at 96)."""
    return is_tiny(spec) or is_micro(spec)


def tiny_model_version(path: str | Path) -> str:
    """The build of an embedded model saved in ``path`` (the tiny model's version, the micro model's checksums);
    "" for any other model (or no model there). Caches keyed on it are not reused after a rebuild."""
    from pipeline.models.families.tiny_klein import tiny_klein_version

    version_file = Path(path) / _VERSION_FILE
    if version_file.is_file():
        return version_file.read_text().strip()
    if klein := tiny_klein_version(path):
        return f"klein-{klein}"
    sums = Path(path) / MICRO_CHECKSUM_FILE
    return hashlib.sha256(sums.read_bytes()).hexdigest()[:16] if sums.is_file() else ""


def default_base_model() -> str:
    """``auto`` where a CUDA GPU is present (the best base that fits its free memory: pipeline/models/base_choice.py),
    else the embedded micro model."""
    from pipeline.models.base_choice import AUTO_BASE_MODEL
    from pipeline.models.hardware import gpu_may_be_present

    if not gpu_may_be_present():
        return MICRO_MODEL
    import torch

    return AUTO_BASE_MODEL if torch.cuda.is_available() else MICRO_MODEL


def resolve_base_model(spec: str | None, data_dir: Path) -> str:
    """What ``from_pretrained`` should load: "tiny" and "tiny-klein" (or None: tiny) become their local folders; hub
    ids and folders stay.

    The tiny models are built on first use. A folder or hub id of a family Likeness cannot train (FLUX.2 [dev], an
    SDXL folder) is refused here, where the app starts, with what it needs. ``auto`` is chosen from the GPU's free
    memory now (the app chooses once at start, ``Workspaces.base_model_pick``, and passes the model on).
    """
    from pipeline.models.base_choice import AUTO_BASE_MODEL, choose_base_model, free_gpu_gb
    from pipeline.models.families.tiny_klein import TINY_KLEIN_MODEL, ensure_tiny_klein

    spec = (spec or TINY_MODEL).strip()
    if spec.lower() == AUTO_BASE_MODEL:
        spec = choose_base_model(free_gpu_gb()).spec
    if spec == TINY_MODEL:
        return str(ensure_tiny_model(data_dir))
    if spec == TINY_KLEIN_MODEL:
        return str(ensure_tiny_klein(data_dir))
    if spec == MICRO_MODEL:
        return str(micro_model_folder())
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise BaseModelError(
                f"base model folder {str(path)!r} has no model_index.json: point --base-model at a diffusers "
                "FluxPipeline or Flux2KleinPipeline folder (one saved with save_pretrained), a hub id such as "
                f"{FLUX_DEV!r}, or use 'tiny' or 'tiny-klein'"
            )
        return _trainable(str(path))
    if spec.count("/") != 1 or spec.startswith(("/", ".", "~")):
        raise BaseModelError(
            f"base model {spec!r} is neither 'tiny', 'tiny-klein', an existing folder, nor a hub id of the form "
            f"owner/name (for example {FLUX_DEV!r})"
        )
    return _trainable(spec)


def _trainable(spec: str) -> str:
    """``spec``, once its family is known and implemented; else a BaseModelError saying why."""
    from pipeline.models.families import FamilyError, family_of

    try:
        family_of(spec).check_implemented()
    except FamilyError as exc:
        raise BaseModelError(str(exc)) from exc
    return spec


def ensure_tiny_model(data_dir: Path) -> Path:
    """The folder of the embedded tiny FLUX pipeline under ``data_dir/base_models``, built there on first use."""
    return ensure_built(Path(data_dir) / "base_models" / _TINY_FOLDER, version=TINY_MODEL_VERSION,
                        version_file=_VERSION_FILE, build=_build_tiny_pipeline, what="tiny FLUX model")


def micro_model_folder() -> Path:
    """assets/micro, the pretrained micro model that ships with the app (``python -m pipeline.models.micro build``)."""
    if not (MICRO_FOLDER / "model_index.json").is_file():
        raise BaseModelError(
            f"the micro base model is missing from {MICRO_FOLDER} (a partial checkout?): restore it with "
            "`git checkout -- assets/micro`, rebuild it with `python -m pipeline.models.micro build`, or use "
            "--base-model tiny")
    return MICRO_FOLDER


GENERATION_COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2")  # the most a family has


def generation_components(pipe: Any) -> dict[str, torch.nn.Module]:
    """The loaded pipeline's models by name (FLUX.1: two text encoders, FLUX.2: one)."""
    return {name: module for name in GENERATION_COMPONENTS if (module := getattr(pipe, name, None)) is not None}


@dataclass(frozen=True)
class Placement:
    """Where a loaded pipeline's weights live (``memory.PLACEMENTS`` or "cpu"), why, and the GB each placement would
    keep on the GPU (``memory.choose_generation_placement``'s ``gpu_gb``/``fp8_gb``), to place it again later."""

    name: str
    reason: str
    sizes: dict[str, float]


def generation_device() -> str:
    """Where generation runs: the first GPU *by name* ("cuda" would mean whichever GPU is current in the calling
    thread, a training job's), or the CPU."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def load_pipeline(
    spec: str, data_dir: Path, *, device: str | None = None, dtype: torch.dtype | None = None, placement: str = "auto"
) -> Any:
    """Load the base model's pipeline (its family's: FluxPipeline, Flux2KleinPipeline) from "tiny", "tiny-klein", a
    hub id or a local folder, in eval mode, placed to fit the GPU.

    ``device`` defaults to the first GPU where there is one; ``dtype`` to bfloat16 on CUDA and float32 on the CPU
    (the tiny model always float32 on the CPU, where bf16 matmuls are slow). ``placement`` (see
    ``memory.choose_generation_placement``): "auto" picks from free GPU memory, so FLUX.1-dev generates on 24 and
    16 GB cards too.
    """
    path = resolve_base_model(spec, data_dir)
    import torch

    from pipeline.models.families import FamilyError, family_of

    quiet_library_logs()
    try:
        family = family_of(path if Path(path).exists() else spec)
        family.check_implemented()
    except FamilyError as exc:
        raise BaseModelError(str(exc)) from exc

    from pipeline.models import memory

    device = device or generation_device()
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with WEIGHTS_LOCK:  # loading and placing swap parameters and patch torch process-wide (pipeline.weights_lock)
        try:
            pipe = family.pipeline_class().from_pretrained(path, dtype=dtype, low_cpu_mem_usage=True)  # host RAM
        except Exception as exc:  # every loader failure becomes one explained error
            raise BaseModelError(explain_load_failure(spec, exc)) from exc
        components = generation_components(pipe)
        for module in components.values():
            module.eval().requires_grad_(False)
        pipe.set_progress_bar_config(disable=True)
        sizes = _placement_sizes(components)
        chosen, reason = memory.choose_generation_placement(placement, memory.free_gpu_gb(device), **sizes)
        logger.info("base model %s: %s", spec, reason)
        _place(pipe, chosen, device)
    # Read by the generator, which reloads a pipeline placed while memory was short once a better placement fits.
    pipe.likeness_placement = Placement(chosen, reason, sizes)
    return pipe


def _placement_sizes(components: dict[str, torch.nn.Module]) -> dict[str, float]:
    """GB of weights on the GPU in the "gpu" and "fp8" placements (see ``_place``)."""
    import torch

    from pipeline.models import memory, offload

    def size(tensors: Any) -> float:
        return sum(t.numel() * t.element_size() for t in tensors) / memory.GB

    def linear_weights(modules: Any) -> list[torch.Tensor]:
        return [m.weight for module in modules for m in module.modules() if isinstance(m, torch.nn.Linear)]

    every = {name: size(m.parameters()) for name, m in components.items()}
    blocks = size(linear_weights(offload.transformer_blocks(components["transformer"])))
    encoders = [name for name in components if name.startswith("text_encoder")]
    streamed = sum(size(linear_weights([components[name]])) for name in encoders)
    return {"gpu_gb": sum(every.values()),
            "fp8_gb": sum(every.values()) - blocks / 2 - streamed}


def _place(pipe: Any, placement: str, device: str) -> None:
    """Move ``pipe`` (in host RAM) to ``device`` as ``placement`` says."""
    from pipeline.models import memory, offload

    if placement in ("gpu", "cpu"):
        pipe.to(device)
        return
    for name, module in generation_components(pipe).items():  # text encoders: used once per prompt, so streamed
        if name.startswith("text_encoder"):
            offload.stream_linear_weights(module, device)
    if placement == "fp8":
        memory.quantize_frozen_linears_fp8(pipe.transformer, device=device)
        pipe.transformer.to(device)
    else:
        offload.stream_linear_weights(pipe.transformer, device)
    pipe.vae.to(device)
    # Decodes above the VAE's tile size (1024 px for FLUX) go tile by tile, so the decode stays within the headroom
    # at 2048 px too; such images differ slightly from an untiled decode (blended tile edges).
    pipe.vae.enable_tiling()


def explain_load_failure(spec: str, exc: BaseException) -> str:
    """A user-facing sentence for why ``spec`` did not load, and what to do about it."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " ".join(str(e) for e in chain)

    def any_of(*types: type) -> bool:
        return any(isinstance(e, types) for e in chain)

    if any_of(GatedRepoError) or "gated" in text.lower():
        return (f"cannot load {spec!r}: the model is gated. Accept its licence on https://huggingface.co/{spec} "
                "while logged in, then run `hf auth login` (or set HF_TOKEN) with a token of that account.")
    if any_of(RepositoryNotFoundError) or "401" in text:
        return (f"cannot load {spec!r}: the hub refused access (no such repository, or no token). Check the name, "
                "run `hf auth login` (or set HF_TOKEN) and accept the licence on the model page.")
    if any_of(OfflineModeIsEnabled, LocalEntryNotFoundError) or "offline" in text.lower() or "connect" in text.lower():
        return (f"cannot load {spec!r}: it is not in the local cache and the hub cannot be reached (no network or "
                "HF_HUB_OFFLINE=1). Download it once on a connected machine (`hf download "
                f"{spec}`), copy the folder here and pass it to --base-model, or use --base-model tiny.")
    return (f"cannot load {spec!r} as a FluxPipeline: {type(exc).__name__}: {exc}. Pass 'tiny', a hub id such as "
            f"{FLUX_DEV!r}, or a folder saved with FluxPipeline.save_pretrained.")


def default_train_settings(spec: str, **overrides: Any) -> TrainSettings:
    """Training defaults for a base model: the quick 64 px run for the tiny models, the micro model's own, else the
    documented ones with its family's changes (``ModelFamily.train_defaults``: klein's rank 32, alpha 32)."""
    from pipeline.models.families import FamilyError, family_of

    if is_tiny(spec):
        return TrainSettings.quick(**overrides)
    if is_micro(spec):
        return TrainSettings.micro(**overrides)
    try:
        family_defaults = dict(family_of(spec).train_defaults)
    except FamilyError:  # an unreadable folder: the load that follows says why
        family_defaults = {}
    return TrainSettings(**{**family_defaults, **overrides})


MICRO_GENERATE_STEPS = 28  # the micro model's denoising steps (FLUX's; 40 drew more faces than 12: README)


def default_test_generate_settings(spec: str, resolution: int = 512) -> GenerateSettings:
    """Test generations for a base model (assessment, samples, playground defaults): 64 px and 4 steps on the tiny
    models, MICRO_RESOLUTION px and MICRO_GENERATE_STEPS on the micro model, ``resolution`` px otherwise at a known hub
    model's own steps and guidance (FLUX.1 [dev] 28 and 3.5, [schnell] 4 and 0, base klein 50 and CFG 4), or its
    family's. The prompt is a placeholder to replace."""
    from pipeline.models.families import FamilyError, FamilyId, family_of, variant_of

    try:
        family = family_of(spec)
    except FamilyError:  # an unreadable folder: the load that follows says why
        family = None
    # The family's test guidance: FLUX.1 [dev]'s 3.5 (GenerateSettings' default), base klein's CFG 4.0.
    guidance = GenerateSettings.guidance if family is None else family.default_guidance(spec)
    if is_tiny(spec):
        return GenerateSettings(prompt="-", steps=4, width=64, height=64, guidance=guidance)
    if is_micro(spec):
        return GenerateSettings(prompt="-", steps=MICRO_GENERATE_STEPS, width=MICRO_RESOLUTION,
                                height=MICRO_RESOLUTION)
    if (variant := variant_of(spec)) is not None:  # a known hub model: its own (schnell: 4 steps, no guidance)
        steps, guidance = variant.steps, variant.guidance
    else:
        steps = 28 if family is None or family.id is FamilyId.FLUX1 else family.variants[0].steps
    return GenerateSettings(prompt="-", steps=steps, width=resolution, height=resolution, guidance=guidance)


# --- the tiny model, built in code -------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character map (the alphabet of byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def clip_tokenizer(words: tuple[str, ...] = _COMMON_WORDS) -> CLIPTokenizer:
    """A byte-level BPE tokenizer: every byte is a token (so any text tokenizes), plus ``words`` whole."""
    from transformers import CLIPTokenizer
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        if len(word) < 2:
            continue
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for nxt in pieces[1:]:
            merge = (current, nxt)
            current = current + nxt
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(current, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def t5_tokenizer(words: tuple[str, ...] = _COMMON_WORDS, max_length: int = 512) -> T5Tokenizer:
    """A unigram tokenizer over letters, digits, punctuation and ``words`` (sentencepiece-style '▁' pieces)."""
    from transformers import T5Tokenizer
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    seen = {p for p, _ in pieces}

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    for word in words:
        add("▁" + word, -2.0)
    add("▁", -3.0)
    # Latin-1 letters too, so names such as "Zoë" or "Müller" keep their letters instead of becoming <unk>.
    latin1 = "".join(chr(c) for c in range(0xC0, 0x100) if c not in (0xD7, 0xF7))
    for ch in string.ascii_letters + string.digits + string.punctuation + latin1:
        add("▁" + ch, -5.0)
        add(ch, -6.0)
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def _build_tiny_pipeline() -> FluxPipeline:
    """FLUX.1-dev's architecture at toy width, seeded so every machine builds the same weights."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tok_clip = clip_tokenizer()
        tok_t5 = t5_tokenizer()
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tok_clip), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
            bos_token_id=tok_clip.bos_token_id, eos_token_id=tok_clip.eos_token_id,
            pad_token_id=tok_clip.pad_token_id,
        ))
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(tok_t5), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
            pad_token_id=tok_t5.pad_token_id, eos_token_id=tok_t5.eos_token_id,
            decoder_start_token_id=tok_t5.pad_token_id,
        ))
        # 4 blocks: 8x spatial downscale and 16 latent channels, like FLUX's VAE, so 64 px -> 8x8 latents.
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=16,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=64,
            scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
        )
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        )
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )
    for module in (clip, t5, vae, transformer):
        module.eval()
    return FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tok_clip, text_encoder_2=t5,
        tokenizer_2=tok_t5, transformer=transformer,
    )


def quiet_library_logs() -> None:
    """Hide diffusers/transformers progress bars and chatter (e.g. 'No LoRA keys … CLIPTextModel'): our own events
    report progress, and those lines drown the log a user reads.

    Libraries not loaded yet are quietened through their environment and the hub's switch, not by importing them:
    diffusers brings torch, 3 s of the app's start. Loading a pipeline calls this again for diffusers' own bars.
    """
    import huggingface_hub.utils

    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    huggingface_hub.utils.disable_progress_bars()  # transformers takes its own bars' switch from it when it loads
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        module = sys.modules.get(name)
        if module is not None:
            module.set_verbosity_error()
            module.disable_progress_bar()

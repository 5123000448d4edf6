"""Image-to-video: a still of the person, drawn with their LoRA, animated by a video model (issue 36).

The video model is a setting like the base model (``AppSettings.video_model``, ``--video-model``):

* ``""`` / ``"morph"``: no video model; ``pipeline.video.clip`` makes a morph between stills instead.
* ``"tiny"``: Wan 2.2 TI2V-5B's layout — diffusers' real ``WanImageToVideoPipeline`` with a ``WanTransformer3DModel``,
  an ``AutoencoderKLWan`` (48 latent channels, 2×2 patchified pixels, 16× space and 4× time), a UMT5 text encoder
  with a tokenizer built in code and no image encoder — at toy width with seeded random weights. It is built once
  under the data dir (``base_models/tiny-video``) and loaded from there like a real model. Its frames are noise that
  moves: it proves the path (still → video model → MP4 → likeness per frame), not the pictures.
* a hub id or a local diffusers folder of Wan 2.2 TI2V-5B, Wan 2.1/2.2 I2V or LTX-Video 0.9.0/0.9.1, loaded with
  ``WanImageToVideoPipeline`` or ``LTXImageToVideoPipeline`` (chosen from its ``model_index.json``: the Wan 2.2
  TI2V-5B repo names the text-to-video class, which would ignore the still).

Memory: one video model is loaded at a time (``VideoModels``), shared by every workspace. On a GPU it is loaded in
bfloat16 with ``enable_model_cpu_offload``: its weights wait in host memory and each part (text encoder, transformer,
VAE) is on the GPU only while it runs; the VAE decodes in tiles. The GPU has one user at a time: a clip holds the
image generator (``Generator.held``) from its still to its last frame, and on a GPU unloads the image model before it
animates; an image generation that loads the image model onto a GPU drops the video model first
(``VideoModels.release``, hooked into ``Generators.on_load``). On the CPU both stay (the tiny model is a few hundred
kB).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.events import EventCallback, Progress, StopCheck, ignore, never
from pipeline.models.built_models import ensure_built
from pipeline.settings import GenerateSettings, ImageToVideoSettings
from pipeline.video.choice import VideoModelChoice, free_gpu_gb, video_model_choice
from pipeline.video.job import VideoMonitors
from pipeline.weights_lock import WEIGHTS_LOCK

if TYPE_CHECKING:  # torch and diffusers: imported when a clip is asked for, not when the app starts
    from PIL import Image

    from pipeline.generation.generator import Generator
    from pipeline.video.clip import VideoResult
    from pipeline.video.clip_likeness import PersonReference

logger = logging.getLogger(__name__)

TINY_VIDEO_MODEL = "tiny"
IMAGE_TO_VIDEO = "image-to-video"  # VideoResult.kind of a clip a video model made
# Bumped when the tiny video model's layout changes, so an old saved copy is rebuilt rather than half-loaded.
TINY_VIDEO_VERSION = "1"
_TINY_FOLDER = "tiny-video"
_VERSION_FILE = "likeness_tiny_video_version.txt"
# The image-to-video class for each pipeline a model folder names (Wan 2.2 TI2V-5B's repo names WanPipeline).
I2V_CLASSES = {"WanPipeline": "WanImageToVideoPipeline", "WanImageToVideoPipeline": "WanImageToVideoPipeline",
               "LTXPipeline": "LTXImageToVideoPipeline", "LTXImageToVideoPipeline": "LTXImageToVideoPipeline"}
# Words of motion prompts, whole in the tiny tokenizer (anything else is spelt letter by letter).
_WORDS = ("a", "an", "the", "of", "in", "on", "with", "and", "to", "at", "person", "man", "woman", "face", "photo",
          "portrait", "smiling", "smiles", "turns", "head", "slowly", "camera", "looks", "waves", "hand", "walks",
          "blinks", "nods", "wind", "hair", "moves", "left", "right", "sks", "ohwx")


class ClipStopped(Exception):
    """The clip was stopped between two denoising steps: a video model makes every frame at once, so nothing is
    kept (no half-denoised video is decoded, no file is written)."""


def is_tiny_video(spec: str) -> bool:
    return spec == TINY_VIDEO_MODEL or (Path(spec) / _VERSION_FILE).is_file()


def default_animate_settings(spec: str, **fields: Any) -> ImageToVideoSettings:
    """A video model's defaults: 4 steps without guidance for the tiny one, the model cards' 50 steps and guidance
    (Wan 5.0, LTX-Video 3.0) for the real ones."""
    if is_tiny_video(spec):
        defaults: dict[str, Any] = {"steps": 4, "guidance": 1.0}
    else:
        defaults = {"steps": 50, "guidance": 3.0 if "ltx" in spec.lower() else 5.0,
                    "negative_prompt": "static, blurred, low quality, distorted face"}
    return ImageToVideoSettings(**(defaults | fields))


# --------------------------------------------------------------------------------------------------- loading
def resolve_video_model(spec: str, data_dir: Path) -> str:
    """What ``from_pretrained`` loads: "tiny" becomes its folder (built on first use); hub ids and folders stay."""
    spec = spec.strip()
    if spec == TINY_VIDEO_MODEL:
        return str(ensure_tiny_video_model(data_dir))
    if Path(spec).is_dir() or (spec.count("/") == 1 and not spec.startswith((".", "/"))):
        return spec
    raise ValueError(f"video model {spec!r} is neither 'tiny', an existing folder, nor a hub id of the form "
                     "owner/name (for example Wan-AI/Wan2.2-TI2V-5B-Diffusers); --video-model morph makes a morph, "
                     "auto chooses by GPU memory")


def pipeline_class(path: str) -> type:
    """The image-to-video pipeline class for a model folder or hub id, from its ``model_index.json``."""
    import diffusers

    name = diffusers.DiffusionPipeline.load_config(path).get("_class_name", "")
    if name not in I2V_CLASSES:
        raise ValueError(f"video model {path!r} is a {name or 'folder without model_index.json'}; an image-to-video "
                         f"model is one of {sorted(set(I2V_CLASSES))} (Wan 2.2 TI2V-5B, Wan I2V, LTX-Video 0.9.0/1)")
    return getattr(diffusers, I2V_CLASSES[name])


def runs_on_gpu(spec: str) -> bool:
    """Whether the video model of ``spec`` runs on a GPU (the tiny one stays on the CPU)."""
    import torch

    return torch.cuda.is_available() and not is_tiny_video(spec)


def load_video_pipeline(spec: str, data_dir: Path) -> Any:
    """The video pipeline of ``spec``: on the CPU in float32; on a GPU in bfloat16 with model CPU offload."""
    import torch

    from pipeline.models.base_model import quiet_library_logs

    quiet_library_logs()  # our own Progress events instead of the libraries' bars
    path = resolve_video_model(spec, data_dir)
    cls = pipeline_class(path)
    on_gpu = runs_on_gpu(path)
    logger.info("loading video model %s as %s", spec, cls.__name__)
    with WEIGHTS_LOCK:
        pipe = cls.from_pretrained(path, dtype=torch.bfloat16 if on_gpu else torch.float32)
        if on_gpu:
            pipe.enable_model_cpu_offload()  # each part on the GPU only while it runs
            if hasattr(pipe.vae, "enable_tiling"):
                pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    return pipe


class VideoModels:
    """The app's loaded video model: one at a time, loaded on first use, shared by every workspace."""

    def __init__(self, shared_dir: Path) -> None:
        self.shared_dir = Path(shared_dir)
        self._spec: str | None = None
        self._pipe: Any = None
        self._lock = threading.Lock()
        self.monitors = VideoMonitors()  # the clips in the queue, followed by the pages that asked for them
        self._choices: dict[str, VideoModelChoice] = {}
        self._choice_lock = threading.Lock()

    def chosen(self, setting: str | None, free_gb: Callable[[], float | None] = free_gpu_gb) -> VideoModelChoice:
        """The ``--video-model`` setting as a choice; ``auto`` measures ``free_gb()`` once (at the first page or
        clip), so the page and every clip agree."""
        key = (setting or "").strip()
        with self._choice_lock:
            if key not in self._choices:
                self._choices[key] = video_model_choice(key, free_gb)
            return self._choices[key]

    @contextlib.contextmanager
    def activated(self, spec: str) -> Iterator[Any]:
        """Hold the video model of ``spec`` (loading it, and dropping another, first) while a clip is made."""
        with self._lock:
            if self._spec != spec:
                self._drop()
                self._pipe, self._spec = load_video_pipeline(spec, self.shared_dir), spec
            yield self._pipe

    def release(self) -> None:
        """Drop the loaded video model (the next clip loads it again)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._pipe is None:
            return
        from pipeline.models.memory import empty_caches

        self._pipe, self._spec = None, None
        empty_caches()


# ------------------------------------------------------------------------------------------------- animating
def size_multiple(pipe: Any) -> int:
    """The pixels a frame's width and height must be a multiple of: the VAE's downscale × the patch size."""
    if hasattr(pipe, "vae_scale_factor_spatial"):  # Wan
        return int(pipe.vae_scale_factor_spatial) * int(pipe.transformer.config.patch_size[1])
    return int(pipe.vae_spatial_compression_ratio) * int(pipe.transformer_spatial_patch_size)  # LTX-Video


def frame_multiple(pipe: Any) -> int:
    """A clip has k × this + 1 frames (the VAE's time downscale: 4 for Wan, 8 for LTX-Video)."""
    return int(getattr(pipe, "vae_scale_factor_temporal", None) or pipe.vae_temporal_compression_ratio)


def frames_to_make(pipe: Any, asked: int) -> int:
    """The least count the model can make that holds ``asked`` frames."""
    step = frame_multiple(pipe)
    return -(-(asked - 1) // step) * step + 1


def fit_size(pipe: Any, width: int, height: int) -> tuple[int, int]:
    """``width`` × ``height`` rounded down to the model's multiple (at least one multiple)."""
    m = size_multiple(pipe)
    return max(m, width // m * m), max(m, height // m * m)


def animate(pipe: Any, still: Image.Image, clip: ImageToVideoSettings, *, on_event: EventCallback = ignore,
            should_stop: StopCheck = never) -> list[Image.Image]:
    """``clip.frames`` frames of a clip that starts from ``still`` and moves as ``clip.prompt`` says.

    Reports ``Progress(stage="video")`` after every denoising step; when ``should_stop`` turns true it raises
    ``ClipStopped`` out of the step (nothing is decoded) and frees the offloaded parts' GPU memory on the way out.
    """
    import numpy as np
    import torch
    from PIL import Image

    from pipeline.models.base_model import max_text_tokens

    clip.validate()
    width, height = fit_size(pipe, *still.size)
    kwargs: dict[str, Any] = {
        "image": still.convert("RGB").resize((width, height), Image.LANCZOS), "prompt": clip.prompt,
        "negative_prompt": clip.negative_prompt or None, "width": width, "height": height,
        "num_frames": frames_to_make(pipe, clip.frames), "num_inference_steps": clip.steps,
        "guidance_scale": clip.guidance, "generator": torch.Generator("cpu").manual_seed(clip.seed),
        "output_type": "np", "max_sequence_length": max_text_tokens(pipe.tokenizer),
        "callback_on_step_end": _step_callback(clip.steps, on_event, should_stop)}
    if not hasattr(pipe, "vae_scale_factor_spatial"):  # LTX-Video: its RoPE needs the frame rate
        kwargs["frame_rate"] = clip.fps
    try:
        with torch.inference_mode():
            video = pipe(**kwargs).frames[0]  # (frames, height, width, 3), floats 0–1
    except ClipStopped:
        pipe.maybe_free_model_hooks()  # the pipeline's own call at its end was skipped
        raise
    return [Image.fromarray((np.clip(f, 0, 1) * 255).round().astype(np.uint8)) for f in video[:clip.frames]]


def _step_callback(steps: int, on_event: EventCallback, should_stop: StopCheck) -> Any:
    def on_step(_pipe: Any, index: int, _timestep: Any, tensors: dict) -> dict:
        on_event(Progress("video", index + 1, steps, f"video model: step {index + 1} of {steps}"))
        if should_stop():
            raise ClipStopped(f"video stopped after step {index + 1} of {steps}: a video model makes every frame "
                              "at once, so nothing was kept")
        return tensors
    return on_step


def why_animated(spec: str, still: str = "") -> str:
    """Said on the page and in the JSON: which still, which video model moved it, and what its frames are worth."""
    first = f"your generation {still}" if still else "a still drawn with the model's LoRA"
    text = f"{first}, animated by the image-to-video model {spec!r}"
    if is_tiny_video(spec):
        text += (" (the tiny random video model built in code: its frames are noise that moves; it proves the path, "
                 "not the pictures)")
    return text


def make_image_to_video(generator: Generator, video_models: VideoModels, spec: str, still: GenerateSettings,
                        clip: ImageToVideoSettings, *, lora_path: Path | None, out_path: Path,
                        person: PersonReference | None, model: str, base_model: str, model_id: str = "",
                        picked: Image.Image | None = None, picked_ref: str = "", on_event: EventCallback = ignore,
                        should_stop: StopCheck = never) -> VideoResult:
    """A clip with motion, scored: 1. the still with the person's LoRA (what the morph's frame 0 would be), or the
    generation ``picked`` from their own (``picked_ref`` names it in the JSON); 2. animated by the video model
    ``spec``; 3. frames → MP4; 4. every frame's likeness, the JSON beside it and the MP4's metadata
    (``score_and_tag``, as for the morph). ``ClipStopped`` when stopped: nothing is written."""
    from pipeline.video.clip import VideoResult, encode_mp4, score_and_tag
    from pipeline.video.clip_likeness import likeness_path

    with generator.held():  # the GPU, from the still to the last frame: no image is drawn meanwhile
        images = [picked] if picked is not None else generator.generate(still, lora_path=lora_path,
                                                                        on_event=on_event, should_stop=should_stop)
        if not images:
            raise ClipStopped("video stopped while its still was drawn: nothing was kept")
        if runs_on_gpu(spec):
            generator.unload()  # the video model's parts need the GPU; the next generation loads it again
        with video_models.activated(spec) as pipe:
            frames = animate(pipe, images[0], clip, on_event=on_event, should_stop=should_stop)
    path, _written = encode_mp4(frames, out_path, width=frames[0].width, height=frames[0].height, fps=clip.fps)
    made = VideoResult(video=path, likeness_json=likeness_path(path), kind=IMAGE_TO_VIDEO,
                       why=why_animated(spec, picked_ref),
                       prompt=still.prompt, prompt_b=clip.prompt, seed=still.seed, model=model,
                       base_model=base_model, frames=len(frames), fps=clip.fps, width=frames[0].width,
                       height=frames[0].height, likeness=None, video_model=spec, model_id=model_id,
                       still=picked_ref)
    return score_and_tag(made, person, on_event=on_event)


# ----------------------------------------------------------------------------------- the tiny model, in code
def ensure_tiny_video_model(data_dir: Path) -> Path:
    """The folder of the tiny image-to-video model under ``data_dir/base_models``, built there on first use."""
    return ensure_built(Path(data_dir) / "base_models" / _TINY_FOLDER, version=TINY_VIDEO_VERSION,
                        version_file=_VERSION_FILE, build=build_tiny_video_pipeline, what="tiny image-to-video model")


def build_tiny_video_pipeline(seed: int = 0) -> Any:
    """Wan 2.2 TI2V-5B's layout at toy width (72 k parameters), seeded so every machine builds the same weights."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from pipeline.models.base_model import t5_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = t5_tokenizer(_WORDS, max_length=32)  # short motion prompts: 32 tokens, not UMT5's 512
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id))
        # Wan 2.2's VAE: 2×2 patchified pixels (12 channels), 16× space, 4× time, 48 latent channels.
        vae = AutoencoderKLWan(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
                               latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1],
                               num_res_blocks=1, scale_factor_spatial=16, scale_factor_temporal=4,
                               temperal_downsample=[False, True, True])
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=48, out_channels=48,
            text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    for module in (text_encoder, vae, transformer):
        module.eval()
    # TI2V: the still is encoded into the first latent frame (expand_timesteps), so no image encoder.
    return WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                                   scheduler=scheduler, image_encoder=None, image_processor=None,
                                   transformer_2=None, boundary_ratio=None, expand_timesteps=True)

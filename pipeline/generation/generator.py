"""Image generation with a base model and (optionally) a person's LoRA: the playground, the test images, the video.

One ``Generator`` holds one loaded FluxPipeline (loaded on first use) and swaps LoRAs on it as PEFT adapters, so
changing model or LoRA scale never reloads the base. Every image carries its prompt, settings and model in its PNG
text chunks, so a downloaded file says how to make it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, PngImagePlugin

from pipeline.events import EventCallback, Message, Progress, StopCheck, ignore, never
from pipeline.models import offload
from pipeline.models.base_model import Placement, generation_components, generation_device
from pipeline.settings import GenerateSettings
from pipeline.weights_lock import WEIGHTS_LOCK

logger = logging.getLogger(__name__)

# LoRAs kept loaded as adapters at once; each costs rank × width memory only, but a library can be long.
MAX_LOADED_LORAS = 4

DEFAULT_TEST_PROMPTS: tuple[str, ...] = (
    "a portrait photo of {trigger}, looking at the camera, soft natural light",
    "a close-up headshot of {trigger} smiling, studio lighting, plain background",
    "{trigger} laughing, candid photo outdoors in a park, golden hour",
    "{trigger} with a serious expression, black and white photo, dramatic side light",
    "an oil painting of {trigger}, classical portrait style",
    "{trigger} as a watercolor illustration, soft pastel colors",
    "a photo of {trigger} in a busy city street at night, neon lights",
    "{trigger} wearing a winter coat on a snowy mountain, smiling",
)


class GenerationError(ValueError):
    """A generation request that cannot run; the message names the argument and the fix."""


def image_metadata(image: Image.Image) -> dict[str, str]:
    """The text metadata written by ``Generator.generate`` (from a fresh image or one re-opened from PNG)."""
    text = dict(getattr(image, "text", {}) or {})
    text.update({k: v for k, v in image.info.items() if isinstance(v, str)})
    return text


def save_png(image: Image.Image, path: Path) -> Path:
    """Save as PNG with the image's text metadata (prompt, settings, model) kept in tEXt chunks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    for key, value in image_metadata(image).items():
        info.add_text(key, value)
    image.save(path, format="PNG", pnginfo=info)
    return path


@dataclass(frozen=True)
class Variant:
    """One side of a comparison: a LoRA (or none) at a scale, with the label shown above its column."""

    label: str
    lora_path: Path | None = None
    lora_scale: float = 1.0


@dataclass(frozen=True)
class Comparison:
    """Two variants generated from the same prompt and seeds; ``sheet`` shows them side by side, a row per seed."""

    settings: GenerateSettings
    left: Variant
    right: Variant
    left_images: tuple[Image.Image, ...]
    right_images: tuple[Image.Image, ...]
    sheet: Image.Image


class Generator:
    """A loaded base model that generates with any LoRA trained on it. Thread-safe: one generation at a time."""

    def __init__(self, base_model: str, data_dir: Path, *, device: str | None = None, placement: str = "auto",
                 before_load: Callable[[], None] = lambda: None, lock: threading.RLock | None = None) -> None:
        self.base_model = base_model
        self.data_dir = Path(data_dir)
        self.device = device or generation_device()
        self.placement = placement  # asked for: "auto" or one of memory.PLACEMENTS
        # Called before the weights load onto a GPU: the video model is dropped there (``Generators.before_load``).
        self.before_load = before_load
        self._pipe: Any = None
        # The GPU's lock as well as this generator's: a clip's animation holds it too (``held``); ``Generators``
        # gives every base's generator the same one.
        self._lock = lock or threading.RLock()
        self._adapters: OrderedDict[str, str] = OrderedDict()  # LoRA file key -> adapter name, oldest first

    # ------------------------------------------------------------------ loading
    @property
    def pipeline(self) -> Any:
        """The FluxPipeline, loaded on first use."""
        with self._lock:
            if self._pipe is None:
                from pipeline.models.base_model import load_pipeline

                if self.device != "cpu":  # on a CPU both models simply stay in memory
                    self.before_load()
                logger.info("loading base model %s", self.base_model)
                self._pipe = load_pipeline(self.base_model, self.data_dir, device=self.device,
                                           placement=self.placement)
            return self._pipe

    @property
    def loaded_placement(self) -> Placement | None:
        """Where the loaded pipeline's weights live and why; None before loading."""
        with self._lock:
            return None if self._pipe is None else self._pipe.likeness_placement

    @property
    def placement_in_use(self) -> str | None:
        """"gpu", "fp8", "stream" or "cpu"; None before loading."""
        placement = self.loaded_placement
        return None if placement is None else placement.name

    def could_place_better(self) -> bool:
        """Whether "auto" would now choose a better placement than the one in use, counting the GPU memory this
        generator itself holds as free (it would be, after an unload)."""
        from pipeline.models import memory

        with self._lock:
            in_use = self.loaded_placement
            free = memory.free_gpu_gb(self.device)
            if self.placement != "auto" or in_use is None or in_use.name not in memory.PLACEMENTS or free is None:
                return False
            held = self.gpu_gb_held()
        best, _reason = memory.choose_generation_placement("auto", free + held, **in_use.sizes)
        return memory.PLACEMENTS.index(best) < memory.PLACEMENTS.index(in_use.name)

    def gpu_gb_held(self) -> float:
        """The GPU memory this generator's weights hold (GB; 0 unloaded or on the CPU)."""
        from pipeline.models import memory

        with self._lock:
            if self._pipe is None:
                return 0.0
            modules = list(generation_components(self._pipe).values())
            return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()]
                       if t.device.type == "cuda") / memory.GB

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the generator without drawing: what else uses the GPU (a clip's animation) holds it, so an image
        generation and a clip never run on it at once. Reentrant: ``generate`` may be called inside."""
        with self._lock:
            yield

    def unload(self) -> None:
        """Drop the pipeline and its LoRAs (the next use loads and places it again)."""
        from pipeline.models.memory import empty_caches

        with self._lock:
            self._pipe = None
            self._adapters.clear()
        empty_caches()

    @contextlib.contextmanager
    def activated(self, lora_path: Path | None, lora_scale: float = 1.0) -> Iterator[Any]:
        """Hold the generator and yield its pipeline with only ``lora_path`` active at ``lora_scale`` (or no LoRA)."""
        with self._lock:
            pipe = self.pipeline
            if lora_path is None:
                if self._adapters:
                    pipe.disable_lora()
            else:
                name = self._adapter_for(Path(lora_path))
                pipe.enable_lora()
                pipe.set_adapters([name], adapter_weights=[float(lora_scale)])
            yield pipe

    def _adapter_for(self, lora_path: Path) -> str:
        if not lora_path.exists():
            raise GenerationError(f"lora_path: {str(lora_path)!r} does not exist; pick a trained model or no LoRA")
        stat = lora_path.stat()
        # Keyed by content identity, so a LoRA rewritten at the same path (a newer checkpoint) is loaded afresh.
        key = f"{lora_path.resolve()}:{stat.st_mtime_ns}:{stat.st_size}"
        if key in self._adapters:
            self._adapters.move_to_end(key)
            return self._adapters[key]
        pipe = self.pipeline
        with WEIGHTS_LOCK:  # adding and removing adapters builds and drops modules (pipeline.weights_lock)
            return self._load_adapter(pipe, lora_path, key)

    def _load_adapter(self, pipe: Any, lora_path: Path, key: str) -> str:
        while len(self._adapters) >= MAX_LOADED_LORAS:
            _, old = self._adapters.popitem(last=False)
            pipe.delete_adapters(old)
        name = "lora_" + hashlib.sha1(key.encode()).hexdigest()[:12]
        try:
            with warnings.catch_warnings():
                # Several named adapters on one transformer is the point here; peft warns about it every time.
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                with offload.shapes_only():  # streamed weights are read for their shapes only, not copied
                    pipe.load_lora_weights(str(lora_path), adapter_name=name)
        # diffusers' format converters assert on shapes they do not expect, so AssertionError is a bad file too.
        except (ValueError, KeyError, RuntimeError, OSError, AssertionError) as exc:
            raise GenerationError(
                f"lora_path: {str(lora_path)!r} is not a LoRA for this base model ({self.base_model}): "
                f"{type(exc).__name__}: {exc}. "
                "Use a LoRA trained on the same base model, in diffusers format."
            ) from exc
        self._adapters[key] = name
        logger.info("loaded LoRA %s as adapter %s", lora_path, name)
        return name

    # --------------------------------------------------------------- generating
    def generate(
        self,
        settings: GenerateSettings,
        *,
        lora_path: Path | None = None,
        on_event: EventCallback = ignore,
        should_stop: StopCheck = never,
    ) -> list[Image.Image]:
        """``settings.num_images`` images; image i uses seed ``settings.seed + i``, so each is reproducible alone.

        Reports ``Progress(stage="generate")`` after every denoising step. When ``should_stop`` turns true the images
        finished so far are returned.
        """
        settings.validate()
        total = settings.steps * settings.num_images
        images: list[Image.Image] = []
        first_load = self.placement_in_use is None
        with self.activated(lora_path, settings.lora_scale) as pipe:
            if first_load:  # say where the weights went: a streamed model is slow, and the user should know why
                placement = pipe.likeness_placement
                on_event(Message(f"base model loaded: {placement.reason}",
                                 level="warning" if placement.name == "stream" else "info"))
            for index in range(settings.num_images):
                if should_stop():
                    break
                seed = settings.seed + index

                def on_step(p: Any, step: int, _t: Any, tensors: dict, number: int = index) -> dict:
                    done = number * settings.steps + step + 1
                    on_event(Progress("generate", done, total, f"image {number + 1}: step {step + 1}"))
                    if should_stop():
                        p._interrupt = True  # diffusers' documented way to end the denoising loop early
                    return tensors

                image = self.render(pipe, settings, seed=seed, on_step=on_step)
                if pipe.interrupt:
                    break
                single = dataclasses.replace(settings, seed=seed, num_images=1)
                images.append(self._with_metadata(image, single, lora_path))
        if len(images) < settings.num_images:
            on_event(Message(f"stopped after {len(images)} of {settings.num_images} images", level="warning"))
        return images

    def render(self, pipe: Any, settings: GenerateSettings, *, seed: int, on_step: Any = None,
               latents: torch.Tensor | None = None,
               embeds: tuple[torch.Tensor, torch.Tensor] | None = None) -> Image.Image:
        """One image, no metadata, for callers inside ``activated()``: from ``settings.prompt`` or pre-computed
        embeddings (FLUX.1: prompt and pooled), from the seed's noise or given packed ``latents``. The prompt,
        negative prompt and guidance arguments are the base model's family's (FLUX.1's true CFG for a negative
        prompt; base klein's real CFG at ``settings.guidance``)."""
        from pipeline.models.families import family_of_pipeline

        result = pipe(
            height=settings.height,
            width=settings.width,
            num_inference_steps=settings.steps,
            # A CPU generator gives the same noise for a seed on every device.
            generator=torch.Generator("cpu").manual_seed(seed),
            latents=latents,
            callback_on_step_end=on_step,
            **family_of_pipeline(pipe).render_kwargs(pipe, settings, embeds),
        )
        return result.images[0]

    def _with_metadata(self, image: Image.Image, settings: GenerateSettings, lora_path: Path | None) -> Image.Image:
        lora = str(lora_path) if lora_path else ""
        image.info.update({
            "prompt": settings.prompt,
            "negative_prompt": settings.negative_prompt,
            "seed": str(settings.seed),
            "model": self.base_model,
            "lora": lora,
            "lora_scale": str(settings.lora_scale),
            "settings": json.dumps(dataclasses.asdict(settings)),
            # The line most image tools (A1111, ComfyUI readers, civitai) show as "generation data".
            "parameters": (
                f"{settings.prompt}\nNegative prompt: {settings.negative_prompt}\n"
                f"Steps: {settings.steps}, Sampler: FlowMatchEuler, CFG scale: {settings.guidance}, "
                f"Seed: {settings.seed}, Size: {settings.width}x{settings.height}, Model: {self.base_model}"
                + (f", Lora: {Path(lora).name}:{settings.lora_scale}" if lora else "")
            ),
        })
        return image

    def compare(
        self,
        settings: GenerateSettings,
        left: Variant,
        right: Variant,
        *,
        on_event: EventCallback = ignore,
        should_stop: StopCheck = never,
    ) -> Comparison:
        """The same prompt and seeds through two LoRAs, or one LoRA at two scales, side by side."""
        sides: list[list[Image.Image]] = []
        for number, variant in enumerate((left, right)):
            side_settings = dataclasses.replace(settings, lora_scale=variant.lora_scale)

            def relay(event: Any, half: int = number) -> None:
                if isinstance(event, Progress):
                    event = Progress(event.stage, half * event.total + event.done, 2 * event.total, event.message)
                on_event(event)

            sides.append(self.generate(side_settings, lora_path=variant.lora_path, on_event=relay,
                                       should_stop=should_stop))
        sheet = comparison_sheet(sides[0], sides[1], (left.label, right.label))
        return Comparison(settings, left, right, tuple(sides[0]), tuple(sides[1]), sheet)


def comparison_sheet(left: Sequence[Image.Image], right: Sequence[Image.Image], labels: tuple[str, str]) -> Image.Image:
    """Two columns of images under their labels, one row per seed."""
    rows = max(len(left), len(right), 1)
    sample = (list(left) + list(right) or [Image.new("RGB", (64, 64))])[0]
    cell_w, cell_h = sample.size
    header = 20
    sheet = Image.new("RGB", (2 * cell_w, header + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for column, (label, images) in enumerate(zip(labels, (left, right), strict=True)):
        draw.text((column * cell_w + 4, 4), label, fill="black")
        for row, image in enumerate(images):
            sheet.paste(image.convert("RGB").resize((cell_w, cell_h)), (column * cell_w, header + row * cell_h))
    return sheet

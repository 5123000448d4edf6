"""Captions for the training crops: BLIP (the caption model clip-interrogator uses) where its weights are already
on disk, otherwise templates. Never downloads: the Hugging Face cache is checked offline first.

A LoRA caption should name the person by the trigger word and describe what changes between photos (expression,
pose, light), so those stay promptable instead of being baked into the face.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from PIL import Image

from pipeline.weights_lock import WEIGHTS_LOCK

logger = logging.getLogger(__name__)

DEFAULT_CAPTION_MODEL = "blip-large"


@functools.cache
def caption_models() -> dict[str, str]:
    """clip-interrogator's own table of caption models, so we use the same weights it would (imported on first
    use: clip-interrogator pulls in open_clip and takes seconds to import)."""
    try:
        from clip_interrogator.clip_interrogator import CAPTION_MODELS
    except ImportError:  # pragma: no cover - clip-interrogator is in requirements.txt
        return {"blip-large": "Salesforce/blip-image-captioning-large"}
    return dict(CAPTION_MODELS)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class CaptionHints:
    """What the classifier measured, turned into words by the template captioner."""

    smiling: bool | None = None
    yaw: float | None = None  # degrees, positive turned to image right
    lighting: str | None = None  # the lighting group, e.g. "soft, neutral, front, normal"


def blip_available(model_name: str = DEFAULT_CAPTION_MODEL) -> bool:
    """Whether the BLIP weights are in the local Hugging Face cache (checked without any network access)."""
    repo = caption_models().get(model_name, model_name)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    if not isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return False
    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in _WEIGHT_FILES)


@functools.cache
def _blip(model_name: str):  # processor, model), imported lazily: transformers is slow to import
    from transformers import AutoProcessor, BlipForConditionalGeneration

    repo = caption_models().get(model_name, model_name)
    logger.info("loading caption model %s from the local cache", repo)
    with WEIGHTS_LOCK:  # loads patch torch process-wide (pipeline.weights_lock)
        processor = AutoProcessor.from_pretrained(repo, local_files_only=True)
        model = BlipForConditionalGeneration.from_pretrained(repo, local_files_only=True).eval()
    return processor, model


def blip_caption(image: Image.Image, model_name: str = DEFAULT_CAPTION_MODEL) -> str:
    """BLIP's description of ``image`` (raises OSError where the weights are not cached)."""
    import torch

    processor, model = _blip(model_name)
    inputs = processor(images=image.convert("RGB"), return_tensors="pt")
    with torch.inference_mode():
        tokens = model.generate(**inputs, max_new_tokens=40, num_beams=3)
    return processor.batch_decode(tokens, skip_special_tokens=True)[0].strip()


def template_caption(trigger_word: str, hints: CaptionHints | None = None) -> str:
    """"a photo of TRIGGER person", plus the expression, head turn and light where known."""
    parts = [f"a photo of {trigger_word} person"]
    if hints is not None:
        if hints.smiling is not None:
            parts.append("smiling" if hints.smiling else "neutral expression")
        if hints.yaw is not None and abs(hints.yaw) > 15:
            parts.append("head turned slightly")
        if hints.lighting:
            quality = hints.lighting.split(",")[0].strip()
            if quality in ("soft", "harsh"):
                parts.append(f"{quality} light")
    return ", ".join(parts)


class Captioner:
    """Captions with BLIP when its weights are local, else templates; ``name`` says which ("blip" or "template")."""

    def __init__(self, trigger_word: str, *, use_blip: bool = True, model_name: str = DEFAULT_CAPTION_MODEL) -> None:
        if not trigger_word.strip():
            raise ValueError("trigger_word: must not be empty; every caption has to contain it")
        self.trigger_word = trigger_word.strip()
        self.model_name = model_name
        self.name = "blip" if use_blip and blip_available(model_name) else "template"
        if use_blip and self.name == "template":
            logger.info("BLIP weights not in the local cache: template captions")

    def caption(self, image: Image.Image, hints: CaptionHints | None = None) -> str:
        if self.name == "blip":
            try:
                described = blip_caption(image, self.model_name)
            except (OSError, RuntimeError, ValueError) as exc:
                logger.warning("BLIP failed (%s); template caption instead", exc)
                self.name = "template"
            else:
                return f"a photo of {self.trigger_word} person, {described}"
        return template_caption(self.trigger_word, hints)

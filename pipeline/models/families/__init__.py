"""Base-model families: what training, generation and export must know about one kind of base model.

diffusers keeps one folder per pipeline family; here each family is one module (``flux1.py``, ``flux2.py``) with one
object that answers, for its models: the diffusers classes, prompt encoding into the tensors the trainer caches,
latent encoding and normalisation, the training loss's inputs (packing, position ids, guidance or none), the sigma
shift, the LoRA target layers, the kohya key layout, generation defaults and the variants it offers (hub id,
licence, sizes for the memory model). The trainer, the generator, the export and the base-model resolver ask
``family_of(spec)`` instead of assuming FLUX.1. Adding a family is one module here, registered in ``_REGISTRY``, plus
its tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.models.families.base import (
    BaseVariant,
    FamilyError,
    FamilyId,
    ModelFamily,
    TextEmbedding,
    TrainingCost,
    max_text_tokens,
)
from pipeline.models.families.flux1 import FLUX1
from pipeline.models.families.flux2 import FLUX2_DEV, FLUX2_KLEIN
from pipeline.models.families.tiny_klein import TINY_KLEIN_MODEL
from pipeline.settings import MICRO_MODEL, TINY_MODEL

__all__ = ["BaseVariant", "FamilyError", "FamilyId", "ModelFamily", "TextEmbedding", "TrainingCost", "families",
           "family", "family_of", "family_of_pipeline", "max_text_tokens", "sized_variant", "variant_of"]
# Every family, FLUX.1 first: adding one is its module and a line here.
_REGISTRY: dict[FamilyId, ModelFamily] = {f.id: f for f in (FLUX1, FLUX2_KLEIN, FLUX2_DEV)}


def families() -> tuple[ModelFamily, ...]:
    """Every family, FLUX.1 first."""
    return tuple(_REGISTRY.values())


def family(family_id: FamilyId | str) -> ModelFamily:
    """The family by its id ("flux1", "flux2-klein", "flux2-dev")."""
    try:
        return _REGISTRY[FamilyId(family_id)]
    except ValueError:
        raise FamilyError(f"family {family_id!r} is unknown: use one of {[f.value for f in FamilyId]}") from None


def variant_of(spec: str) -> BaseVariant | None:
    """The hub model ``spec`` names, with its licence and defaults; None for other bases."""
    return next((v for f in families() for v in f.variants if v.hub_id.lower() == str(spec).strip().lower()), None)


def sized_variant(spec: str | Path) -> BaseVariant | None:
    """The hub model whose counted figures size ``spec`` for memory: the hub id's own, or for a local folder the
    trainable variant whose transformer has the folder's width and block count (a downloaded klein base 4B sizes as
    klein base 4B, not as FLUX.1-dev); None where none matches (the tiny models, an unknown folder)."""
    variant = variant_of(str(spec))
    if variant is not None:
        return variant if variant.cost is not None else None
    config = Path(str(spec)).expanduser() / "transformer" / "config.json"
    try:
        data = json.loads(config.read_text())
        hidden = int(data["num_attention_heads"]) * int(data["attention_head_dim"])
        blocks = int(data["num_layers"]) + int(data["num_single_layers"])
        candidates = family_of(spec).variants
    except (OSError, ValueError, KeyError, TypeError, FamilyError):
        return None
    return next((v for v in candidates if v.for_training and v.cost is not None and v.cost.hidden == hidden
                 and v.cost.blocks == blocks), None)


def family_of_pipeline(pipe: Any) -> ModelFamily:
    """The family of a loaded pipeline, by its class (a pipeline made by ``from_pretrained`` or by hand)."""
    for candidate in families():
        if candidate.pipeline_class_name == type(pipe).__name__:
            return candidate
    raise FamilyError(f"{type(pipe).__name__} is no pipeline of a Likeness base-model family")


def family_of(spec: str | Path) -> ModelFamily:
    """The family of a base model: the embedded names ("tiny", "micro", "tiny-klein"), a local diffusers folder (by
    its model_index.json's ``_class_name``) or a hub id (the known ones, else by its name: FLUX.2 ... klein)."""
    text = str(spec).strip()
    if text in (TINY_MODEL, MICRO_MODEL):
        return family(FamilyId.FLUX1)
    if text == TINY_KLEIN_MODEL:
        return family(FamilyId.FLUX2_KLEIN)
    index = Path(text).expanduser() / "model_index.json"
    if index.is_file():
        class_name = json.loads(index.read_text()).get("_class_name", "")
        for candidate in families():
            if candidate.pipeline_class_name == class_name:
                return candidate
        raise FamilyError(f"base model folder {text!r} holds a {class_name or 'unnamed'} pipeline; Likeness trains "
                          f"{', '.join(f.pipeline_class_name + ' (' + f.title + ')' for f in families())}")
    for candidate in families():
        if any(v.hub_id.lower() == text.lower() for v in candidate.variants):
            return candidate
    lowered = text.lower()
    if "flux.2" in lowered or "flux2" in lowered:  # fine-tunes and mirrors of FLUX.2 models keep the name
        return family(FamilyId.FLUX2_KLEIN if "klein" in lowered else FamilyId.FLUX2_DEV)
    return family(FamilyId.FLUX1)  # any other hub id: a FLUX.1-architecture model, as before families existed

"""Base-model families: what training, generation and export must know about one kind of base model.

diffusers keeps one folder per pipeline family; here each family is one module (``flux1.py``, ``flux2.py``) with one
object that answers, for its models: the diffusers classes, prompt encoding into the tensors the trainer caches,
latent encoding and normalisation, the training loss's inputs (packing, position ids, guidance or none), the sigma
shift, the LoRA target layers, the kohya key layout, generation defaults and the variants it offers (hub id,
licence, sizes for the memory model). The trainer, the generator, the export and the base-model resolver ask
``family_of(spec)`` instead of assuming FLUX.1. Adding a family is one module here, registered in ``FAMILIES``, plus
its tests.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.settings import MICRO_MODEL, TINY_MODEL

if TYPE_CHECKING:
    import torch

    from pipeline.models.lora_formats import KohyaLayout
    from pipeline.settings import GenerateSettings


class FamilyId(StrEnum):
    FLUX1 = "flux1"  # FLUX.1 [dev] / [schnell] and their fine-tunes: FluxPipeline
    FLUX2_KLEIN = "flux2-klein"  # FLUX.2 [klein] 4B / 9B: Flux2KleinPipeline
    FLUX2_DEV = "flux2-dev"  # FLUX.2 [dev]: Flux2Pipeline


class FamilyError(ValueError):
    """A base model whose family is unknown or not implemented; the message names the model and what to use."""


@dataclass(frozen=True)
class BaseVariant:
    """One base model of a family as the hub offers it: what to download, under which licence, what it needs."""

    name: str  # "FLUX.2 [klein] base 4B"
    hub_id: str
    licence: str
    transformer_params: float  # parameters (counted on the meta device where a FINDINGS/bench file says so)
    text_encoder: str
    text_encoder_params: float
    steps: int  # generation defaults
    guidance: float
    defaults_source: str  # where the defaults come from
    implemented: bool = True
    note: str = ""

    def transformer_gb(self, bytes_per_weight: float) -> float:
        """GB of the frozen transformer's weights at ``bytes_per_weight`` (2 bf16, ~1 fp8, ~0.56 nf4)."""
        return self.transformer_params * bytes_per_weight / 1024**3


@dataclass(frozen=True)
class TextEmbedding:
    """One prompt's cached encoding: per-token states and, for FLUX.1, the pooled CLIP vector."""

    prompt: torch.Tensor  # (tokens, joint_attention_dim)
    pooled: torch.Tensor | None = None  # (pooled_projection_dim,); None where the family has none

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the text cache file holds."""
        return {"prompt": self.prompt} | ({} if self.pooled is None else {"pooled": self.pooled})

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> TextEmbedding:
        return cls(prompt=tensors["prompt"], pooled=tensors.get("pooled"))


class ModelFamily(ABC):
    """The questions the pipeline asks about a base model's family. Stateless: one shared instance per family."""

    id: FamilyId
    title: str  # "FLUX.1", for messages
    pipeline_class_name: str  # model_index.json's _class_name
    text_encoder_names: tuple[str, ...]  # the pipeline's text-encoder attributes
    text_encoder_words: str  # the text encoders in a progress message
    kohya_version: str  # the LoRA header's ss_base_model_version for bases of this family
    variants: tuple[BaseVariant, ...]

    # - classes -

    def pipeline_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    @abstractmethod
    def transformer_class(self) -> type: ...

    @abstractmethod
    def vae_class(self) -> type: ...

    def check_implemented(self) -> None:
        """Raise FamilyError where this family cannot train or draw yet."""
        return None  # every family but the declared-only ones

    # - text -

    @abstractmethod
    def text_tokens(self, model_path: str) -> int:
        """Tokens a prompt is padded to (as the pipeline pads at inference)."""

    @abstractmethod
    def encode_prompt(self, encoders: Any, prompt: str, *, device: str, tokens: int) -> TextEmbedding:
        """One prompt through the text encoders of ``encoders`` (the pipeline loaded without transformer and VAE)."""

    # - images -

    @abstractmethod
    def encode_latents(self, vae: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> the latents the transformer is trained on, normalised as the pipeline does."""

    @abstractmethod
    def image_tokens(self, latent_shape: tuple[int, ...] | torch.Size) -> int:
        """Transformer image tokens of one latent (C, h, w)."""

    # - training -

    @abstractmethod
    def sample_sigmas(self, batch: int, *, method: str, image_tokens: int,
                      generator: torch.Generator) -> torch.Tensor:
        """Noise levels in (0, 1) for one batch, shifted as this family samples at inference."""

    @abstractmethod
    def loss(self, transformer: torch.nn.Module, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
             texts: list[TextEmbedding], *, guidance: float, device: str, dtype: torch.dtype) -> torch.Tensor:
        """The rectified-flow loss of one batch: ``x_t = (1 - σ) x0 + σ ε``, regress ``ε - x0``."""

    @abstractmethod
    def lora_targets(self, transformer: torch.nn.Module, *, modulation: bool = False,
                     outer_layers: bool = False) -> list[str]:
        """Full names of the Linear layers a LoRA trains (full names: peft's suffix match would hit ModuleLists)."""

    @abstractmethod
    def kohya_layout(self) -> KohyaLayout:
        """The kohya/ComfyUI key names of this family's LoRA layers."""

    # - drawing -

    @abstractmethod
    def sampling_pipeline(self, model_path: str, vae: torch.nn.Module, transformer: torch.nn.Module) -> Any:
        """A pipeline without text encoders, for sample images from cached embeddings while training."""

    @abstractmethod
    def sample_kwargs(self, text: TextEmbedding, empty: TextEmbedding, *, device: str,
                      dtype: torch.dtype) -> dict[str, Any]:
        """The pipeline call's prompt and guidance arguments for one sample image while training."""

    @abstractmethod
    def render_kwargs(self, pipe: Any, settings: GenerateSettings,
                      embeds: tuple[torch.Tensor, ...] | None) -> dict[str, Any]:
        """The pipeline call's prompt, negative prompt and guidance arguments for a playground/assessment image."""

    def default_guidance(self, model_path: str | None = None) -> float:
        """The guidance test images use on this family's first variant (FLUX.1 [dev]'s 3.5, base klein's CFG 4)."""
        return self.variants[0].guidance


def _registry() -> dict[FamilyId, ModelFamily]:
    from pipeline.models.families.flux1 import FLUX1
    from pipeline.models.families.flux2 import FLUX2_DEV, FLUX2_KLEIN

    return {family.id: family for family in (FLUX1, FLUX2_KLEIN, FLUX2_DEV)}


def families() -> tuple[ModelFamily, ...]:
    """Every family, FLUX.1 first."""
    return tuple(_registry().values())


def family(family_id: FamilyId | str) -> ModelFamily:
    """The family by its id ("flux1", "flux2-klein", "flux2-dev")."""
    try:
        return _registry()[FamilyId(family_id)]
    except ValueError:
        raise FamilyError(f"family {family_id!r} is unknown: use one of {[f.value for f in FamilyId]}") from None


def variant_of(spec: str) -> BaseVariant | None:
    """The hub model ``spec`` names, with its licence and defaults; None for other bases."""
    return next((v for f in families() for v in f.variants if v.hub_id.lower() == str(spec).strip().lower()), None)


def family_of_pipeline(pipe: Any) -> ModelFamily:
    """The family of a loaded pipeline, by its class (a pipeline made by ``from_pretrained`` or by hand)."""
    for candidate in families():
        if candidate.pipeline_class_name == type(pipe).__name__:
            return candidate
    raise FamilyError(f"{type(pipe).__name__} is no pipeline of a Likeness base-model family")


def family_of(spec: str | Path) -> ModelFamily:
    """The family of a base model: the embedded names ("tiny", "micro", "tiny-klein"), a local diffusers folder (by
    its model_index.json's ``_class_name``) or a hub id (the known ones, else by its name: FLUX.2 ... klein)."""
    from pipeline.models.families.tiny_klein import TINY_KLEIN_MODEL

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

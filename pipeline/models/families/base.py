"""The types every base-model family shares: its id, its variants, a cached prompt encoding and the ``ModelFamily``
questions. The families (``flux1.py``, ``flux2.py``) build on these; ``families/__init__.py`` registers them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from pipeline.models.lora_formats import KohyaLayout
    from pipeline.settings import GenerateSettings, TrainSettings


def max_text_tokens(tokenizer: Any, limit: int = 512) -> int:
    """Text tokens a prompt is padded to: the pipeline's 512, or fewer where the model's tokenizer says so (the micro
    model's 32: its prompts are short, and padding to 512 would be most of its work)."""
    return min(limit, int(getattr(tokenizer, "model_max_length", limit) or limit))


class FamilyId(StrEnum):
    FLUX1 = "flux1"  # FLUX.1 [dev] / [schnell] and their fine-tunes: FluxPipeline
    FLUX2_KLEIN = "flux2-klein"  # FLUX.2 [klein] 4B / 9B: Flux2KleinPipeline
    FLUX2_DEV = "flux2-dev"  # FLUX.2 [dev]: Flux2Pipeline


class FamilyError(ValueError):
    """A base model whose family is unknown or not implemented; the message names the model and what to use."""


@dataclass(frozen=True)
class TrainingCost:
    """A transformer's size and step cost for the estimates, counted on the meta device from the published configs
    (bench/family_memory.py, bench/results/family_memory_meta.json)."""

    hidden: int
    blocks: int  # double + single
    lora_rank16: int  # parameters of a rank-16 LoRA on every block linear
    step_tflop_512: float  # one LoRA training step, batch 1, 512 text tokens
    step_tflop_1024: float
    offload_share: float  # of the weights block offload keeps on the GPU (largest block + layers outside blocks)

    def step_tflop(self, resolution: int) -> float:
        return self.step_tflop_1024 if resolution > 512 else self.step_tflop_512


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
    implemented: bool = True  # False: declared for detection and the README, refused by its family
    note: str = ""
    cost: TrainingCost | None = None  # None where no count exists yet
    for_training: bool = True  # False: a distilled model to draw with a LoRA trained on its base


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
    transformer_class_name: str  # the diffusers classes of its transformer and VAE
    vae_class_name: str
    tokenizer_folder: str  # the tokenizer that sets the prompt length ("tokenizer_2": T5 for FLUX.1)
    text_token_limit: int  # the pipeline's max_sequence_length
    text_encoder_names: tuple[str, ...]  # the pipeline's text-encoder attributes
    text_encoder_words: str  # the text encoders in a progress message
    kohya_version: str  # the LoRA header's ss_base_model_version for bases of this family
    variants: tuple[BaseVariant, ...]
    # The TrainSettings fields this family's hub models and folders train with where FLUX.1-dev's defaults do not fit
    # them (``base_model.default_train_settings``), and where those values come from. The embedded models keep theirs.
    train_defaults: Mapping[str, Any] = MappingProxyType({})
    train_defaults_source = "TrainSettings' own defaults, set for FLUX.1-dev on a face (README)"

    # - classes -

    def pipeline_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def transformer_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.transformer_class_name)

    def vae_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.vae_class_name)

    def check_implemented(self) -> None:
        """Raise FamilyError where this family cannot train or draw yet."""
        return None  # every family but the declared-only ones

    def check_settings(self, settings: TrainSettings) -> None:
        """Raise SettingsError for settings this family cannot train, before anything runs."""
        return None

    # - text -

    def text_tokens(self, model_path: str) -> int:
        """Tokens a prompt is padded to, as the pipeline pads at inference: its tokenizer's length, at most
        ``text_token_limit``."""
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(model_path, subfolder=self.tokenizer_folder)
        except (OSError, ValueError):  # a hub model not cached yet: the pipeline's own default
            return self.text_token_limit
        return max_text_tokens(tokenizer, self.text_token_limit)

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

    @abstractmethod
    def render_embeds(self, pipe: Any, prompt: str) -> tuple[torch.Tensor, ...]:
        """``prompt`` encoded as ``render_kwargs`` takes it back (``embeds``): the morph clip blends two of them."""

    def render_latents(self, pipe: Any, packed: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Packed starting latents ([1, tokens, channels], as ``prepare_latents`` draws them) in the form the
        pipeline's ``latents=`` takes back: packed, as FLUX.1 does (the morph clip walks its path packed)."""
        return packed

    def default_guidance(self, model_path: str | None = None) -> float:
        """The guidance test images use on this family's first variant (FLUX.1 [dev]'s 3.5, base klein's CFG 4)."""
        return self.variants[0].guidance

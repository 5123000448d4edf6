"""FLUX.1 [dev] and [schnell] (FluxPipeline): CLIP-L pooled + T5-XXL text, a 16-channel VAE with scale and shift,
latents packed 2x2 inside the pipeline, 3-axis position ids, a guidance embedding on [dev].

Everything here is what the trainer and the generator did before families existed, moved, not changed: the same
losses and the same images (tests/test_training.py, tests/test_generation.py). The embedded ``tiny`` and ``micro``
models are FLUX.1-architecture models too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.models.families.base import (
    BaseVariant,
    FamilyId,
    ModelFamily,
    TextEmbedding,
    TrainingCost,
    max_text_tokens,
)

if TYPE_CHECKING:
    import torch

    from pipeline.models.lora_formats import KohyaLayout
    from pipeline.settings import GenerateSettings

# FLUX.1-dev is guidance-distilled and ignores a negative prompt unless true classifier-free guidance runs a
# second, negative pass. 4.0 is the scale diffusers documents for FLUX true CFG; it doubles the time per step.
NEGATIVE_PROMPT_CFG = 4.0
MAX_TEXT_TOKENS = 512  # T5 tokens: what FluxPipeline uses at inference, so training sees the same padding
SAMPLE_GUIDANCE = 3.5  # sample images while training, on [dev]'s guidance embedding
# The leaves of every block that a LoRA trains by default (attention and MLP projections).
BLOCK_LEAVES = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                "ff_context.net.2", "proj_mlp", "proj_out")
MODULATION_LEAVES = ("norm1.linear", "norm1_context.linear", "norm.linear")

# FLUX.1's transformer (bench/results/family_memory_meta.json; the H100 step times in estimate.py are its).
FLUX1_COST = TrainingCost(hidden=3072, blocks=57, lora_rank16=65_372_160, step_tflop_512=45.0, step_tflop_1024=164.7,
                          offload_share=0.034)
FLUX1_DEV = BaseVariant(
    name="FLUX.1 [dev]", hub_id="black-forest-labs/FLUX.1-dev",
    licence="FLUX.1 [dev] Non-Commercial License (outputs may be used commercially; the weights may not)",
    transformer_params=11_901_408_320, text_encoder="CLIP-L + T5-XXL", text_encoder_params=4_885_371_136, steps=28,
    guidance=3.5, defaults_source="FluxPipeline's documented 28 steps, guidance 3.5; training as README 'Training "
    "defaults'", cost=FLUX1_COST)
FLUX1_SCHNELL = BaseVariant(
    name="FLUX.1 [schnell]", hub_id="black-forest-labs/FLUX.1-schnell", licence="Apache-2.0",
    transformer_params=11_901_408_320, text_encoder="CLIP-L + T5-XXL", text_encoder_params=4_885_371_136, steps=4,
    guidance=0.0, cost=FLUX1_COST,
    defaults_source="diffusers' FLUX.1-schnell example (4 steps, guidance_scale 0, max_sequence_length 256); "
                    "ai-toolkit's train_lora_flux_schnell_24gb.yaml trains it with its assistant adapter",
    note="timestep-distilled, no guidance embedding: LoRAs train with guidance ignored and draw in 4 steps")


class Flux1Family(ModelFamily):
    id = FamilyId.FLUX1
    title = "FLUX.1"
    pipeline_class_name = "FluxPipeline"
    transformer_class_name = "FluxTransformer2DModel"
    vae_class_name = "AutoencoderKL"
    tokenizer_folder = "tokenizer_2"  # T5's: it sets the prompt length
    text_token_limit = MAX_TEXT_TOKENS
    text_encoder_names = ("text_encoder", "text_encoder_2")
    text_encoder_words = "CLIP and T5"
    kohya_version = "flux1"  # kohya's value for every FLUX.1-architecture base
    variants = (FLUX1_DEV, FLUX1_SCHNELL)

    def encode_prompt(self, encoders: Any, prompt: str, *, device: str, tokens: int) -> TextEmbedding:
        embeds, pooled, _ids = encoders.encode_prompt(prompt=prompt, prompt_2=prompt, device=device,
                                                      max_sequence_length=tokens)
        return TextEmbedding(prompt=embeds[0].float().cpu(), pooled=pooled[0].float().cpu())

    def encode_latents(self, vae: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        mean = vae.encode(pixels).latent_dist.mean
        return (mean - vae.config.shift_factor) * vae.config.scaling_factor

    def image_tokens(self, latent_shape: tuple[int, ...] | Any) -> int:
        return (latent_shape[-2] // 2) * (latent_shape[-1] // 2)  # 2x2 latent patches per token

    def sample_sigmas(self, batch: int, *, method: str, image_tokens: int,
                      generator: torch.Generator) -> torch.Tensor:
        from pipeline.models.flow_matching import sample_sigmas

        return sample_sigmas(batch, method=method, image_tokens=image_tokens, generator=generator)

    def loss(self, transformer: torch.nn.Module, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
             texts: list[TextEmbedding], *, guidance: float, device: str, dtype: torch.dtype) -> torch.Tensor:
        import torch

        from pipeline.models.flow_matching import flow_matching_loss

        prompt = torch.stack([t.prompt for t in texts])
        pooled = torch.stack([t.pooled for t in texts if t.pooled is not None])
        return flow_matching_loss(transformer, x0, noise, sigmas, prompt, pooled, guidance=guidance, device=device,
                                  dtype=dtype)

    def lora_targets(self, transformer: torch.nn.Module, *, modulation: bool = False,
                     outer_layers: bool = False) -> list[str]:
        """Attention and MLP projections of every block (the final proj_out is left out unless asked for); with
        ``modulation`` each block's adaptive-norm modulation (kohya's ``*_mod_lin``/``modulation_lin``); with
        ``outer_layers`` the layers outside the blocks that a kohya file can name (embedders, final layer)."""
        import torch

        from pipeline.models.lora_formats import TOP_LEVEL_MODULES

        leaves = BLOCK_LEAVES + (MODULATION_LEAVES if modulation else ())
        blocks = ("transformer_blocks.", "single_transformer_blocks.")
        outer = {name for name, _kohya in TOP_LEVEL_MODULES} if outer_layers else set()
        return [name for name, module in transformer.named_modules()
                if isinstance(module, torch.nn.Linear)
                and (name in outer or (name.startswith(blocks) and name.split(".", 2)[2] in leaves))]

    def kohya_layout(self) -> KohyaLayout:
        from pipeline.models.lora_formats import FLUX1_KOHYA

        return FLUX1_KOHYA

    def sampling_pipeline(self, model_path: str, vae: torch.nn.Module, transformer: torch.nn.Module) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(model_path, subfolder="scheduler")
        return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                            tokenizer_2=None, transformer=transformer)

    def sample_kwargs(self, text: TextEmbedding, empty: TextEmbedding, *, device: str,
                      dtype: torch.dtype) -> dict[str, Any]:
        assert text.pooled is not None  # FLUX.1 always caches the pooled CLIP vector
        return {"prompt_embeds": text.prompt[None].to(device, dtype),
                "pooled_prompt_embeds": text.pooled[None].to(device, dtype), "guidance_scale": SAMPLE_GUIDANCE}

    def render_kwargs(self, pipe: Any, settings: GenerateSettings,
                      embeds: tuple[torch.Tensor, ...] | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_sequence_length": max_text_tokens(pipe.tokenizer_2),
                                  "guidance_scale": settings.guidance}
        if embeds is None:
            kwargs["prompt"] = settings.prompt
        else:
            kwargs["prompt_embeds"], kwargs["pooled_prompt_embeds"] = embeds
        negative = settings.negative_prompt.strip()
        if negative:
            kwargs.update(negative_prompt=negative, true_cfg_scale=NEGATIVE_PROMPT_CFG)
        return kwargs

    def render_embeds(self, pipe: Any, prompt: str) -> tuple[torch.Tensor, ...]:
        import torch

        with torch.no_grad():
            embeds, pooled, _ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=pipe._execution_device,
                                                      num_images_per_prompt=1,
                                                      max_sequence_length=max_text_tokens(pipe.tokenizer_2))
        return embeds, pooled


FLUX1 = Flux1Family()

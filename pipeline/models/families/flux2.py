"""FLUX.2: [klein] base 4B / 9B (Flux2KleinPipeline), implemented; FLUX.2 [dev] (Flux2Pipeline), declared.

What differs from FLUX.1 (measured in issue 35's prototype; README 'Base-model families'):
- text: one Qwen3 causal LM, the prompt wrapped in its chat template (thinking off), padded to 512 tokens; hidden
  states (9, 18, 27) stacked per token -> (tokens, 3 * hidden). No pooled vector.
- latents: ``AutoencoderKLFlux2`` (32 channels), patchified 2x2 to 128 channels *before* normalising with the VAE's
  BatchNorm running statistics (no scaling/shift factor); packing is then a plain reshape, ids have 4 axes.
- no guidance embedding in any klein: ``guidance=None``; base klein draws with real CFG (4.0, 50 steps).
- LoRA targets: SwiGLU ``ff.linear_in/out``; single blocks' fused ``attn.to_qkv_mlp_proj`` and ``attn.to_out``.
- kohya names: single blocks map 1:1 (no fusing), no per-block modulation rows.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pipeline.models.families.base import (
    BaseVariant,
    FamilyError,
    FamilyId,
    ModelFamily,
    TextEmbedding,
    TrainingCost,
    max_text_tokens,
)

if TYPE_CHECKING:
    import torch

    from pipeline.models.lora_formats import KohyaLayout
    from pipeline.settings import GenerateSettings, TrainSettings

MAX_TEXT_TOKENS = 512  # Flux2KleinPipeline's max_sequence_length
# Qwen3 hidden states the klein pipeline stacks (BFL's OUTPUT_LAYERS_QWEN3). diffusers' dreambooth script defaults to
# (10, 20, 30), FLUX.2 [dev]'s Mistral taps: training on those would condition the LoRA on other embeddings.
KLEIN_TEXT_LAYERS = (9, 18, 27)
# The noise level's shift, as klein samples at inference: compute_empirical_mu at this many steps (base klein's 50).
SHIFT_STEPS = 50
DOUBLE_BLOCK_LEAVES = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                       "attn.add_v_proj", "attn.to_add_out", "ff.linear_in", "ff.linear_out", "ff_context.linear_in",
                       "ff_context.linear_out")
SINGLE_BLOCK_LEAVES = ("attn.to_qkv_mlp_proj", "attn.to_out")
# Klein has no per-block modulation: three shared ones. ``norm_out.linear`` is left out on purpose: diffusers' kohya
# reader maps it without the scale/shift half swap its checkpoint converter applies (FINDINGS, point 6).
MODULATION_LAYERS = ("double_stream_modulation_img.linear", "double_stream_modulation_txt.linear",
                     "single_stream_modulation.linear")
# (diffusers name, kohya name) of the layers outside the blocks that diffusers' Flux2 kohya reader maps.
TOP_LEVEL_MODULES = (("x_embedder", "img_in"), ("context_embedder", "txt_in"),
                     ("time_guidance_embed.timestep_embedder.linear_1", "time_in_in_layer"),
                     ("time_guidance_embed.timestep_embedder.linear_2", "time_in_out_layer"),
                     ("proj_out", "final_layer_linear"))
KOHYA_DOUBLE = (("img_attn_qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
                ("img_attn_proj", ("attn.to_out.0",)),
                ("txt_attn_qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
                ("txt_attn_proj", ("attn.to_add_out",)),
                ("img_mlp_0", ("ff.linear_in",)), ("img_mlp_2", ("ff.linear_out",)),
                ("txt_mlp_0", ("ff_context.linear_in",)), ("txt_mlp_2", ("ff_context.linear_out",)))
KOHYA_SINGLE = (("linear1", ("attn.to_qkv_mlp_proj",)), ("linear2", ("attn.to_out",)))

# Counted on the meta device from the published configs (bench/results/family_memory_meta.json).
KLEIN_4B_COST = TrainingCost(hidden=3072, blocks=25, lora_rank16=24_084_480, step_tflop_512=21.1,
                             step_tflop_1024=76.4, offload_share=0.1136)
KLEIN_9B_COST = TrainingCost(hidden=4096, blocks=32, lora_rank16=43_515_904, step_tflop_512=46.8,
                             step_tflop_1024=162.6, offload_share=0.0871)
_KLEIN_DEFAULTS = "Flux2KleinPipeline's defaults for base klein (50 steps, CFG 4.0); BFL: train LoRAs on base"
KLEIN_BASE_4B = BaseVariant(
    name="FLUX.2 [klein] base 4B", hub_id="black-forest-labs/FLUX.2-klein-base-4B", licence="Apache-2.0",
    transformer_params=3_875_544_576, text_encoder="Qwen3-4B", text_encoder_params=4_022_468_096, steps=50,
    guidance=4.0, defaults_source=_KLEIN_DEFAULTS, cost=KLEIN_4B_COST)
KLEIN_BASE_9B = BaseVariant(
    name="FLUX.2 [klein] base 9B", hub_id="black-forest-labs/FLUX.2-klein-base-9B",
    licence="FLUX Non-Commercial License", transformer_params=9_078_581_248, text_encoder="Qwen3-8B",
    text_encoder_params=8_190_735_360, steps=50, guidance=4.0, defaults_source=_KLEIN_DEFAULTS, cost=KLEIN_9B_COST)
# The distilled kleins draw in 4 steps and ignore guidance; LoRAs are trained on the base models, then also load here.
KLEIN_4B = BaseVariant(
    name="FLUX.2 [klein] 4B (distilled)", hub_id="black-forest-labs/FLUX.2-klein-4B", licence="Apache-2.0",
    transformer_params=3_875_544_576, text_encoder="Qwen3-4B", text_encoder_params=4_022_468_096, steps=4,
    guidance=1.0, defaults_source="Flux2KleinPipeline with is_distilled (4 steps, no CFG)",
    note="for drawing; train on base 4B", cost=KLEIN_4B_COST, for_training=False)
KLEIN_9B = BaseVariant(
    name="FLUX.2 [klein] 9B (distilled)", hub_id="black-forest-labs/FLUX.2-klein-9B",
    licence="FLUX Non-Commercial License", transformer_params=9_078_581_248, text_encoder="Qwen3-8B",
    text_encoder_params=8_190_735_360, steps=4, guidance=1.0,
    defaults_source="Flux2KleinPipeline with is_distilled (4 steps, no CFG)", note="for drawing; train on base 9B",
    cost=KLEIN_9B_COST, for_training=False)
FLUX2_DEV_VARIANT = BaseVariant(
    name="FLUX.2 [dev]", hub_id="black-forest-labs/FLUX.2-dev", licence="FLUX.2 [dev] Non-Commercial License",
    transformer_params=32e9, text_encoder="Mistral Small 3 24B (Mistral3ForConditionalGeneration)",
    text_encoder_params=24e9, steps=50, guidance=4.0, defaults_source="Flux2Pipeline's defaults",
    implemented=False,
    note="not implemented: needs the Mistral3 text encoder path (Flux2Pipeline.encode_prompt, taps 10/20/30) and a "
         "tiny Mistral3 test model; 32 B transformer, far above a 24 GB card without nf4 + offload")


def _klein_layout() -> KohyaLayout:
    from pipeline.models.lora_formats import KohyaLayout

    return KohyaLayout(KOHYA_DOUBLE, KOHYA_SINGLE, TOP_LEVEL_MODULES)


class Flux2KleinFamily(ModelFamily):
    id = FamilyId.FLUX2_KLEIN
    title = "FLUX.2 [klein]"
    pipeline_class_name = "Flux2KleinPipeline"
    transformer_class_name = "Flux2Transformer2DModel"
    vae_class_name = "AutoencoderKLFlux2"
    tokenizer_folder = "tokenizer"
    text_token_limit = MAX_TEXT_TOKENS
    text_encoder_names = ("text_encoder",)
    text_encoder_words = "Qwen3"
    # Not a kohya value yet (sd-scripts has none for FLUX.2): says the architecture, so a model browser does not
    # offer the file for FLUX.1.
    kohya_version = "flux2_klein"
    variants = (KLEIN_BASE_4B, KLEIN_BASE_9B, KLEIN_4B, KLEIN_9B)
    # A rank-32 LoRA, alpha 32: ai-toolkit's default network (linear 32 / linear_alpha 32, which its flux2_klein_4b
    # preset keeps), DiffSynth-Studio's klein base 4B LoRA script (rank 32) and a klein base LoRA workshop's face
    # recipe (github.com/stephen37/workshops: rank 32, alpha 32, lr 2e-4, 800-1200 steps). Klein's blocks are fewer
    # and narrower than FLUX.1's: rank 32 is 48 M parameters on klein base 4B, fewer than FLUX.1-dev's rank-16 65 M.
    # The rest stays FLUX.1-dev's: learning rate 1e-4 (diffusers' train_dreambooth_lora_flux2_klein.py and
    # DiffSynth-Studio; the workshop's 2e-4 is one voice against two), 1000 steps (inside the workshop's face range),
    # gradient clipping 1.0 (diffusers' script), caption dropout 0.05 (ai-toolkit's dataset default). Not taken:
    # diffusers' rank 4 and 500 warm-up steps (the script's generic dreambooth defaults) and its unshifted uniform
    # timesteps (ai-toolkit's klein preset weights them; klein's shifted draw is flux2's sample_sigmas).
    train_defaults = MappingProxyType({"rank": 32, "alpha": 32.0})
    train_defaults_source = ("rank 32, alpha 32: ai-toolkit's default network, DiffSynth-Studio's klein base 4B LoRA "
                             "script, a klein base face recipe; learning rate 1e-4 as diffusers' and DiffSynth's klein "
                             "scripts; the rest FLUX.1-dev's")

    def encode_prompt(self, encoders: Any, prompt: str, *, device: str, tokens: int) -> TextEmbedding:
        embeds, _text_ids = encoders.encode_prompt(prompt=prompt, device=device, max_sequence_length=tokens,
                                                   text_encoder_out_layers=KLEIN_TEXT_LAYERS)
        return TextEmbedding(prompt=embeds[0].float().cpu())

    def encode_latents(self, vae: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """VAE mean (as the pipeline's ``_encode_vae_image``), 2x2 patchify (32 -> 128 channels), then the
        BatchNorm running statistics: (x - mean) / sqrt(var + eps)."""
        import torch
        from diffusers import Flux2KleinPipeline

        latents = Flux2KleinPipeline._patchify_latents(vae.encode(pixels).latent_dist.mode())
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(latents)
        return (latents - mean) / std

    def image_tokens(self, latent_shape: tuple[int, ...] | Any) -> int:
        return latent_shape[-2] * latent_shape[-1]  # the 2x2 patch is already folded into the channels

    def sample_sigmas(self, batch: int, *, method: str, image_tokens: int,
                      generator: torch.Generator) -> torch.Tensor:
        """The project's FLUX.1 recipe (logit-normal or shifted uniform around mu) with klein's inference mu,
        ``compute_empirical_mu`` at SHIFT_STEPS: 1.70 at 512 px, 2.02 at 1024 px, against FLUX.1's 0.63 / 1.15.
        (diffusers' dreambooth script samples uniformly, unshifted: ``uniform`` here.)"""
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        from pipeline.models.flow_matching import sigmas_around

        mu = compute_empirical_mu(image_seq_len=image_tokens, num_steps=SHIFT_STEPS)
        return sigmas_around(mu, batch, method=method, generator=generator)

    def loss(self, transformer: torch.nn.Module, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
             texts: list[TextEmbedding], *, guidance: float, device: str, dtype: torch.dtype) -> torch.Tensor:
        """x0/noise: (B, 128, h, w) normalised latents. timestep = sigma (the transformer multiplies by 1000);
        ``guidance`` is not used: klein has no guidance embedding."""
        import torch
        import torch.nn.functional as F
        from diffusers import Flux2KleinPipeline

        prompt = torch.stack([t.prompt for t in texts]).to(device, dtype)
        sig = sigmas.view(-1, 1, 1, 1)
        noisy = Flux2KleinPipeline._pack_latents((1 - sig) * x0 + sig * noise)
        target = Flux2KleinPipeline._pack_latents(noise - x0).to(device)
        img_ids = Flux2KleinPipeline._prepare_latent_ids(x0).to(device)
        txt_ids = Flux2KleinPipeline._prepare_text_ids(prompt).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda")):
            prediction = transformer(hidden_states=noisy.to(device, dtype), encoder_hidden_states=prompt,
                                     timestep=sigmas.to(device, dtype), guidance=None, img_ids=img_ids,
                                     txt_ids=txt_ids, return_dict=False)[0]
        return F.mse_loss(prediction.float(), target.float())

    def lora_targets(self, transformer: torch.nn.Module, *, modulation: bool = False,
                     outer_layers: bool = False) -> list[str]:
        """The 12 linears of each double block and the 2 of each single block; ``modulation``: the three shared
        modulations; ``outer_layers``: the layers outside the blocks that a kohya file can name."""
        import torch

        outer = {name for name, _kohya in TOP_LEVEL_MODULES} if outer_layers else set()
        shared = set(MODULATION_LAYERS) if modulation else set()
        names = []
        for name, module in transformer.named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            kind, _, rest = name.partition(".")
            leaf = rest.partition(".")[2]
            if ((kind == "transformer_blocks" and leaf in DOUBLE_BLOCK_LEAVES)
                    or (kind == "single_transformer_blocks" and leaf in SINGLE_BLOCK_LEAVES)
                    or name in outer or name in shared):
                names.append(name)
        return names

    def kohya_layout(self) -> KohyaLayout:
        return _klein_layout()

    def check_settings(self, settings: TrainSettings) -> None:
        from pipeline.settings import SettingsError

        if settings.lora_modulation:
            # A run would train, then fail writing its kohya file: no kohya/ComfyUI name exists for these layers.
            raise SettingsError(
                f"lora_modulation: {self.title} has no per-block modulation to train (three shared layers, which "
                "kohya/ComfyUI files cannot name and diffusers' kohya reader drops); switch it off for this base model")

    def distilled(self, model_path: str) -> bool:
        """Whether the folder's pipeline is a distilled klein (no CFG, 4 steps)."""
        import json
        from pathlib import Path

        index = Path(model_path) / "model_index.json"
        return bool(index.is_file() and json.loads(index.read_text()).get("is_distilled", False))

    def default_guidance(self, model_path: str | None = None) -> float:
        return 1.0 if model_path and self.distilled(model_path) else KLEIN_BASE_4B.guidance

    def sampling_pipeline(self, model_path: str, vae: torch.nn.Module, transformer: torch.nn.Module) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(model_path, subfolder="scheduler")
        return Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                                  transformer=transformer, is_distilled=self.distilled(model_path))

    def sample_kwargs(self, text: TextEmbedding, empty: TextEmbedding, *, device: str,
                      dtype: torch.dtype) -> dict[str, Any]:
        # CFG's negative pass uses the empty caption, cached like every prompt (the text encoder is freed by now).
        return {"prompt_embeds": text.prompt[None].to(device, dtype),
                "negative_prompt_embeds": empty.prompt[None].to(device, dtype),
                "guidance_scale": KLEIN_BASE_4B.guidance}

    def render_kwargs(self, pipe: Any, settings: GenerateSettings,
                      embeds: tuple[torch.Tensor, ...] | None) -> dict[str, Any]:
        import torch

        tokens = max_text_tokens(pipe.tokenizer, MAX_TEXT_TOKENS)
        kwargs: dict[str, Any] = {"max_sequence_length": tokens, "guidance_scale": settings.guidance}
        if embeds is None:
            kwargs["prompt"] = settings.prompt
        else:
            kwargs["prompt_embeds"] = embeds[0]
        negative = settings.negative_prompt.strip()
        if negative and settings.guidance > 1 and not pipe.config.is_distilled:
            # The pipeline takes a negative prompt only as embeddings; with CFG off it has no negative pass at all.
            with torch.no_grad():
                kwargs["negative_prompt_embeds"], _ids = pipe.encode_prompt(
                    prompt=negative, device=pipe._execution_device, max_sequence_length=tokens,
                    text_encoder_out_layers=KLEIN_TEXT_LAYERS)
        return kwargs

    def render_embeds(self, pipe: Any, prompt: str) -> tuple[torch.Tensor, ...]:
        import torch

        with torch.no_grad():
            embeds, _ids = pipe.encode_prompt(prompt=prompt, device=pipe._execution_device,
                                              max_sequence_length=max_text_tokens(pipe.tokenizer, MAX_TEXT_TOKENS),
                                              text_encoder_out_layers=KLEIN_TEXT_LAYERS)
        return (embeds,)

    def render_latents(self, pipe: Any, packed: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """As the [1, channels, h, w] grid: klein's ``prepare_latents`` packs given latents itself."""
        grid_h = 2 * (height // (pipe.vae_scale_factor * 2)) // 2
        grid_w = 2 * (width // (pipe.vae_scale_factor * 2)) // 2
        return packed.permute(0, 2, 1).reshape(packed.shape[0], packed.shape[2], grid_h, grid_w)


class Flux2DevFamily(Flux2KleinFamily):
    """FLUX.2 [dev]: the same transformer and VAE classes as klein at 32 B, a Mistral3 text encoder. Recognised
    (``--base-model`` folders and hub ids) and refused plainly until its text path and a tiny test model exist."""

    id = FamilyId.FLUX2_DEV
    title = "FLUX.2 [dev]"
    pipeline_class_name = "Flux2Pipeline"
    kohya_version = "flux2_dev"
    variants = (FLUX2_DEV_VARIANT,)

    def check_implemented(self) -> None:
        raise FamilyError(
            "FLUX.2 [dev] (Flux2Pipeline) is recognised but not trainable in Likeness yet: it needs the Mistral3 "
            "text encoder (Mistral Small 3, 24 B) wired into prompt encoding and a 32 B transformer's memory modes. "
            "Use FLUX.2 [klein] base 4B (black-forest-labs/FLUX.2-klein-base-4B, Apache-2.0) or FLUX.1 [dev]")


FLUX2_KLEIN = Flux2KleinFamily()
FLUX2_DEV = Flux2DevFamily()

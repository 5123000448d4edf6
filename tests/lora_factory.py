"""Small real LoRAs for the tiny FLUX model, made with peft here rather than by training (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FluxPipeline
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_out", "proj_mlp"]


def make_lora(pipe: FluxPipeline, folder: Path, *, seed: int = 0, rank: int = 4, strength: float = 0.5) -> Path:
    """A diffusers-format LoRA for ``pipe.transformer`` with random (non-zero) up and down weights.

    The adapter is injected into a throw-away copy of the transformer's weights, so ``pipe`` is left as it was.
    """
    transformer = type(pipe.transformer).from_config(pipe.transformer.config)
    # The pipe may already carry LoRA adapters: copy only the base weights, under their plain names.
    base = {k.replace(".base_layer", ""): v for k, v in pipe.transformer.state_dict().items() if "lora_" not in k}
    transformer.load_state_dict(base)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=True)
    transformer = inject_adapter_in_model(config, transformer, adapter_name="default")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                # peft starts lora_B at zero (no effect); a random B makes the LoRA change the output.
                param.copy_(torch.randn(param.shape, generator=generator) * strength)
    layers = get_peft_model_state_dict(transformer, adapter_name="default")
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=layers, safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"

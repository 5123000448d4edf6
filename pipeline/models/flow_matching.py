"""The rectified-flow objective FLUX models are trained with: noise levels for a batch and the loss of one batch.

Shared by the LoRA trainer (pipeline/training/trainer.py) and the micro model's build (pipeline/models/micro.py), which
pretrains
a base with the same objective.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sample_sigmas(batch: int, *, method: str, image_tokens: int, generator: torch.Generator) -> torch.Tensor:
    """Noise levels in (0, 1) for one batch.

    FLUX shifts its sigmas towards noise as images grow (mu from 0.5 at 256 tokens to 1.15 at 4096, as its
    scheduler does at inference). ``logit_normal`` draws sigmoid(N(mu, 1)), which is exactly the shifted
    logit-normal of SD3/FLUX training; ``shift`` applies the same shift to uniform draws; ``uniform`` does not shift.
    """
    mu = 0.5 + (1.15 - 0.5) * (image_tokens - 256) / (4096 - 256)
    return sigmas_around(mu, batch, method=method, generator=generator)


def sigmas_around(mu: float, batch: int, *, method: str, generator: torch.Generator) -> torch.Tensor:
    """Noise levels shifted by ``mu`` (a family's inference shift) as ``method`` draws them (see sample_sigmas)."""
    if method == "logit_normal":
        return torch.sigmoid(torch.randn(batch, generator=generator) + mu)
    u = torch.rand(batch, generator=generator).clamp(1e-5, 1 - 1e-5)
    if method == "shift":
        return math.exp(mu) / (math.exp(mu) + (1 / u - 1))
    return u


def flow_matching_loss(transformer: torch.nn.Module, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
                       prompt: torch.Tensor, pooled: torch.Tensor, *, guidance: float, device: str,
                       dtype: torch.dtype) -> torch.Tensor:
    """The rectified-flow loss of one batch: ``x_t = (1 - σ) x0 + σ ε``, regress the velocity ``ε - x0``.

    ``x0``/``noise``: (B, 16, h, w) latents; ``prompt``: (B, tokens, dim) T5 states; ``pooled``: (B, dim) CLIP.
    FLUX.1-dev's guidance embedding gets ``guidance`` (1.0 while training dev, as BFL and diffusers train it).
    """
    from diffusers import FluxPipeline

    batch, channels, height, width = x0.shape
    sig = sigmas.view(-1, 1, 1, 1)
    noisy = FluxPipeline._pack_latents((1 - sig) * x0 + sig * noise, batch, channels, height, width)
    target = FluxPipeline._pack_latents(noise - x0, batch, channels, height, width).to(device)
    img_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, device, dtype)
    txt_ids = torch.zeros(prompt.shape[1], 3, device=device, dtype=dtype)
    guidance_tensor = None
    if transformer.config.guidance_embeds:
        guidance_tensor = torch.full((batch,), guidance, device=device, dtype=torch.float32)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda")):
        prediction = transformer(
            hidden_states=noisy.to(device, dtype), timestep=sigmas.to(device, dtype), guidance=guidance_tensor,
            pooled_projections=pooled.to(device, dtype), encoder_hidden_states=prompt.to(device, dtype),
            txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
    return F.mse_loss(prediction.float(), target.float())

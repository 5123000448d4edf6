"""Memory modes for training and the automatic batch size.

A mode says how the frozen base transformer is held: ``bf16`` (plain, ≥ 40 GB), ``fp8`` (8-bit weights, 24 GB
cards), ``nf4`` (4-bit weights via bitsandbytes, 16 GB) or ``offload`` (blocks streamed from host RAM, 12 GB).
On a machine without CUDA there is one mode, ``cpu``: float32, where the CPU computes fastest.

The figures below are FLUX.1-dev's (11.9 B transformer parameters, hidden 3072, 57 blocks); ``estimate_memory``
scales them from the model actually loaded, so the tiny model gets tiny figures, and ``auto_thresholds`` scales the
``auto`` mode's thresholds to a hub model's own estimate (FLUX.2 [klein] base 4B trains in bf16 on a 16 GB card).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.models.families.base import BaseVariant
from pipeline.models.families.flux1 import FLUX1_DEV
from pipeline.models.offload import alias_weight_in_state_dict, nan_like, reading_shapes_only, transformer_blocks
from pipeline.settings import GPU_MEMORY_MODES

logger = logging.getLogger(__name__)

GB = 1024**3
MODES = GPU_MEMORY_MODES
# Bytes per frozen base weight in each mode (nf4: 4 bits plus a blockwise absmax per 64 weights; offload: one block
# and the modules outside the blocks are on the GPU — for FLUX.1-dev a double block (340 M) and 64 M of 11.9 B, 3.4 %
# of the bf16 weights; see pipeline/models/offload.py).
_WEIGHT_BYTES = {"bf16": 2.0, "fp8": 1.0 + 4 / 3072, "nf4": 0.5 + 4 / 64, "offload": 2.0 * 0.034, "cpu": 4.0}
# Free GPU memory from which each mode is picked automatically for FLUX.1-dev (GB, as torch.cuda.mem_get_info reports
# it); other models scale them by their own estimate (``auto_thresholds``).
_AUTO_THRESHOLDS = (("bf16", 40.0), ("fp8", 20.0), ("nf4", 14.0))
# The run the thresholds are sized for: the default run's largest size (512 px, finishing at 1024), batch 1, a rank-16
# LoRA. A fixed yardstick, so a model's thresholds do not move with the form.
YARDSTICK_RESOLUTION = 1024
YARDSTICK_RANK = 16


@dataclass(frozen=True)
class MemoryEstimate:
    """Training memory in GB for one mode, resolution and batch size."""

    mode: str
    parameters_gb: float  # frozen base transformer weights as held on the GPU
    lora_gb: float  # trainable LoRA weights (fp32) and their gradients
    optimizer_gb: float  # AdamW moments (fp32, or 8-bit)
    activations_gb: float  # saved for backward, with or without gradient checkpointing
    total_gb: float


def free_gpu_gb(device: str | torch.device | None = None) -> float | None:
    """Free memory of a CUDA ``device`` (default: the current one) in GB; None without CUDA or for a CPU device."""
    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free / GB


def empty_caches() -> None:
    """Collect garbage and give cached GPU memory and freed pinned host buffers back (torch keeps both otherwise)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        if hasattr(torch._C, "_host_emptyCache"):
            torch._C._host_emptyCache()


def host_memory_gb() -> float:
    """Resident memory of this process in GB."""
    return _process(os.getpid()).memory_info().rss / GB


@functools.cache
def _process(pid: int) -> Any:
    """psutil's handle on a process, made once (each training step reads it: 0.35 ms a step to make anew); by pid,
    so a forked child reads its own."""
    import psutil

    return psutil.Process(pid)


def bitsandbytes_works() -> bool:
    """bitsandbytes imports and has a CUDA backend (needed for nf4 and 8-bit AdamW)."""
    if not torch.cuda.is_available():
        return False
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # a broken install raises anything from OSError to RuntimeError
        return False
    return True


def choose_mode(requested: str, free_gb: float | None,
                thresholds: tuple[tuple[str, float], ...] = _AUTO_THRESHOLDS) -> tuple[str, str]:
    """The mode to run in and why: ``requested`` unless "auto", which picks from free GPU memory and the model's
    ``thresholds`` (``auto_thresholds(variant)``; FLUX.1-dev's where not given)."""
    if free_gb is None:
        if requested not in ("auto", "cpu"):
            logger.info("memory mode %s needs CUDA; training in float32 on the CPU", requested)
        return "cpu", "no CUDA GPU: float32 on the CPU"
    if requested != "auto":
        return requested, f"memory mode {requested} chosen in the settings"
    for mode, threshold in thresholds:
        if free_gb >= threshold:
            return mode, f"{free_gb:.0f} GB free on the GPU: {mode} (needs ≥ {threshold:g} GB)"
    return "offload", f"only {free_gb:.0f} GB free on the GPU: transformer blocks offloaded to host RAM"


def variant_memory(variant: BaseVariant, mode: str, *, resolution: int = YARDSTICK_RESOLUTION,
                   rank: int = YARDSTICK_RANK, batch_size: int = 1, optimizer: str = "adamw") -> MemoryEstimate:
    """``estimate_memory`` for a hub model's own transformer (its counted ``TrainingCost``) at ``resolution`` px
    with 512 text tokens."""
    cost = variant.cost
    if cost is None:
        raise ValueError(f"variant: {variant.name} has no counted TrainingCost to estimate its memory from")
    return estimate_memory(mode, base_parameters=int(variant.transformer_params),
                           lora_parameters=cost.lora_rank16 * rank // 16, hidden_size=cost.hidden,
                           num_blocks=cost.blocks, image_tokens=(resolution // 16) ** 2, text_tokens=512,
                           batch_size=max(1, batch_size), optimizer=optimizer, offload_share=cost.offload_share)


def auto_thresholds(variant: BaseVariant | None) -> tuple[tuple[str, float], ...]:
    """The free GPU memory (GB) from which ``auto`` picks each mode for ``variant``: FLUX.1-dev's measured thresholds
    times the variant's estimate over FLUX.1-dev's in that mode, so each keeps FLUX.1-dev's share of headroom
    (klein base 4B: bf16 from 14 GB, where FLUX.1-dev needs 40). FLUX.1's own (and a model without counted figures,
    a local folder) get FLUX.1-dev's exactly."""
    if variant is None or variant.cost is None or variant.cost == FLUX1_DEV.cost:
        return _AUTO_THRESHOLDS
    return tuple((mode, round(threshold * variant_memory(variant, mode).total_gb
                              / variant_memory(FLUX1_DEV, mode).total_gb, 1))
                 for mode, threshold in _AUTO_THRESHOLDS)


PLACEMENTS = ("gpu", "fp8", "stream")
# GPU memory a FLUX generation needs beyond the weights (GB): 1024 px activations, the VAE decode (tiled above
# 1024 px in the low-memory placements) and a few loaded LoRAs.
_GENERATION_HEADROOM_GB = 3.0


def choose_generation_placement(requested: str, free_gb: float | None, *, gpu_gb: float,
                                fp8_gb: float) -> tuple[str, str]:
    """Where a generation pipeline's weights live, and why: ``requested`` unless "auto", which picks from free GPU
    memory and the weights each placement keeps on the GPU (``gpu_gb``: all of them; ``fp8_gb``: the fp8
    transformer, the VAE and what the streamed encoders leave there). FLUX.1-dev in bf16: 31.4 and 11.6 GB.

    - ``gpu``: everything on the GPU (FLUX.1-dev: ≥ 34.4 GB free);
    - ``fp8``: the transformer blocks' Linear weights in float8 on the GPU, the text encoders streamed from host RAM
      per prompt (≥ 14.6 GB: a 24 GB card and a 16 GB one);
    - ``stream``: the transformer streamed too, one layer at a time (any GPU; every denoising step copies it).
    Without CUDA: ``cpu``.
    """
    if requested != "auto":
        if requested not in PLACEMENTS:
            raise ValueError(f"placement: one of auto, {', '.join(PLACEMENTS)}; got {requested!r}")
        return requested, f"placement {requested} asked for"
    if free_gb is None:
        return "cpu", "no CUDA GPU: float32 on the CPU"
    for placement, weights in (("gpu", gpu_gb), ("fp8", fp8_gb)):
        if free_gb >= weights + _GENERATION_HEADROOM_GB:
            return placement, (f"{free_gb:.0f} GB free on the GPU: {placement} (needs "
                               f"{weights + _GENERATION_HEADROOM_GB:.1f} GB)")
    return "stream", f"only {free_gb:.0f} GB free on the GPU: weights streamed from host RAM (slow)"


def estimate_memory(
    mode: str,
    *,
    base_parameters: int,
    lora_parameters: int,
    hidden_size: int,
    num_blocks: int,
    image_tokens: int,
    text_tokens: int,
    batch_size: int = 1,
    gradient_checkpointing: bool = True,
    optimizer: str = "adamw",
    offload_share: float | None = None,
) -> MemoryEstimate:
    """A first-order estimate of training memory, used for the automatic batch size and the bench.

    Activations: with checkpointing each block keeps its input (tokens × hidden, bf16) and one block is recomputed
    at a time (≈ 24 hidden-sized tensors, from the attention projections and the 4× MLP); without it every block
    keeps those ≈ 24. ``offload_share``: the share of the weights block offload keeps on the GPU for this model (the
    largest block and the layers outside the blocks; FLUX.1-dev's 3.4 % where not given).
    """
    tokens = image_tokens + text_tokens
    act_bytes = 2 if mode != "cpu" else 4
    per_block = tokens * hidden_size * act_bytes * batch_size
    if gradient_checkpointing:
        activations = per_block * (num_blocks + 24)
    else:
        activations = per_block * 24 * num_blocks
    bytes_per_weight = 2.0 * offload_share if mode == "offload" and offload_share is not None else _WEIGHT_BYTES[mode]
    params = base_parameters * bytes_per_weight
    lora = lora_parameters * 4 * 2  # fp32 weights + fp32 gradients
    optimizer_bytes = lora_parameters * (2 if optimizer == "adamw8bit" else 8)
    total = params + lora + optimizer_bytes + activations
    return MemoryEstimate(mode=mode, parameters_gb=params / GB, lora_gb=lora / GB, optimizer_gb=optimizer_bytes / GB,
                          activations_gb=activations / GB, total_gb=total / GB)


def auto_batch_size(photo_count: int, *, free_gb: float | None, per_sample_gb: float, fixed_gb: float) -> int:
    """Batch size from photo count and memory.

    At most a quarter of the photos (so every epoch has ≥ 4 optimiser steps and the photos mix across batches) and
    at most 8; on a GPU as many samples as fit into 85 % of free memory after the fixed part. On the CPU, 4: the
    tiny model's step is dominated by per-step overhead, so a larger batch learns more per second.
    """
    by_photos = max(1, min(8, photo_count // 4))
    if free_gb is None:
        return min(4, by_photos)
    room = free_gb * 0.85 - fixed_gb
    by_memory = int(room // per_sample_gb) if per_sample_gb > 0 else by_photos
    return max(1, min(by_photos, by_memory))


class _Float8Weight(torch.nn.Module):
    """Parametrisation holding a frozen Linear weight as float8 (e4m3) with one scale per output row.

    The module's ``weight`` becomes a view in the original dtype computed on access, so peft and autograd see an
    ordinary Linear while the stored tensor takes 1 byte per weight. (Weight-only: the matmul still runs in bf16.)
    """

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, stored: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if reading_shapes_only():  # e.g. LoRA loading, which reads each weight ~20 times for its shape
            return nan_like(stored, dtype=self.dtype, device=stored.device)
        return self.dequantize(stored, scale)

    def dequantize(self, stored: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        # Every float8 value is exact in bf16; one rounding in the multiply, like any bf16 weight.
        return stored.to(self.dtype) * scale.to(self.dtype)

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Two tensors (data, scale): torch allows a dtype change only for a parametrisation stored as a sequence.
        amax = weight.detach().abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12)
        scale = amax / torch.finfo(torch.float8_e4m3fn).max
        return (weight.detach().float() / scale).to(torch.float8_e4m3fn), scale


def quantize_frozen_linears_fp8(model: torch.nn.Module, device: str | torch.device | None = None) -> int:
    """Store every frozen Linear weight in the transformer blocks of ``model`` as float8; returns how many.

    That is the LoRA-wrapped projections' ``base_layer`` and the adaptive norms' modulation layers: 3.2 of
    FLUX.1-dev's 11.9 B weights are in those norms, outside the LoRA targets, so leaving them bf16 kept 3.2 GB more.
    Call after the LoRA layers exist (peft would otherwise create them in the base weight's dtype). Needs gradient
    checkpointing for memory to fall: autograd keeps the bf16 view of each weight until its block's backward.
    With ``device``, each layer is moved there just before it is quantised, so a model held in host RAM reaches a
    24 GB GPU at 1 byte per weight without ever being there whole in bf16.
    """
    from torch.nn.utils import parametrize

    count = 0
    for block in transformer_blocks(model):
        for module in block.modules():
            if (isinstance(module, torch.nn.Linear) and not parametrize.is_parametrized(module, "weight")
                    and not module.weight.requires_grad):
                if device is not None:
                    module.to(device)
                parametrize.register_parametrization(module, "weight", _Float8Weight(module.weight.dtype),
                                                     unsafe=True)
                module.parametrizations.weight.original0.requires_grad_(False)
                module.parametrizations.weight.original1.requires_grad_(False)
                alias_weight_in_state_dict(module)
                count += 1
    return count

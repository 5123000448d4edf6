"""Block offload for training on small GPUs: frozen block weights live in host RAM and visit the GPU only in use.

Every frozen Linear weight inside the transformer blocks gets a parametrisation whose stored tensor stays in
(pinned) host memory; reading ``module.weight`` copies it to the execution device. That copy is an ordinary
temporary, so autograd decides how long it lives:

- forward, under gradient checkpointing: nothing is saved inside a block, so each copy is freed once its layer ran;
- backward: the recompute of one block saves that block's copies for its own backward, which frees them.

So about one block's weights are on the GPU at any time. diffusers' group offload does not manage this in training:
its hooks onload every block again for the recompute and never offload it (on an H100, the whole 24-block probe
model was resident after the backward; ``python -m bench.offload_memory``). The copies are issued on the compute
stream (no prefetch), so a step costs about two host→GPU transfers of the weights on top of its compute.
Everything else — LoRA layers, biases, norms and the small modules outside the blocks — is moved to the GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.nn.utils import parametrize

logger = logging.getLogger(__name__)

BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


class HostWeight(torch.nn.Module):
    """Parametrisation of a weight stored on the host: each read returns a fresh copy on ``device``."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        # copy=True even when devices match (CPU tests), so a read never aliases the stored tensor.
        return stored.to(self.device, non_blocking=True, copy=True)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return _pinned(weight.detach().cpu())


@dataclass(frozen=True)
class OffloadReport:
    """What ``offload_block_weights`` did, in bytes."""

    layers: int  # frozen Linear weights now held on the host
    host_bytes: int  # their total size
    largest_block_bytes: int  # the most any one block brings to the GPU at once
    resident_bytes: int  # parameters and buffers moved to the execution device


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    """Page-locked copy when CUDA exists (asynchronous, faster copies); the tensor itself when pinning fails."""
    if not torch.cuda.is_available():
        return tensor
    try:
        return tensor.pin_memory()
    except RuntimeError as error:  # pinning needs locked RAM, which a crowded host may refuse
        logger.warning("could not pin %s of host memory (%s): copies to the GPU will be slower",
                       f"{tensor.numel() * tensor.element_size() / 1024**2:.0f} MB", error)
        return tensor


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a FLUX transformer, double then single."""
    blocks = [block for name in BLOCK_LISTS for block in getattr(model, name, ())]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has none of {BLOCK_LISTS}: nothing to offload")
    return blocks


def offload_block_weights(model: torch.nn.Module, device: str | torch.device) -> OffloadReport:
    """Keep the frozen block weights of ``model`` (on the CPU) in host RAM and move the rest to ``device``.

    Call after the LoRA layers exist and with gradient checkpointing on: without recompute, autograd would save
    every block's GPU copy for the backward and the whole model would end up on the GPU after all.
    """
    if not getattr(model, "is_gradient_checkpointing", False):
        raise ValueError("block offload needs gradient checkpointing: call enable_gradient_checkpointing() first")
    device = torch.device(device)
    layers = host_bytes = largest = 0
    for block in transformer_blocks(model):
        block_bytes = 0
        for module in block.modules():
            if (isinstance(module, torch.nn.Linear) and not parametrize.is_parametrized(module, "weight")
                    and not module.weight.requires_grad):
                if module.weight.device.type != "cpu":
                    raise ValueError("block offload starts from a model in host memory; it is on "
                                     f"{module.weight.device}")
                block_bytes += module.weight.numel() * module.weight.element_size()
                parametrize.register_parametrization(module, "weight", HostWeight(device), unsafe=True)
                module.parametrizations.weight.original.requires_grad_(False)
                layers += 1
        host_bytes += block_bytes
        largest = max(largest, block_bytes)
    resident = _move_all_but_host_weights(model, device)
    return OffloadReport(layers=layers, host_bytes=host_bytes, largest_block_bytes=largest, resident_bytes=resident)


def _move_all_but_host_weights(model: torch.nn.Module, device: torch.device) -> int:
    """``model.to(device)`` except the host-held weights (which ``.to`` would move too); returns bytes moved."""
    moved = 0
    for module in model.modules():
        if isinstance(module, parametrize.ParametrizationList) and isinstance(module[0], HostWeight):
            continue
        for param in module._parameters.values():
            if param is not None:
                param.data = param.data.to(device)
                moved += param.numel() * param.element_size()
        for key, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[key] = buffer.to(device)
                moved += buffer.numel() * buffer.element_size()
    return moved

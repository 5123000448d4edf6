"""Frozen weights that live in host RAM and visit the GPU only while in use: block offload for training on small
GPUs, and streaming for generation on them.

Every frozen Linear weight held this way gets a parametrisation whose stored tensor stays in (pinned) host memory;
reading ``module.weight`` copies it to the execution device. That copy is an ordinary temporary, so autograd decides
how long it lives:

- training forward, under gradient checkpointing: nothing is saved inside a block, so each copy is freed once its
  layer ran; backward: the recompute of one block saves that block's copies for its own backward, which frees them;
- generation (no grad): each copy is freed once its layer ran.

So about one block's weights are on the GPU at any time. diffusers' group offload does not manage this in training:
its hooks onload every block again for the recompute and never offload it (on an H100, the whole 24-block probe
model was resident after the backward; ``python -m bench.offload_memory``). The copies are issued on the compute
stream (no prefetch), so a training step costs about two host→GPU transfers of the weights on top of its compute.
Everything else — LoRA layers, biases, norms, embeddings and the small modules outside the blocks — is moved to the GPU.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn.utils import parametrize

logger = logging.getLogger(__name__)

BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")
# torch's pinned-memory allocator rounds every allocation up to a power of two (a 3072 x 12288 bf16 weight of 72 MiB
# takes 128 MiB; FLUX.1-dev's 22 GiB of block weights would lock 34 GiB). So the weights are packed into buffers of
# at most 1 GiB — a power of two, filled first-fit with the largest weights first — and held as views into them.
_BUFFER_BYTES = 1 << 30
_ALIGN = 512  # bytes; every view starts on such a boundary


class HostWeight(torch.nn.Module):
    """Parametrisation of a weight stored on the host: each read returns a fresh copy on ``device``."""

    def __init__(self, device: torch.device, stored: torch.Tensor) -> None:
        super().__init__()
        self.device = device
        self._stored = stored  # where registration puts the weight: a view into a packed buffer, or the weight itself

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        if reading_shapes_only():
            return nan_like(stored, dtype=stored.dtype, device=self.device)
        return self.copy(stored)

    def copy(self, stored: torch.Tensor) -> torch.Tensor:
        # copy=True even when devices match (CPU tests), so a read never aliases the stored tensor.
        return stored.to(self.device, non_blocking=True, copy=True)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        if self._stored.data_ptr() != weight.data_ptr():  # kept in place (memory-mapped) when it is the weight itself
            self._stored.copy_(weight.detach())
        stored, self._stored = self._stored, None  # the parametrisation's ``original`` holds it from now on
        return stored


_reads = threading.local()


def nan_like(stored: torch.Tensor, *, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A tensor of ``stored``'s shape that is one NaN broadcast (no memory, no fill): any use of its values shows."""
    return torch.full((), float("nan"), dtype=dtype, device=device).expand(stored.shape)


def reading_shapes_only() -> bool:
    """True inside ``shapes_only`` in this thread."""
    return getattr(_reads, "shapes_only", False)


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
    """In this thread, reading a host-held (or float8) weight gives a NaN tensor of its shape, dtype and device: no
    copy, no dequantisation. For LoRA loading: peft and diffusers read each wrapped layer's weight some
    20 times, only for its shape, dtype and device — a host→GPU copy of FLUX.1-dev's 17 GB of targeted weights each
    time. (Per thread, so a training running beside it still reads real weights.)"""
    before = reading_shapes_only()
    _reads.shapes_only = True
    try:
        yield
    finally:
        _reads.shapes_only = before


@dataclass(frozen=True)
class OffloadReport:
    """What ``offload_block_weights`` did, in bytes."""

    layers: int  # frozen Linear weights now held on the host
    host_bytes: int  # their total size
    buffer_bytes: int  # the host buffers holding them (pinned where CUDA is)
    pinned: bool
    largest_block_bytes: int  # the most any one block (or layer, when streaming) brings to the GPU at once
    resident_bytes: int  # parameters and buffers moved to the execution device


def alias_weight_in_state_dict(module: torch.nn.Module) -> None:
    """List a parametrised ``weight`` under its plain name in ``module.state_dict()`` too (the stored tensor: same
    shape, host or float8 data). diffusers' FLUX LoRA loader looks weights up by that name to check shapes.

    Such layers cannot merge a LoRA into their weight (peft's ``fuse_lora``/``merge`` would write into a temporary
    copy and change nothing): keep adapters unmerged on them, as the generator does.
    """
    def hook(module: torch.nn.Module, state_dict: dict, prefix: str, _metadata: object) -> None:
        stored = module.parametrizations.weight
        state_dict[prefix + "weight"] = stored.original if hasattr(stored, "original") else stored.original0

    module.register_state_dict_post_hook(hook)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _aligned(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN


def _plan_buffers(sizes: list[int]) -> list[list[int]]:
    """Indices of ``sizes`` per buffer: first fit, largest first, at most ``_BUFFER_BYTES`` (or the largest) each."""
    capacity = max([_BUFFER_BYTES, *sizes])
    buffers: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        fit = next((b for b, taken in enumerate(used) if taken + _aligned(sizes[i]) <= capacity), None)
        if fit is None:
            buffers.append([])
            used.append(0)
            fit = len(buffers) - 1
        buffers[fit].append(i)
        used[fit] += _aligned(sizes[i])
    return buffers


def _host_buffer(size: int, pin: bool) -> tuple[torch.Tensor, bool]:
    """A byte buffer, page-locked if ``pin`` and the host allows (asynchronous copies); returns it and whether."""
    if pin:
        try:
            return torch.empty(size, dtype=torch.uint8, pin_memory=True), True
        except RuntimeError as error:  # pinning needs lockable RAM, which a crowded host may refuse
            logger.warning("could not pin %.1f GB of host memory (%s): copies to the GPU will be slower",
                           size / 1024**3, error)
    return torch.empty(size, dtype=torch.uint8), False


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
    per_block = [_frozen_linears(block) for block in transformer_blocks(model)]
    return _hold_on_host(model, per_block, torch.device(device))


def stream_linear_weights(model: torch.nn.Module, device: str | torch.device) -> OffloadReport:
    """For inference: every frozen Linear weight of ``model`` (on the CPU) stays in host RAM and is copied to
    ``device`` for each use — under ``torch.no_grad`` the copy is freed as soon as its layer ran — and the rest of
    the model moves to ``device``. Generation with FLUX.1-dev's transformer and T5-XXL on a GPU that holds neither."""
    return _hold_on_host(model, [[m] for m in _frozen_linears(model)], torch.device(device))


def _frozen_linears(module: torch.nn.Module) -> list[torch.nn.Linear]:
    found = [m for m in module.modules() if isinstance(m, torch.nn.Linear)
             and not parametrize.is_parametrized(m, "weight") and not m.weight.requires_grad]
    if not found:
        raise ValueError(f"{type(module).__name__} has no frozen Linear layer to hold in host RAM: call "
                         "requires_grad_(False) first (the whole model would otherwise go to the GPU)")
    return found


def _room_to_copy(nbytes: int) -> bool:
    """Whether host RAM can take a copy of ``nbytes`` with room to spare (a quarter, and 4 GiB for the rest)."""
    import psutil

    return psutil.virtual_memory().available >= 1.25 * nbytes + 4 * 1024**3


def _hold_on_host(model: torch.nn.Module, groups: list[list[torch.nn.Linear]], device: torch.device) -> OffloadReport:
    """Put the weights of ``groups`` (lists of Linear layers read together) behind ``HostWeight`` and move
    everything else in ``model`` to ``device``.

    Where host RAM has room, the weights are copied into packed buffers, page-locked where CUDA is (asynchronous,
    faster copies to the GPU). Where it has not, each weight stays where loading put it — memory-mapped from the
    model's files, so page cache the kernel can drop — and every read copies from there, slower but within RAM.
    """
    linears = [m for group in groups for m in group]
    if any(m.weight.device.type != "cpu" for m in linears):
        raise ValueError(f"block offload starts from a model in host memory; it is on {linears[0].weight.device}")
    total = sum(_nbytes(m.weight) for m in linears)
    if not _room_to_copy(total):
        logger.warning("host RAM is short of %.1f GB: weights stay where loading put them (memory-mapped from the "
                       "model files when loaded from them) and are copied to the GPU from there (slower)",
                       1.25 * total / 1024**3)
        for module in linears:
            stored = module.weight.detach()
            parametrize.register_parametrization(module, "weight", HostWeight(device, stored), unsafe=True)
            module.parametrizations.weight.original.requires_grad_(False)
            alias_weight_in_state_dict(module)
        return _report(model, groups, device, buffer_bytes=0, pinned=False)
    pinned = torch.cuda.is_available()
    buffer_bytes = 0
    for members in _plan_buffers([_nbytes(m.weight) for m in linears]):
        # One buffer at a time, each weight moved into it at once: host RAM holds the model plus one buffer, never
        # the model twice.
        size = sum(_aligned(_nbytes(linears[i].weight)) for i in members)
        buffer, pinned = _host_buffer(size, pinned)
        buffer_bytes += size
        offset = 0
        for i in members:
            weight = linears[i].weight
            view = buffer[offset:offset + _nbytes(weight)].view(weight.dtype).view(weight.shape)
            offset += _aligned(_nbytes(weight))
            parametrize.register_parametrization(linears[i], "weight", HostWeight(device, view), unsafe=True)
            linears[i].parametrizations.weight.original.requires_grad_(False)
            alias_weight_in_state_dict(linears[i])
    return _report(model, groups, device, buffer_bytes=buffer_bytes, pinned=pinned)


def _report(model: torch.nn.Module, groups: list[list[torch.nn.Linear]], device: torch.device, *,
            buffer_bytes: int, pinned: bool) -> OffloadReport:
    resident = _move_all_but_host_weights(model, device)
    sizes = [sum(_nbytes(m.parametrizations.weight.original) for m in group) for group in groups]
    return OffloadReport(layers=sum(len(g) for g in groups), host_bytes=sum(sizes), buffer_bytes=buffer_bytes,
                         pinned=pinned, largest_block_bytes=max(sizes, default=0), resident_bytes=resident)


def _move_all_but_host_weights(model: torch.nn.Module, device: torch.device) -> int:
    """``model.to(device)`` except the host-held weights (which ``.to`` would move too); returns bytes moved."""
    moved = 0
    for module in model.modules():
        if isinstance(module, parametrize.ParametrizationList) and isinstance(module[0], HostWeight):
            continue
        for param in module._parameters.values():
            if param is not None:
                param.data = param.data.to(device)
                moved += _nbytes(param)
        for key, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[key] = buffer.to(device)
                moved += _nbytes(buffer)
    return moved

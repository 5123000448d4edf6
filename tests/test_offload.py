"""Block offload: same gradients as the resident model, and only about one block's weights out of host RAM at once.

On this CPU the "GPU" is the CPU too, but every read of a host-held weight is a real copy, so how long copies live
is what autograd decides on a GPU. The copies are tracked with weak references to what ``HostWeight`` returns.
"""

from __future__ import annotations

import copy
import weakref

import pytest
import torch

from pipeline.models import offload
from pipeline.models.flow_matching import flow_matching_loss
from pipeline.training.trainer import add_lora


def _model() -> torch.nn.Module:
    """FLUX architecture at toy width with several blocks of each kind (residency needs more than one)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=3,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    add_lora(model, rank=4, alpha=4, autocast=False)
    model.enable_gradient_checkpointing()
    return model.train()


def _loss(model: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 1, 16, 8, 8, generator=generator)  # 8x8 latents: 16 image tokens
    return flow_matching_loss(model, x0, noise, torch.tensor([0.6]),
                              torch.randn(1, 8, 32, generator=generator), torch.randn(1, 32, generator=generator),
                              guidance=1.0, device="cpu", dtype=torch.float32)


class _Copies:
    """Weak references to every weight copy handed out, to see how many bytes are alive at each moment."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.refs: list[weakref.ref] = []
        self.peak = 0
        original = offload.HostWeight.forward

        def forward(module: offload.HostWeight, stored: torch.Tensor) -> torch.Tensor:
            result = original(module, stored)
            self.refs.append(weakref.ref(result))
            self.peak = max(self.peak, self.alive())
            return result

        monkeypatch.setattr(offload.HostWeight, "forward", forward)

    def alive(self) -> int:
        return sum(t.numel() * t.element_size() for t in (r() for r in self.refs) if t is not None)


def test_offloaded_training_step_matches_the_resident_model() -> None:
    resident = _model()
    offloaded = copy.deepcopy(resident)
    report = offload.offload_block_weights(offloaded, "cpu")

    # Every frozen Linear of the 5 blocks: a double block's 2 norms + 12 projections, a single's norm + 5.
    assert report.layers == 2 * 14 + 3 * 6
    assert 0 < report.largest_block_bytes < report.host_bytes
    _loss(resident).backward()
    _loss(offloaded).backward()
    pairs = [(a, b) for a, b in zip(resident.parameters(), offloaded.parameters(), strict=True) if a.requires_grad]
    assert len(pairs) == 2 * (2 * 12 + 3 * 5)  # A and B of each LoRA layer
    for a, b in pairs:
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0)


def test_host_weights_share_one_packed_buffer() -> None:
    model = _model()
    report = offload.offload_block_weights(model, "cpu")
    stored = [m.parametrizations.weight.original for m in model.modules() if isinstance(m, torch.nn.Linear)
              and hasattr(m, "parametrizations")]
    assert len(stored) == report.layers
    assert len({t.untyped_storage().data_ptr() for t in stored}) == 1  # 0.5 MB: one buffer
    assert report.host_bytes <= report.buffer_bytes < report.host_bytes + report.layers * 512


def test_flux_dev_weights_pack_into_power_of_two_buffers_with_little_slack() -> None:
    """torch's pinned allocator rounds each allocation up to a power of two; the plan keeps that rounding small."""
    mib = 1 << 20
    double = [108, 108, 18, 18, 18, 18, 18, 18, 18, 18, 72, 72, 72, 72]  # MiB: norms, attention, both MLPs
    single = [54, 18, 18, 18, 90, 72]  # MiB: norm, q/k/v, proj_out (15360 -> 3072), proj_mlp
    sizes = [n * mib for n in double * 19 + single * 38]
    buffers = offload._plan_buffers(sizes)
    assert sorted(i for b in buffers for i in b) == list(range(len(sizes)))
    used = [sum(offload._aligned(sizes[i]) for i in b) for b in buffers]
    assert max(used) <= offload._BUFFER_BYTES
    rounded = sum(1 << (u - 1).bit_length() for u in used)
    assert rounded < 1.05 * sum(sizes)  # against 1.56x for one pinned tensor per weight


def test_at_most_one_block_of_weights_is_out_of_host_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    report = offload.offload_block_weights(model, "cpu")
    copies = _Copies(monkeypatch)

    loss = _loss(model)
    assert copies.refs, "the forward never read a host-held weight"
    assert copies.alive() == 0  # checkpointing saved no weight copy for the backward
    assert copies.peak <= report.largest_block_bytes
    loss.backward()
    assert copies.alive() == 0
    # The recompute holds one block's copies until that block's backward is done, never two blocks' worth.
    assert report.largest_block_bytes / 2 < copies.peak <= report.largest_block_bytes


def test_without_checkpointing_the_copies_would_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why offload insists on checkpointing: without it autograd keeps every block's copy for the backward."""
    model = _model()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        offload.offload_block_weights(_model_without_checkpointing(), "cpu")
    report = offload.offload_block_weights(model, "cpu")
    model.disable_gradient_checkpointing()
    copies = _Copies(monkeypatch)
    loss = _loss(model)
    # Saved for the backward: every projection's copy in every block (only the norms', fed by the frozen timestep
    # embedding, are not needed), so several blocks' worth.
    assert copies.alive() > 2 * report.largest_block_bytes
    loss.backward()
    assert copies.alive() == 0


def _model_without_checkpointing() -> torch.nn.Module:
    model = _model()
    model.disable_gradient_checkpointing()
    return model


def test_offload_refuses_a_model_that_is_not_in_host_memory() -> None:
    model = _model().to("meta")
    with pytest.raises(ValueError, match="host memory"):
        offload.offload_block_weights(model, "cpu")


def test_streamed_text_encoders_encode_captions_exactly(tmp_path) -> None:
    """The 16 / 12 GB training modes stream T5 and CLIP from host RAM while encoding captions: same embeddings."""
    from PIL import Image

    from pipeline.intake.dataset import Dataset, DatasetItem
    from pipeline.models.base_model import ensure_tiny_model
    from pipeline.settings import TrainSettings
    from pipeline.training.trainer import _prepare

    model = str(ensure_tiny_model(tmp_path / "models"))
    photo = tmp_path / "face.png"
    Image.new("RGB", (64, 64), (180, 120, 90)).save(photo)
    dataset = Dataset(items=(DatasetItem(image=photo, caption="a photo of zorvek", source="face.png"),),
                      trigger_word="zorvek", resolution=64)
    texts = {}
    for streamed in (False, True):
        prepared, _vae = _prepare(dataset, TrainSettings.quick(), model, tmp_path / f"cache-{streamed}", "cpu",
                                  torch.float32, lambda event: None, offload_encoders=streamed)
        texts[streamed] = prepared.texts[0]
    torch.testing.assert_close(texts[True].prompt, texts[False].prompt, rtol=0, atol=0)
    torch.testing.assert_close(texts[True].pooled, texts[False].pooled, rtol=0, atol=0)


def test_short_of_host_ram_the_weights_stay_where_loading_put_them(monkeypatch: pytest.MonkeyPatch) -> None:
    resident = _model()
    model = copy.deepcopy(resident)
    before = {id(m): m.weight.data_ptr() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    monkeypatch.setattr(offload, "_room_to_copy", lambda nbytes: False)
    report = offload.offload_block_weights(model, "cpu")
    assert report.buffer_bytes == 0 and not report.pinned
    held = [m for m in model.modules() if hasattr(m, "parametrizations")]
    assert len(held) == report.layers
    assert all(m.parametrizations.weight.original.data_ptr() == before[id(m)] for m in held)  # no copy made
    _loss(resident).backward()
    _loss(model).backward()
    for a, b in zip(resident.parameters(), model.parameters(), strict=True):
        if a.requires_grad:
            torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0)

"""The merged-weight LoRA layer: the micro model's LoRA trains to the same weights as peft's own layer, and only the
layers where merging saves work run merged."""

from __future__ import annotations

import pytest
import torch

from pipeline.models import micro
from pipeline.models.flow_matching import flow_matching_loss
from pipeline.training.merged_lora import MergedWeightLoraLinear, merging_pays
from pipeline.training.trainer import add_lora


def _lora(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}


def _train(merge: bool, steps: int) -> tuple[list[float], dict[str, torch.Tensor], dict[str, torch.Tensor],
                                              torch.nn.Module]:
    """``steps`` AdamW steps of the micro model's LoRA (rank 128, modulation and outer layers; alpha 64, so that
    the scaling counts) on seeded batches of 4 at 96 px; the LoRA before and after."""
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_pretrained(micro.MICRO_FOLDER / "transformer", torch_dtype=torch.float32)
    torch.manual_seed(0)
    params = add_lora(model, rank=128, alpha=64.0, autocast=False, modulation=True, outer_layers=True,
                      merge_when_cheaper=merge)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    start = _lora(model)
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 4, 16, 24, 24, generator=generator)  # 96 px through the micro VAE: 144 tokens
    text = torch.randn(4, micro.TEXT_TOKENS, 64, generator=generator), torch.randn(4, 64, generator=generator)
    losses = []
    for _ in range(steps):
        loss = flow_matching_loss(model, x0, noise, torch.rand(4, generator=generator), *text, guidance=3.5,
                                  device="cpu", dtype=torch.float32)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, start, _lora(model), model


def test_the_merged_layer_trains_the_same_lora_as_peft() -> None:
    plain_losses, start, plain, plain_model = _train(False, 12)
    merged_losses, merged_start, merged, merged_model = _train(True, 12)
    assert not any(isinstance(m, MergedWeightLoraLinear) for m in plain_model.modules())
    custom = [name for name, m in merged_model.named_modules() if isinstance(m, MergedWeightLoraLinear)]
    assert len(custom) == sum(".lora_A." in k for k in plain)  # every LoRA layer, under the same names
    assert merged.keys() == plain.keys() and all(torch.equal(merged_start[k], start[k]) for k in start)
    assert merged_losses == pytest.approx(plain_losses, rel=1e-4)
    assert plain_losses[-1] < plain_losses[0]  # it did learn: the comparison is not of two untouched models
    # Rounding apart, every weight took the same path: within 3 % of how far it moved. (1 % failed by a hair here on
    # one layer, 1.02 %: float sums in another order through 12 AdamW steps; a doubled delta is off by ~100 %.)
    for key, weight in plain.items():
        assert (merged[key] - weight).abs().max() < 0.03 * (weight - start[key]).abs().max(), key


def test_merging_is_chosen_only_where_it_saves_work() -> None:
    # The micro model's attention/MLP layers (128 wide, rank 128, 4 x 176 tokens a batch): merged.
    assert merging_pays(4 * 176, 128, 128, 128) and merging_pays(4 * 176, 128, 512, 128)
    # Its modulation layers see one vector per image: peft's path.
    assert not merging_pays(4, 128, 6 * 128, 128)
    # FLUX.1-dev (3072 wide, rank 16, 4096 + 512 tokens): peft's path, by far.
    assert not merging_pays(4608, 3072, 3072, 16)



@pytest.mark.parametrize("rank", [4, 16])
def test_merged_layers_are_used_only_where_some_batch_could_merge(rank: int) -> None:
    """add_lora registers the merged layer only where merging can pay for some token count: a 32-wide FLUX.2 [klein]
    transformer's rank-4 LoRA never merges, so its layers stay peft's own (no check on every call); at rank 16 the
    layers that can merge do."""
    from diffusers import Flux2Transformer2DModel

    from pipeline.training.merged_lora import merging_can_pay

    for in_features, out_features, r in [(128, 128, 128), (32, 32, 4), (32, 192, 4), (32, 32, 16), (3072, 3072, 16)]:
        assert merging_can_pay(in_features, out_features, r) == any(
            merging_pays(tokens, in_features, out_features, r) for tokens in (1, 64, 4096, 10**7))
    model = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                    attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                    timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4))
    add_lora(model, rank=rank, alpha=rank, autocast=False, merge_when_cheaper=True)
    lora_layers = {name: m for name, m in model.named_modules() if hasattr(m, "lora_A")}
    can = {name: merging_can_pay(m.in_features, m.out_features, rank) for name, m in lora_layers.items()}
    assert lora_layers and any(can.values()) == (rank == 16)
    assert all(isinstance(m, MergedWeightLoraLinear) == any(can.values()) for m in lora_layers.values())

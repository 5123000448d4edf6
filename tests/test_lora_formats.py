"""LoRA layouts: diffusers/peft ↔ kohya, checked against diffusers' own kohya FLUX reader at FLUX.1's real width."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline
from safetensors.torch import load_file

from pipeline.models.lora_formats import (
    LoraFactors,
    LoraFormatError,
    delta_weights,
    factors_from_peft,
    from_diffusers,
    from_kohya,
    load_kohya_as_diffusers,
    read_metadata,
    save_lora_file,
    to_diffusers,
    to_kohya,
)

HIDDEN = 3072  # FLUX.1's width: diffusers' kohya reader assumes it for the fused single-block layer
DOUBLE = {"attn.to_q": (HIDDEN, HIDDEN), "attn.to_k": (HIDDEN, HIDDEN), "attn.to_v": (HIDDEN, HIDDEN),
          "attn.to_out.0": (HIDDEN, HIDDEN), "attn.add_q_proj": (HIDDEN, HIDDEN), "attn.add_k_proj": (HIDDEN, HIDDEN),
          "attn.add_v_proj": (HIDDEN, HIDDEN), "attn.to_add_out": (HIDDEN, HIDDEN),
          "ff.net.0.proj": (4 * HIDDEN, HIDDEN), "ff.net.2": (HIDDEN, 4 * HIDDEN),
          "ff_context.net.0.proj": (4 * HIDDEN, HIDDEN), "ff_context.net.2": (HIDDEN, 4 * HIDDEN)}
SINGLE = {"attn.to_q": (HIDDEN, HIDDEN), "attn.to_k": (HIDDEN, HIDDEN), "attn.to_v": (HIDDEN, HIDDEN),
          "proj_mlp": (4 * HIDDEN, HIDDEN), "proj_out": (HIDDEN, 5 * HIDDEN)}


def _peft_state(rank: int, blocks: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A trained-looking peft state dict (both factors non-zero) for the given block indices of FLUX.1."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for kind, indices in blocks.items():
        table = DOUBLE if kind == "transformer_blocks" else SINGLE
        for index in indices:
            for module, (out_features, in_features) in table.items():
                name = f"{kind}.{index}.{module}"
                state[f"{name}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * 0.01
                state[f"{name}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * 0.01
    return state


def _assert_same_deltas(a: dict[str, LoraFactors], b: dict[str, LoraFactors]) -> None:
    """Same ``scale · B A`` per module, compared on random probe vectors (full FLUX-width deltas are 150 MB each)."""
    assert a.keys() == b.keys()
    generator = torch.Generator().manual_seed(7)
    for module, fa in a.items():
        fb = b[module]
        probe = torch.randn(fa.a.shape[1], 4, generator=generator)
        ya = fa.scale * (fa.b.float() @ (fa.a.float() @ probe))
        yb = fb.scale * (fb.b.float() @ (fb.a.float() @ probe))
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-7, msg=module)


@pytest.mark.parametrize("rank,alpha", [(4, 4.0), (4, 1.0), (2, 8.0)])
def test_kohya_file_reads_back_exactly_in_diffusers(tmp_path: Path, rank: int, alpha: float) -> None:
    factors = factors_from_peft(
        _peft_state(rank, {"transformer_blocks": (0, 18), "single_transformer_blocks": (0, 37)}), rank=rank,
        alpha=alpha)
    path = save_lora_file(tmp_path / "kohya.safetensors", to_kohya(factors), {"likeness.rank": str(rank)})
    # diffusers' own loading path for kohya FLUX files (detects the layout, splits the fused layers).
    converted = FluxPipeline.lora_state_dict(str(path))
    state = converted[0] if isinstance(converted, tuple) else converted
    assert all(k.startswith("transformer.") for k in state)
    # The block-diagonal up weight is recognised: each q/k/v gets its own rank-r LoRA, not a copy of the fused one.
    assert state["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"].shape == (rank, HIDDEN)
    assert state["transformer.single_transformer_blocks.37.proj_mlp.lora_B.weight"].shape == (4 * HIDDEN, rank)
    _assert_same_deltas(from_diffusers(state), factors)


# The transformer's layers outside the blocks at FLUX.1's sizes (out, in); the micro model's LoRA trains them too.
TOP_LEVEL = {"x_embedder": (HIDDEN, 64), "context_embedder": (HIDDEN, 4096),
             "time_text_embed.timestep_embedder.linear_1": (HIDDEN, 256),
             "time_text_embed.timestep_embedder.linear_2": (HIDDEN, HIDDEN),
             "time_text_embed.text_embedder.linear_1": (HIDDEN, 768),
             "time_text_embed.text_embedder.linear_2": (HIDDEN, HIDDEN),
             "time_text_embed.guidance_embedder.linear_1": (HIDDEN, 256),
             "time_text_embed.guidance_embedder.linear_2": (HIDDEN, HIDDEN),
             "proj_out": (64, HIDDEN), "norm_out.linear": (2 * HIDDEN, HIDDEN)}


def test_top_level_layers_read_back_in_diffusers_with_the_final_modulation_swapped(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(3)
    state = _peft_state(4, {"single_transformer_blocks": (0,)})
    for module, (out_features, in_features) in TOP_LEVEL.items():
        state[f"{module}.lora_A.weight"] = torch.randn(4, in_features, generator=generator) * 0.01
        state[f"{module}.lora_B.weight"] = torch.randn(out_features, 4, generator=generator) * 0.01
    factors = factors_from_peft(state, rank=4, alpha=2.0)
    kohya = to_kohya(factors)
    assert kohya["lora_unet_img_in.lora_down.weight"].shape == (4, 64)
    assert "lora_unet_final_layer_linear.alpha" not in kohya  # alpha / rank folded into up (see below)
    # BFL's final modulation is (shift, scale), diffusers' (scale, shift): the up weight's halves trade places.
    b = factors["norm_out.linear"].b * 0.5
    torch.testing.assert_close(kohya["lora_unet_final_layer_adaLN_modulation_1.lora_up.weight"],
                               torch.cat([b[HIDDEN:], b[:HIDDEN]]))
    _assert_same_deltas(from_kohya(kohya), factors)
    path = save_lora_file(tmp_path / "kohya.safetensors", kohya, {})
    # diffusers' own converter of kohya FLUX files (it ignores the final layer's alpha: hence the folded scale). It
    # gives these layers' keys without the "transformer." prefix, so its load_lora_weights then leaves them out
    # (diffusers 0.42): in diffusers, lora.safetensors or load_kohya_as_diffusers carry them (README).
    converted = FluxPipeline.lora_state_dict(str(path))
    state = converted[0] if isinstance(converted, tuple) else converted
    _assert_same_deltas(from_diffusers(state), factors)


def test_kohya_names_and_alphas() -> None:
    factors = factors_from_peft(_peft_state(4, {"transformer_blocks": (3,), "single_transformer_blocks": (5,)}),
                                rank=4, alpha=2.0)
    kohya = to_kohya(factors)
    assert kohya["lora_unet_double_blocks_3_img_attn_qkv.lora_down.weight"].shape == (12, HIDDEN)
    assert kohya["lora_unet_double_blocks_3_img_attn_qkv.lora_up.weight"].shape == (3 * HIDDEN, 12)
    assert float(kohya["lora_unet_double_blocks_3_img_attn_qkv.alpha"]) == 6.0  # 3 · alpha: same alpha / rank
    assert float(kohya["lora_unet_double_blocks_3_txt_mlp_2.alpha"]) == 2.0
    assert kohya["lora_unet_single_blocks_5_linear1.lora_up.weight"].shape == (7 * HIDDEN, 16)
    assert "lora_unet_single_blocks_5_linear2.lora_down.weight" in kohya
    names = {k.rsplit(".", 2)[0] if "weight" in k else k.rsplit(".", 1)[0] for k in kohya}
    assert names == {f"lora_unet_double_blocks_3_{n}" for n in (
        "img_attn_qkv", "img_attn_proj", "txt_attn_qkv", "txt_attn_proj", "img_mlp_0", "img_mlp_2", "txt_mlp_0",
        "txt_mlp_2")} | {"lora_unet_single_blocks_5_linear1", "lora_unet_single_blocks_5_linear2"}


def test_round_trips_at_any_width() -> None:
    generator = torch.Generator().manual_seed(1)
    width, rank = 32, 3
    state = {}
    for module, (out_features, in_features) in {"attn.to_q": (width, width), "attn.to_k": (width, width),
                                                "attn.to_v": (width, width), "proj_mlp": (4 * width, width),
                                                "proj_out": (width, 5 * width)}.items():
        state[f"single_transformer_blocks.0.{module}.lora_A.weight"] = torch.randn(rank, in_features,
                                                                                   generator=generator)
        state[f"single_transformer_blocks.0.{module}.lora_B.weight"] = torch.randn(out_features, rank,
                                                                                   generator=generator)
    factors = factors_from_peft(state, rank=rank, alpha=1.5)
    _assert_same_deltas(from_kohya(to_kohya(factors)), factors)
    _assert_same_deltas(from_diffusers(to_diffusers(factors)), factors)
    # The diffusers layout folds alpha / rank into B, so readers that assume alpha = rank get the same delta.
    folded = to_diffusers(factors)
    assert torch.allclose(folded["transformer.single_transformer_blocks.0.proj_out.lora_B.weight"],
                          state["single_transformer_blocks.0.proj_out.lora_B.weight"] * 0.5)


def test_dense_fused_kohya_layer_is_read_exactly() -> None:
    """Other trainers write fused layers with a dense up weight: each member then gets the whole down weight."""
    generator = torch.Generator().manual_seed(2)
    down, up = torch.randn(4, 16, generator=generator), torch.randn(48, 4, generator=generator)
    kohya = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down,
             "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": up,
             "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(2.0)}
    factors = from_kohya(kohya)
    deltas = delta_weights(factors)
    fused = torch.cat([deltas[f"transformer_blocks.0.attn.{m}"] for m in ("to_q", "to_k", "to_v")])
    torch.testing.assert_close(fused, 0.5 * up @ down)


def test_bad_inputs_name_the_key() -> None:
    with pytest.raises(LoraFormatError, match="weird.key"):
        factors_from_peft({"weird.key": torch.zeros(1)}, rank=1, alpha=1)
    with pytest.raises(LoraFormatError, match="lora_B missing"):
        factors_from_peft({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(1, 2)}, rank=1, alpha=1)
    only_q = factors_from_peft(_peft_state(2, {"transformer_blocks": (0,)}), rank=2, alpha=2)
    only_q = {k: v for k, v in only_q.items() if not k.endswith(("to_k", "to_v"))}
    with pytest.raises(LoraFormatError, match="missing"):
        to_kohya(only_q)
    with pytest.raises(LoraFormatError, match="pos_embed.proj"):
        to_kohya({"pos_embed.proj": LoraFactors(a=torch.zeros(1, 2), b=torch.zeros(2, 1))})
    with pytest.raises(LoraFormatError, match="lora_unet_img_in"):
        from_kohya({"lora_unet_img_in.lora_down.weight": torch.zeros(1, 2)})
    with pytest.raises(LoraFormatError, match="lora_te1_text_model"):
        from_kohya({"lora_te1_text_model.lora_down.weight": torch.zeros(1, 2)})


def test_save_is_atomic_and_keeps_metadata(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "lora.safetensors"
    tensors = to_diffusers(factors_from_peft(_peft_state(2, {"transformer_blocks": (0,)}), rank=2, alpha=2))
    save_lora_file(path, tensors, {"likeness.trigger_word": "ohwx", "likeness.steps": 50})
    assert read_metadata(path)["likeness.trigger_word"] == "ohwx"
    assert read_metadata(path)["likeness.steps"] == "50"
    assert read_metadata(path)["format"] == "pt"
    assert sorted(p.name for p in path.parent.iterdir()) == ["lora.safetensors"]
    assert load_file(str(path)).keys() == tensors.keys()
    kohya_path = save_lora_file(tmp_path / "k.safetensors", to_kohya(from_diffusers(tensors)), {})
    _assert_same_deltas(from_diffusers(load_kohya_as_diffusers(kohya_path)), from_diffusers(tensors))

"""FLUX.2 [klein] base 4B / 9B beside FLUX.1 [dev]: parameters, a LoRA training step's FLOPs and GPU memory (JSON).

Without ``--gpu`` (any machine, ~1 minute on 2 cores, no download): each model's transformer, text encoder(s) and VAE
are built on the meta device from their published configs (the real diffusers/transformers classes, no weights) and

- parameters per component, and those of a rank-16 LoRA on the project's targets (``trainer.add_lora``; klein: the
  family's every block linear, 12 per double block and 2 per single block);
- one LoRA training step's FLOPs (forward + backward, batch 1, 512 text tokens) at 512 and 1024 px, counted with
  PyTorch's FLOP counter, as ``bench/train.py`` counts FLUX.1 [dev]; and the one-off encoder FLOPs per photo / caption;
- GPU memory per memory mode (bf16, fp8 weights, nf4, block offload; gradient checkpointing on, the default) from
  ``pipeline.models.memory.estimate_memory``: the training step with the text encoder and VAE **freed after caching**
  (latents and prompt embeddings are computed once, then only the transformer stays), plus the caching phase where
  the modes that keep the encoders resident (bf16, fp8) hold the text encoder in bf16. Which GPU sizes each mode fits.

``--gpu`` (a CUDA machine; ≤ 8 minutes on one H100): builds the full-size klein base 4B transformer with random bf16
weights (the real config; no download there) and times LoRA training steps per memory mode at 512 and 1024 px: s/step
(median after warm-up) and peak GPU memory, written to ``bench/results/family_memory_gpu.json`` row by row; a time
budget stops starting rows. The step is the trainer's own (the family's loss, ``add_lora``, clip 1.0, AdamW).
``--dry-run`` runs the same code on the CPU with a shrunk config (one block of each kind, narrow, 64 px, 16 text
tokens): it checks the code path, not the figures.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.family_memory            # -> bench/results/family_memory_meta.json
    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.family_memory --gpu [--budget-s 420]
    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.family_memory --gpu --dry-run

On the lent GPU machine (its image has torch, peft, transformers and accelerate, not diffusers or bitsandbytes, and
nothing can be fetched there): carry a git-ignored folder with the diffusers 0.42.1 wheel (and bitsandbytes' for the
nf4 row; without it that row says so), then
``python3 -m pip install --no-deps wheels/*.whl && HF_HUB_OFFLINE=1 python3 -m bench.family_memory --gpu``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

logger = logging.getLogger("bench.family_memory")

RESULTS = Path(__file__).resolve().parent / "results"
TEXT_TOKENS = 512  # klein's max_sequence_length (pipeline and diffusers' script); T5's 512 for FLUX.1 [dev]
RANK = 16
RESOLUTIONS = (512, 1024)
GPU_SIZES_GB = (8, 12, 16, 24, 32, 48, 80)
CUDA_CONTEXT_GB = 1.0  # what the CUDA context and allocator slack take beside the estimate (as video_memory.py)
BF16 = 2

# Qwen3 hidden states klein stacks into its prompt (BFL's OUTPUT_LAYERS_QWEN3): layers after 27 are never used.
KLEIN_TEXT_LAYERS = (9, 18, 27)

_KLEIN_COMMON = dict(patch_size=1, in_channels=128, attention_head_dim=128, mlp_ratio=3.0,
                     axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=False,
                     timestep_guidance_channels=256)


@dataclass(frozen=True)
class Model:
    """One base model as this bench needs it: its transformer config and what encodes its prompts."""

    key: str
    name: str
    hub_id: str
    licence: str
    family: str  # "flux1" or "flux2"
    transformer: dict[str, Any]
    text_encoder: dict[str, Any]  # flux2: Qwen3Config kwargs; flux1: unused (T5-XXL + CLIP-L)

    @property
    def hidden(self) -> int:
        return self.transformer["num_attention_heads"] * self.transformer["attention_head_dim"]

    @property
    def blocks(self) -> int:
        return self.transformer["num_layers"] + self.transformer["num_single_layers"]


MODELS = {
    "klein-base-4b": Model(
        "klein-base-4b", "FLUX.2 [klein] base 4B", "black-forest-labs/FLUX.2-klein-base-4B", "Apache-2.0", "flux2",
        dict(_KLEIN_COMMON, num_layers=5, num_single_layers=20, num_attention_heads=24, joint_attention_dim=7680),
        dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
             num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True)),
    "klein-base-9b": Model(
        "klein-base-9b", "FLUX.2 [klein] base 9B", "black-forest-labs/FLUX.2-klein-base-9B",
        "FLUX non-commercial", "flux2",
        dict(_KLEIN_COMMON, num_layers=8, num_single_layers=24, num_attention_heads=32, joint_attention_dim=12288),
        dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
             num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False)),
    "flux1-dev": Model(
        "flux1-dev", "FLUX.1 [dev]", "black-forest-labs/FLUX.1-dev", "FLUX.1 [dev] non-commercial", "flux1",
        dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
             axes_dims_rope=(16, 56, 56)),
        {}),
}
# The --dry-run's klein: one block of each kind, two heads (RoPE needs head_dim 128 = 4 x 32), short prompts.
DRY_RUN = dict(_KLEIN_COMMON, num_layers=1, num_single_layers=1, num_attention_heads=2, joint_attention_dim=96)


# ------------------------------------------------------------------------------------------------ building
def klein_family() -> Any:
    """The project's FLUX.2 [klein] family (pipeline/models/families): its LoRA targets and its training loss."""
    from pipeline.models.families import FamilyId, family

    return family(FamilyId.FLUX2_KLEIN)


def add_klein_lora(transformer: torch.nn.Module, *, rank: int, autocast: bool) -> list[torch.nn.Parameter]:
    """The trainer's own ``add_lora`` with klein's targets (every block linear: 12 per double block, 2 per single
    block), alpha = rank."""
    from pipeline.training.trainer import add_lora

    return add_lora(transformer, rank=rank, alpha=rank, autocast=autocast, model_family=klein_family())


def build_klein(config: dict[str, Any], device: str, *, rank: int = RANK, lora: bool = True,
                before_lora: Callable[[torch.nn.Module], Any] | None = None) -> torch.nn.Module:
    """A FLUX.2 transformer with random weights built straight in bf16 on ``device`` (meta: shapes only), with the
    LoRA added; ``before_lora`` changes the base layers first (nf4 must replace them before peft wraps them)."""
    from diffusers import Flux2Transformer2DModel

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # no fp32 copy of 4 B parameters on the way
    try:
        with torch.device(device):
            model = Flux2Transformer2DModel(**config)
        if before_lora is not None:
            before_lora(model)
        if lora:
            add_klein_lora(model, rank=rank, autocast=device == "cuda")
    finally:
        torch.set_default_dtype(default)
    return model


def on_meta(make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with torch.device("meta"):
        return make()


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())  # tied weights once


# ------------------------------------------------------------------------------------------------ the step
def klein_inputs(resolution: int, device: str, *, batch: int = 1, text_tokens: int = TEXT_TOKENS,
                 text_dim: int = 7680) -> dict[str, torch.Tensor]:
    """Random cached inputs of one klein step: (B, 128, res/16, res/16) normalised latents (32 VAE channels after
    the 2x2 patchify) and noise, sigmas, (B, tokens, 3 x Qwen3 hidden) prompt embeddings."""
    side = resolution // 16
    return dict(x0=torch.randn(batch, 128, side, side, device=device),
                noise=torch.randn(batch, 128, side, side, device=device),
                sigmas=torch.rand(batch, device=device),
                prompt=torch.randn(batch, text_tokens, text_dim, device=device))


def klein_loss(transformer: torch.nn.Module, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
               prompt: torch.Tensor, *, device: str) -> torch.Tensor:
    """The trainer's rectified-flow loss for one klein batch (the family's ``loss``: 4-axis ids, timestep = sigma,
    no guidance input), bf16 as on a GPU."""
    from pipeline.models.families import TextEmbedding

    texts = [TextEmbedding(prompt=row) for row in prompt]
    return klein_family().loss(transformer, x0, noise, sigmas, texts, guidance=1.0, device=device,
                               dtype=torch.bfloat16)


def count_klein_step(model: Model, resolution: int) -> dict[str, float]:
    """FLOPs of one LoRA training step (forward + backward, batch 1, no checkpointing) on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    transformer = build_klein(model.transformer, "meta")
    transformer.train()
    counter = FlopCounterMode(display=False)
    with counter:
        loss = klein_loss(transformer, **klein_inputs(resolution, "meta",
                                                      text_dim=model.transformer["joint_attention_dim"]),
                          device="meta")
        forward = counter.get_total_flops()
        loss.backward()
    total = counter.get_total_flops()
    return {"forward_tflop": round(forward / 1e12, 2), "backward_tflop": round((total - forward) / 1e12, 2),
            "step_tflop": round(total / 1e12, 1)}


# ------------------------------------------------------------------------------------------------ components
def klein_components(model: Model) -> dict[str, Any]:
    """Parameter counts of a klein's Qwen3 text encoder and FLUX.2 VAE, and their one-off FLOPs, on meta."""
    from diffusers import AutoencoderKLFlux2
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Qwen3Config, Qwen3ForCausalLM

    text = on_meta(lambda: Qwen3ForCausalLM(Qwen3Config(**model.text_encoder)))
    vae = on_meta(AutoencoderKLFlux2)  # the class defaults are FLUX.2's VAE (shared by every FLUX.2 model)
    layer = parameter_count(text.model.layers[0])
    # What a truncated encoder keeps: embeddings + layers 1..27 (the last tap); the rest and an untied lm_head go.
    unused = (model.text_encoder["num_hidden_layers"] - max(KLEIN_TEXT_LAYERS)) * layer
    if not model.text_encoder["tie_word_embeddings"]:
        unused += text.lm_head.weight.numel()
    out: dict[str, Any] = {"text_encoder": parameter_count(text), "text_encoder_unused_after_layer_27": unused,
                           "vae": parameter_count(vae)}
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        text.model(input_ids=torch.zeros(1, TEXT_TOKENS, dtype=torch.long, device="meta"))
    out["text_encoder_tflop_per_caption"] = round(counter.get_total_flops() / 1e12, 2)
    for resolution in RESOLUTIONS:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            vae.encode(torch.randn(1, 3, resolution, resolution, device="meta"))
        out[f"vae_encode_tflop_{resolution}px"] = round(counter.get_total_flops() / 1e12, 2)
    return out


def flux1_components() -> dict[str, Any]:
    """FLUX.1 [dev]'s encoders (T5-XXL + CLIP-L, bench/train.py's configs) and 16-channel VAE, on meta."""
    from diffusers import AutoencoderKL

    from bench.train import count_encoder_flops

    encoders = count_encoder_flops(512)
    vae = on_meta(lambda: AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                                        down_block_types=("DownEncoderBlock2D",) * 4,
                                        up_block_types=("UpDecoderBlock2D",) * 4,
                                        block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                        use_quant_conv=False, use_post_quant_conv=False))
    return {"text_encoder": encoders["t5_xxl_parameters"] + encoders["clip_l_parameters"],
            "text_encoder_parts": {"t5_xxl": encoders["t5_xxl_parameters"], "clip_l": encoders["clip_l_parameters"]},
            "text_encoder_unused_after_layer_27": 0, "vae": parameter_count(vae),
            "text_encoder_tflop_per_caption": round(encoders["t5_xxl_tflop"] + encoders["clip_l_tflop"], 2),
            "vae_encode_tflop_512px": round(encoders["vae_encode_tflop"], 2)}


def transformer_counts(model: Model) -> dict[str, int]:
    """Base and LoRA parameters, and the parameters block offload leaves on the GPU (all but the block weights,
    plus the largest block while it runs)."""
    from bench.train import build_transformer

    transformer = (build_klein(model.transformer, "meta") if model.family == "flux2"
                   else build_transformer(model.transformer, "meta"))
    base = sum(p.numel() for p in transformer.parameters() if not p.requires_grad)
    lora = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    blocks = [b for name in ("transformer_blocks", "single_transformer_blocks") for b in getattr(transformer, name)]
    block_sizes = [sum(p.numel() for p in b.parameters() if not p.requires_grad) for b in blocks]
    return {"base": base, "lora_rank16": lora, "largest_block": max(block_sizes),
            "outside_blocks": base - sum(block_sizes)}


# ------------------------------------------------------------------------------------------------ memory
def memory_rows(model: Model, counts: dict[str, int], text_encoder: int, vae: int) -> dict[str, Any]:
    """GPU GB per mode and resolution from the project's memory model, and the GPU sizes each fits.

    Training: the transformer alone (encoders freed after caching). Caching: in bf16 and fp8 the trainer keeps the
    encoders on the GPU (bf16) while it caches; nf4 and offload stream them (a layer at a time: about 0).
    """
    from pipeline.models import memory

    caching = {mode: (text_encoder + vae) * BF16 / memory.GB if mode in ("bf16", "fp8") else 0.0
               for mode in memory.MODES}
    # memory.py's offload figure keeps 3.4 % of the weights on the GPU (FLUX.1 [dev]'s largest block and the layers
    # outside the blocks). The same model fed this transformer's own resident parameters says what offload keeps.
    resident = counts["largest_block"] + counts["outside_blocks"]
    rows: dict[str, Any] = {"caching_phase_gb": {m: round(v, 2) for m, v in caching.items()},
                            "offload_resident_share": round(resident / counts["base"], 4)}
    for resolution in RESOLUTIONS:
        for mode in memory.MODES:
            kwargs = dict(lora_parameters=counts["lora_rank16"], hidden_size=model.hidden, num_blocks=model.blocks,
                          image_tokens=(resolution // 16) ** 2, text_tokens=TEXT_TOKENS, gradient_checkpointing=True)
            estimate = memory.estimate_memory(mode, base_parameters=counts["base"], **kwargs)
            row = {k: round(v, 2) for k, v in vars(estimate).items() if k != "mode"}
            if mode == "offload":
                own = memory.estimate_memory("bf16", base_parameters=resident, **kwargs)
                row["total_gb_with_own_block_share"] = round(own.total_gb, 2)
            peak = max(row.get("total_gb_with_own_block_share", row["total_gb"]), caching[mode]) + CUDA_CONTEXT_GB
            row["peak_with_context_gb"] = round(peak, 1)
            row["smallest_gpu_gb"] = next((size for size in GPU_SIZES_GB if peak <= size), None)
            rows[f"{mode}_{resolution}px"] = row
        no_ckpt = memory.estimate_memory("bf16", base_parameters=counts["base"], lora_parameters=counts["lora_rank16"],
                                         hidden_size=model.hidden, num_blocks=model.blocks,
                                         image_tokens=(resolution // 16) ** 2, text_tokens=TEXT_TOKENS,
                                         gradient_checkpointing=False)
        rows[f"bf16_{resolution}px_no_checkpointing"] = {"total_gb": round(no_ckpt.total_gb, 2)}
    return rows


def count(model: Model) -> dict[str, Any]:
    from bench.train import count_step_flops

    started = time.perf_counter()
    counts = transformer_counts(model)
    parts = klein_components(model) if model.family == "flux2" else flux1_components()
    if model.family == "flux2":
        flops = {f"{r}px": count_klein_step(model, r) for r in RESOLUTIONS}
    else:
        flops = {f"{r}px": {k: round(v, 2 if k != "step_tflop" else 1)
                            for k, v in count_step_flops(r, checkpointing=False).items()} for r in RESOLUTIONS}
    params = {"transformer": counts["base"], "text_encoder": parts.pop("text_encoder"), "vae": parts.pop("vae")}
    return {
        "name": model.name, "hub_id": model.hub_id, "licence": model.licence,
        "params_B": {k: round(v / 1e9, 3) for k, v in params.items()},
        "params": params, "lora_rank16_params": counts["lora_rank16"],
        "bf16_weights_GB": {k: round(v * BF16 / 1e9, 2) for k, v in params.items()},
        "transformer": {"hidden": model.hidden, "double_blocks": model.transformer["num_layers"],
                        "single_blocks": model.transformer["num_single_layers"],
                        "largest_block_params": counts["largest_block"],
                        "outside_blocks_params": counts["outside_blocks"]},
        "encoders": parts,
        "step_flops_batch1": flops,
        "memory_gb": memory_rows(model, counts, params["text_encoder"], params["vae"]),
        "seconds": round(time.perf_counter() - started, 1),
    }


# ------------------------------------------------------------------------------------------------ --gpu
def _nf4_blocks(model: torch.nn.Module) -> int:
    """Replace the block linears by bitsandbytes 4-bit ones (nf4, bf16 compute), as loading with the trainer's
    BitsAndBytesConfig does; before the LoRA, so peft wraps the 4-bit layers. Returns how many."""
    import bitsandbytes as bnb

    from pipeline.models.offload import transformer_blocks

    count = 0
    for block in transformer_blocks(model):
        for name, module in list(block.named_modules()):
            if type(module) is not torch.nn.Linear:
                continue
            parent = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
            layer = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type="nf4", device="cpu")
            layer.weight = bnb.nn.Params4bit(module.weight.data.cpu(), requires_grad=False, quant_type="nf4")
            if module.bias is not None:
                layer.bias = torch.nn.Parameter(module.bias.data, requires_grad=False)
            setattr(parent, name.rsplit(".", 1)[-1], layer.to(module.weight.device))  # .to(cuda) quantises
            count += 1
    return count


def _time_steps(model: torch.nn.Module, inputs: dict[str, torch.Tensor], device: str, *, warmup: int,
                steps: int) -> dict[str, Any]:
    """The engine's step shape (loss, backward, clip 1.0, AdamW, zero_grad), timed after ``warmup`` steps."""
    from pipeline.training.trainer import training_attention

    cuda = device == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=cuda)
    model.train()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with training_attention():
            loss = klein_loss(model, **inputs, device=device)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # .item() waits for the GPU: the step is over here
        if i >= warmup:
            times.append(time.perf_counter() - start)
    del optimizer
    return {"s_per_step": round(statistics.median(times), 4), "s_per_step_min": round(min(times), 4),
            "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "loss_finite": all(abs(x) < float("inf") for x in losses)}


# name: (gradient checkpointing, what holds the frozen weights)
GPU_MODES = {"bf16": (False, "bf16"), "bf16_ckpt": (True, "bf16"), "fp8_ckpt": (True, "fp8"),
             "nf4_ckpt": (True, "nf4"), "offload_ckpt": (True, "offload")}


def _build_mode(config: dict[str, Any], device: str, checkpointing: bool, weights: str) -> tuple[torch.nn.Module,
                                                                                                  dict[str, Any]]:
    """The transformer as the trainer holds it in one memory mode (the project's own fp8 and offload code)."""
    from pipeline.models import memory
    from pipeline.models.offload import offload_block_weights

    notes: dict[str, Any] = {}
    model = build_klein(config, device, before_lora=_nf4_blocks if weights == "nf4" else None)
    if checkpointing:
        model.enable_gradient_checkpointing()
    if weights == "fp8":
        notes["fp8_layers"] = memory.quantize_frozen_linears_fp8(model)
    if weights == "offload":
        model.to("cpu")  # block offload keeps the block weights in host RAM: the model must start there
        report = offload_block_weights(model, device)
        notes["offload_largest_block_gb"] = round(report.largest_block_bytes / memory.GB, 2)
    if device == "cuda":
        torch.cuda.empty_cache()
    return model, notes


def gpu_bench(*, dry_run: bool, budget_s: float, warmup: int, steps: int, modes: list[str],
              out: Path | None) -> dict[str, Any]:
    """Klein base 4B (or the dry run's shrunk config on the CPU): one row per (mode, resolution)."""
    from pipeline.models import memory

    began = time.monotonic()
    device = "cpu" if dry_run else "cuda"
    model_def = MODELS["klein-base-4b"]
    config = DRY_RUN if dry_run else model_def.transformer
    resolutions, text_tokens = ((64,), 16) if dry_run else (RESOLUTIONS, TEXT_TOKENS)
    report: dict[str, Any] = {"model": model_def.name, "dry_run": dry_run, "torch": torch.__version__,
                              "device": "cpu" if dry_run else torch.cuda.get_device_name(),
                              "config": {k: v for k, v in config.items() if k != "axes_dims_rope"},
                              "lora_rank": RANK, "text_tokens": text_tokens, "warmup": warmup, "steps": steps,
                              "budget_s": budget_s, "rows": []}
    try:
        import bitsandbytes  # noqa: F401

        report["bitsandbytes"] = True
    except Exception as exc:  # any import failure means no nf4 here
        report["bitsandbytes"] = f"unavailable ({type(exc).__name__})"

    def write() -> None:
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1))

    sizes = transformer_counts(Model("run", "", "", "", "flux2", config, {}))
    if not dry_run:
        torch.backends.cuda.matmul.allow_tf32 = True
    for name in modes:
        checkpointing, weights = GPU_MODES[name]
        if time.monotonic() - began > budget_s - 30:  # building 4 B random weights and a warm-up take ~30 s
            report["rows"].append({"mode": name, "skipped": "bench time limit"})
            write()
            continue
        if weights == "nf4" and report["bitsandbytes"] is not True:
            report["rows"].append({"mode": name, "skipped": f"bitsandbytes {report['bitsandbytes']}"})
            write()
            continue
        started = time.monotonic()
        try:
            model, notes = _build_mode(config, device, checkpointing, weights)
        except Exception as exc:  # one mode that cannot be built must not end the bench
            report["rows"].append({"mode": name, "error": f"build: {type(exc).__name__}: {str(exc)[:300]}"})
            write()
            continue
        build_s = round(time.monotonic() - started, 1)
        for resolution in resolutions:
            row: dict[str, Any] = {"mode": name, "resolution": resolution, "gradient_checkpointing": checkpointing,
                                   "build_s": build_s, **notes}
            estimate = memory.estimate_memory(
                weights, base_parameters=sizes["base"], lora_parameters=sizes["lora_rank16"],
                hidden_size=config["num_attention_heads"] * config["attention_head_dim"],
                num_blocks=config["num_layers"] + config["num_single_layers"], image_tokens=(resolution // 16) ** 2,
                text_tokens=text_tokens, gradient_checkpointing=checkpointing)
            row["estimate_gb"] = round(estimate.total_gb, 2)
            if time.monotonic() - began > budget_s:
                row["skipped"] = "bench time limit"
            else:
                try:
                    inputs = klein_inputs(resolution, device, text_tokens=text_tokens,
                                          text_dim=config["joint_attention_dim"])
                    row.update(_time_steps(model, inputs, device, warmup=warmup, steps=steps))
                    row["s_per_1000_steps"] = round(row["s_per_step"] * 1000, 1)
                except torch.OutOfMemoryError as exc:
                    row["error"] = f"out of memory: {str(exc)[:200]}"
                except Exception as exc:  # record the failure, go on with the next row
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            report["rows"].append(row)
            write()
            if device == "cuda":
                torch.cuda.empty_cache()
        del model
        memory.empty_caches()
    report["bench_seconds"] = round(time.monotonic() - began, 1)
    write()
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="time klein base 4B's LoRA step per memory mode on CUDA")
    parser.add_argument("--dry-run", action="store_true", help="--gpu's code on the CPU: a shrunk klein, 64 px")
    parser.add_argument("--budget-s", type=float, default=420, help="--gpu: start no row after this many seconds")
    parser.add_argument("--warmup", type=int, default=3, help="--gpu: untimed steps per row")
    parser.add_argument("--steps", type=int, default=8, help="--gpu: timed steps per row")
    parser.add_argument("--modes", default=",".join(GPU_MODES), help="--gpu: modes, in order")
    parser.add_argument("--models", default=",".join(MODELS), help="meta counts: which models")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: bench/results/family_memory_*.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.gpu:
        if not (args.dry_run or torch.cuda.is_available()):
            raise SystemExit("--gpu needs CUDA (or --dry-run to check the code on the CPU)")
        if args.dry_run:
            torch.set_num_threads(1)
        out = args.out or RESULTS / ("family_memory_gpu_dryrun.json" if args.dry_run else "family_memory_gpu.json")
        report = gpu_bench(dry_run=args.dry_run, budget_s=args.budget_s, warmup=args.warmup, steps=args.steps,
                           modes=args.modes.split(","), out=out)
        print(json.dumps(report, indent=1))
        return
    from pipeline.models import memory

    report = {"what": "meta-device counts (no weights): parameters, LoRA step FLOPs (batch 1, 512 text tokens, "
                      "rank-16 LoRA on every block linear), GPU memory per mode from pipeline.models.memory",
              "torch": torch.__version__, "text_tokens": TEXT_TOKENS, "lora_rank": RANK,
              "memory_assumptions": "gradient checkpointing on; text encoder and VAE freed after caching latents "
                                    "and prompt embeddings (training = transformer only); bf16/fp8 hold the encoders "
                                    "in bf16 on the GPU while caching, nf4/offload stream them; "
                                    f"+{CUDA_CONTEXT_GB} GB CUDA context; GB = GiB",
              "memory_modes": list(memory.MODES),
              "models": {key: count(MODELS[key]) for key in args.models.split(",")}}
    out = args.out or RESULTS / "family_memory_meta.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

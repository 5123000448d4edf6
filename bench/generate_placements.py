"""Generation per placement with FLUX.1-dev's architecture and random weights (prints JSON, one row per placement).

For each placement of ``pipeline.models.base_model`` (gpu, fp8, stream): seconds to place the pipeline from host RAM,
seconds to load a rank-16 LoRA, seconds per denoising step and per image at ``--size`` px, and peak GPU memory.
Needs CUDA for the real figures; ``--layers 1 --size 128 --steps 2 --device cpu`` is a dry run of the same code at
full width with one block of each kind (what the CPU machines can check).

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.generate_placements [--placements gpu,fp8,stream]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.train import FLUX_DEV_TRANSFORMER
from pipeline.generation.generator import Generator
from pipeline.models import base_model, memory
from pipeline.settings import GenerateSettings
from pipeline.training.trainer import lora_target_modules

GB = 1024**3


def random_flux_pipeline(layers: int | None, data_dir: Path) -> Any:
    """FLUX.1-dev's components at full width with random bf16 weights in host RAM (tokenizers: the tiny model's)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

    tiny = base_model.ensure_tiny_model(data_dir)
    transformer_config = dict(FLUX_DEV_TRANSFORMER)
    if layers:
        transformer_config.update(num_layers=layers, num_single_layers=layers)
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        components = {
            "transformer": FluxTransformer2DModel(**transformer_config),
            "text_encoder_2": T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240,
                                                      num_layers=layers or 24, num_heads=64,
                                                      feed_forward_proj="gated-gelu")),
            "text_encoder": CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                                         num_hidden_layers=layers or 12, num_attention_heads=12,
                                                         projection_dim=768)),
            "vae": AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                                 block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=1024,
                                 scaling_factor=0.3611,
                                 shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
        }
    generator = torch.Generator().manual_seed(0)
    for module in components.values():
        # Parameters were made on meta (no memory, no slow init); buffers (e.g. CLIP's position ids) are real.
        for owner in module.modules():
            for key, param in owner._parameters.items():
                if param is not None and param.is_meta:
                    data = torch.empty(param.shape, dtype=torch.bfloat16).normal_(0, 0.02, generator=generator)
                    owner._parameters[key] = torch.nn.Parameter(data, requires_grad=False)
        module.to(torch.bfloat16).eval()
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(tiny, subfolder="scheduler"),
                        tokenizer=CLIPTokenizer.from_pretrained(tiny, subfolder="tokenizer"),
                        tokenizer_2=T5Tokenizer.from_pretrained(tiny, subfolder="tokenizer_2"), **components)


def random_lora(transformer: torch.nn.Module, path: Path, rank: int = 16) -> Path:
    """A diffusers-format rank-``rank`` LoRA for the engine's target layers, with random weights."""
    from safetensors.torch import save_file

    modules = dict(transformer.named_modules())
    tensors = {}
    for name in lora_target_modules(transformer):
        linear = modules[name]
        tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, linear.in_features) * 0.01
        tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(linear.out_features, rank) * 0.01
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(path))
    return path


def measure(placement: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"placement": placement, "size": args.size, "steps": args.steps}
    pipe = random_flux_pipeline(args.layers, root / "data")
    lora = random_lora(pipe.transformer, root / f"lora-{placement}.safetensors")
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(args.device)
    tic = time.perf_counter()
    base_model._place(pipe, placement, args.device)
    pipe.likeness_placement = base_model.Placement(placement, "bench: asked for", {})
    row["place_s"] = round(time.perf_counter() - tic, 2)
    generator = Generator("random-flux-dev", root / "data", device=args.device)
    generator._pipe = pipe  # the random pipeline stands in for a loaded base model
    tic = time.perf_counter()
    with generator.activated(lora):
        pass
    row["lora_load_s"] = round(time.perf_counter() - tic, 2)
    stamps: list[float] = []

    def on_step(_pipe: Any, _step: int, _t: Any, tensors: dict) -> dict:
        if cuda:
            torch.cuda.synchronize(args.device)
        stamps.append(time.perf_counter())
        return tensors

    settings = GenerateSettings(prompt="a portrait photo of a person", steps=args.steps, width=args.size,
                                height=args.size)
    with generator.activated(lora) as active:
        generator.render(active, settings, seed=0, on_step=on_step)  # warm-up
        stamps.clear()
        tic = time.perf_counter()
        generator.render(active, settings, seed=1, on_step=on_step)
        row["image_s"] = round(time.perf_counter() - tic, 2)
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    row["s_per_step"] = round(gaps[len(gaps) // 2], 3) if gaps else None
    if cuda:
        row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(args.device) / GB, 2)
    generator.unload()  # this placement's pipeline must be gone before the next one is built and measured
    del pipe, generator
    memory.empty_caches()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--placements", default="gpu,fp8,stream")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per timed image")
    parser.add_argument("--layers", type=int, default=None, help="blocks of each kind (default: FLUX.1-dev's)")
    args = parser.parse_args()
    if not args.device:
        print(json.dumps({"skipped": "needs a CUDA GPU (or --device cpu with --layers 1 for a dry run)"}))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for placement in args.placements.split(","):
            try:
                rows.append(measure(placement, args, Path(tmp)))
            except Exception as exc:  # one failing placement (e.g. out of memory) must not end the bench
                rows.append({"placement": placement, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"bench": "generate_placements", "device": args.device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""The real video models' size, counted where it can be: parameters, weights, one step's work and memory (JSON).

Without ``--gpu`` (any machine, seconds, no download): Wan 2.2 TI2V-5B, Wan 2.1 I2V-14B (480P) and LTX-Video 2B
(0.9.x) are built on the meta device from their published configs — the real diffusers and transformers classes,
no weights — and for each: parameters and bf16 weight GB per component; for a 2-second 480p clip (480×832, the
model's frame rate, its frame-count rule) the tokens the transformer sees (latent frames × latent h × w / patch),
a first-order FLOP count of one denoising step (2 × transformer parameters × tokens for the linear layers, plus
4 × tokens² × width × layers for self-attention and 4 × tokens × text tokens × width × layers for cross-attention;
two passes a step with guidance) and the transformer's activations (inference: the widest layer's tensors, flash
attention — no tokens² matrix); and the GPU memory each memory mode needs: everything resident (all weights + the
activations), or model CPU offload as ``--video-model`` loads a real model (the largest of text encoder, transformer
+ activations, VAE; the VAE decodes in tiles, whose activations are not counted here: ``--gpu`` measures them),
with 1 GB for the CUDA context, against common GPU sizes.

``--gpu MODEL`` (a CUDA machine; ≤ 8 minutes on an H100 for the 5B): builds that model at full size with random
bf16 weights (no download there either) and makes a 2-second 480p clip from a still per memory mode — bf16 resident,
then model CPU offload with VAE tiling — printing s/step (the first step not counted), the decode's seconds and the
peak GPU memory. ``--dry-run`` runs the same code on the CPU with one block per stack and a tiny clip (checks the
code path, not the figures).

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.video_memory > bench/results/video_memory_meta.json
    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.video_memory --gpu wan22-5b [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

GB = 1e9
CUDA_CONTEXT_GB = 1.0
GPU_SIZES_GB = (12, 16, 24, 32, 40, 48, 80)
CLIP_SECONDS, HEIGHT, WIDTH = 2, 480, 832
BF16 = 2  # bytes

# T5-XXL's encoder (LTX-Video) and UMT5-XXL's (Wan) share their shape; the vocabularies differ.
XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu")


@dataclass(frozen=True)
class VideoModel:
    """One real image-to-video model: its components' configs and how it turns pixels into tokens."""

    name: str
    hub_id: str
    family: str  # "wan" or "ltx": which pipeline class and scheduler
    transformer: dict[str, Any]
    text_vocab: int
    vae: dict[str, Any]
    fps: int
    spatial: int  # VAE downsampling in space
    temporal: int  # … and in time (frames are temporal × k + 1)
    patch: int  # the transformer's patch in h and w
    width: int  # the transformer's hidden width
    text_tokens: int  # the prompt's padded length the cross-attention sees
    guidance_passes: int = 2  # the model card's guidance > 1: a conditional and an unconditional pass a step
    image_encoder: dict[str, Any] = field(default_factory=dict)  # Wan 2.1 I2V: CLIP ViT-H/14
    extra: dict[str, Any] = field(default_factory=dict)  # the pipeline's own arguments

    def frames(self) -> int:
        """The frame count of a CLIP_SECONDS clip at the model's rate, rounded up to temporal × k + 1."""
        k = -(-(CLIP_SECONDS * self.fps - 1) // self.temporal)
        return self.temporal * k + 1

    def tokens(self) -> int:
        latent_frames = (self.frames() - 1) // self.temporal + 1
        return latent_frames * (HEIGHT // self.spatial // self.patch) * (WIDTH // self.spatial // self.patch)


WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
                 patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4, latents_mean=[0.0] * 48,
                 latents_std=[1.0] * 48)
LTX_091_VAE = dict(decoder_block_out_channels=(256, 512, 1024), decoder_layers_per_block=(5, 6, 7, 8),
                   decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(True, True, True, False),
                   upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=True)
MODELS = {
    # Wan-AI/Wan2.2-TI2V-5B-Diffusers: 24 fps; the still is encoded into the first latent frame (no image encoder).
    "wan22-5b": VideoModel(
        "Wan 2.2 TI2V-5B", "Wan-AI/Wan2.2-TI2V-5B-Diffusers", "wan",
        dict(patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48, out_channels=48,
             text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30),
        256384, WAN22_VAE, fps=24, spatial=16, temporal=4, patch=2, width=3072, text_tokens=512,
        extra=dict(expand_timesteps=True)),
    # Wan-AI/Wan2.1-I2V-14B-480P-Diffusers: 16 fps; CLIP image tokens beside the text.
    "wan21-14b": VideoModel(
        "Wan 2.1 I2V-14B (480P)", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "wan",
        dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16,
             text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, image_dim=1280, added_kv_proj_dim=5120),
        256384, {}, fps=16, spatial=8, temporal=4, patch=2, width=5120, text_tokens=512 + 257,
        image_encoder=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                           image_size=224, patch_size=14, projection_dim=1024)),
    # Lightricks/LTX-Video 0.9.1 (2B): 25 fps, frames 8k + 1; the pipeline batches the two guidance passes.
    "ltx-2b": VideoModel(
        "LTX-Video 2B (0.9.1)", "Lightricks/LTX-Video-0.9.1", "ltx", {}, 32128, LTX_091_VAE, fps=25, spatial=32,
        temporal=8, patch=1, width=2048, text_tokens=128),
}


# ------------------------------------------------------------------------------------------------ building
def components(model: VideoModel, *, layers: int | None = None, vocab: int | None = None) -> dict[str, Callable]:
    """The model's components as builders (``layers``/``vocab``: the dry run's one block and tiny vocabulary)."""
    from diffusers import AutoencoderKLLTXVideo, AutoencoderKLWan, LTXVideoTransformer3DModel, WanTransformer3DModel
    from transformers import CLIPVisionConfig, CLIPVisionModel, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    text = dict(XXL, vocab_size=vocab or model.text_vocab, **({"num_layers": layers} if layers else {}))
    blocks = {"num_layers": layers} if layers else {}
    if model.family == "ltx":
        return {"text_encoder": lambda: T5EncoderModel(T5Config(**text)),
                "transformer": lambda: LTXVideoTransformer3DModel(**model.transformer, **blocks),
                "vae": lambda: AutoencoderKLLTXVideo(**model.vae)}
    built = {"text_encoder": lambda: UMT5EncoderModel(UMT5Config(**text)),
             "transformer": lambda: WanTransformer3DModel(**model.transformer | blocks),
             "vae": lambda: AutoencoderKLWan(**model.vae)}
    if model.image_encoder:
        vision = model.image_encoder | ({"num_hidden_layers": layers} if layers else {})
        built["image_encoder"] = lambda: CLIPVisionModel(CLIPVisionConfig(**vision))
    return built


def on_meta(make: Callable) -> Any:
    """A component with its parameters on the meta device (no memory); T5's embeddings tied as when loaded."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        module = make()
    if hasattr(module, "tie_weights"):
        module.tie_weights()
    return module


def parameter_count(module: Any) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


# ------------------------------------------------------------------------------------------------ the counts
def step_cost(model: VideoModel, transformer_params: int) -> dict[str, float]:
    """First-order FLOPs of one denoising step and the transformer's activation memory (bf16, inference)."""
    n, d, text = model.tokens(), model.width, model.text_tokens
    layers = model.transformer.get("num_layers", 28)
    ffn = model.transformer.get("ffn_dim", 4 * d)
    forward = 2 * transformer_params * n + 4 * n * n * d * layers + 4 * n * text * d * layers
    # The widest moment of a block: the hidden states, q, k, v, the attention output and the FFN's inner tensor.
    batch = model.guidance_passes if model.family == "ltx" else 1  # LTX batches its passes, Wan runs them in turn
    activations = batch * n * (ffn + 6 * d) * BF16
    return {"tflops_per_forward": round(forward / 1e12, 1),
            "tflops_per_step": round(forward * model.guidance_passes / 1e12, 1),
            "attention_share": round(4 * n * n * d * layers / forward, 3),
            "activations_GB": round(activations / GB, 2)}


def memory_needed(weights_gb: dict[str, float], activations_gb: float) -> dict[str, Any]:
    """GPU memory per mode, and the GPU sizes where each fits."""
    resident = sum(weights_gb.values()) + activations_gb + CUDA_CONTEXT_GB
    phases = {k: v + (activations_gb if k == "transformer" else 0.0) for k, v in weights_gb.items()}
    largest = max(phases, key=phases.__getitem__)
    offload = phases[largest] + CUDA_CONTEXT_GB
    return {"bf16_resident_GB": round(resident, 1), "model_cpu_offload_GB": round(offload, 1),
            "offload_peak_phase": largest,
            "fits": {f"{size} GB": "resident" if resident <= size else "offload" if offload <= size else "no"
                     for size in GPU_SIZES_GB}}


def count(key: str) -> dict[str, Any]:
    model = MODELS[key]
    params = {name: parameter_count(on_meta(make)) for name, make in components(model).items()}
    weights = {name: round(p * BF16 / GB, 2) for name, p in params.items()}
    cost = step_cost(model, params["transformer"])
    latent_frames = (model.frames() - 1) // model.temporal + 1
    return {"name": model.name, "hub_id": model.hub_id,
            "params_B": {name: round(p / 1e9, 3) for name, p in params.items()},
            "total_params_B": round(sum(params.values()) / 1e9, 2), "bf16_weights_GB": weights,
            "total_bf16_GB": round(sum(weights.values()), 1),
            "clip": {"seconds": CLIP_SECONDS, "width": WIDTH, "height": HEIGHT, "fps": model.fps,
                     "frames": model.frames(), "latent_frames": latent_frames,
                     "latent_hw": [HEIGHT // model.spatial, WIDTH // model.spatial], "patch": model.patch,
                     "transformer_tokens": model.tokens(), "text_tokens": model.text_tokens},
            "one_step": cost, "memory": memory_needed(weights, cost["activations_GB"])}


# ------------------------------------------------------------------------------------------------ --gpu
def random_pipeline(model: VideoModel, device: str, *, dry_run: bool) -> Any:
    """The model's pipeline at full size (one block per stack in a dry run) with random bf16 weights on ``device``."""
    import diffusers
    import torch

    from pipeline.models.base_model import t5_tokenizer

    tokenizer = t5_tokenizer(max_length=model.text_tokens if model.family == "ltx" else 512)
    built = {}
    for name, make in components(model, layers=1 if dry_run else None, vocab=len(tokenizer) if dry_run else None
                                 ).items():
        module = on_meta(make)
        buffers = {key: value.clone() for key, value in module.named_buffers()}  # real (position ids, RoPE)
        module = module.to_empty(device=device)
        with torch.no_grad():
            for key, value in buffers.items():
                module.get_buffer(key).copy_(value)
            for p in module.parameters():
                p.normal_(0.0, 0.02) if p.dim() > 1 else p.fill_(1.0 if "norm" in name else 0.0)
        if hasattr(module, "tie_weights"):
            module.tie_weights()
        built[name] = module.to(torch.bfloat16).eval()
        logger.info("built %s on %s", name, device)
    if model.family == "ltx":
        return diffusers.LTXImageToVideoPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, shift_terminal=0.1), tokenizer=tokenizer, **built)
    from transformers import CLIPImageProcessor

    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  flow_shift=3.0)
    processor = CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}) if model.image_encoder else None
    return diffusers.WanImageToVideoPipeline(tokenizer=tokenizer, scheduler=scheduler, image_processor=processor,
                                             image_encoder=built.pop("image_encoder", None), transformer_2=None,
                                             **built, **model.extra)


def timed_clip(pipe: Any, model: VideoModel, *, steps: int, size: tuple[int, int], frames: int) -> dict[str, Any]:
    """One clip from a grey still: s/step (after the first), the rest (encode, decode) and the peak GPU memory."""
    import torch
    from PIL import Image

    cuda = torch.cuda.is_available()
    marks: list[float] = []

    def mark(_pipe: Any, _i: int, _t: Any, kwargs: dict) -> dict:
        if cuda:
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        return kwargs

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    pipe(image=Image.new("RGB", (size[1], size[0]), (128, 128, 128)), prompt="a person turns to the camera",
         height=size[0], width=size[1], num_frames=frames, num_inference_steps=steps, guidance_scale=5.0,
         callback_on_step_end=mark, output_type="np")
    total = time.perf_counter() - start
    per_step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else float("nan")
    return {"s_per_step": round(per_step, 2), "first_step_s": round(marks[0] - start, 2),
            "after_last_step_s": round(start + total - marks[-1], 2), "total_s": round(total, 1),
            "peak_GB": round(torch.cuda.max_memory_allocated() / GB, 2) if cuda else None}


def measure(key: str, *, steps: int, dry_run: bool) -> dict[str, Any]:
    """Each memory mode in turn: bf16 resident (built on the GPU), then the same weights with model CPU offload."""
    import torch

    model = MODELS[key]
    device = "cpu" if dry_run else "cuda"
    size, frames = ((64, 64), model.temporal + 1) if dry_run else ((HEIGHT, WIDTH), model.frames())
    started = time.perf_counter()
    pipe = random_pipeline(model, device, dry_run=dry_run)
    pipe.set_progress_bar_config(disable=True)
    report: dict[str, Any] = {"name": model.name, "device": torch.cuda.get_device_name() if not dry_run else "cpu",
                              "dry_run": dry_run, "steps": steps, "size": list(size), "frames": frames,
                              "build_s": round(time.perf_counter() - started, 1), "modes": {}}
    try:
        report["modes"]["bf16_resident"] = timed_clip(pipe, model, steps=steps, size=size, frames=frames)
    except torch.cuda.OutOfMemoryError as exc:  # the 14B resident does not fit 80 GB with its activations
        report["modes"]["bf16_resident"] = {"error": f"out of memory: {str(exc)[:200]}"}
    pipe.to("cpu")
    if not dry_run:
        pipe.enable_model_cpu_offload()
        pipe.vae.enable_tiling()
    report["modes"]["model_cpu_offload"] = timed_clip(pipe, model, steps=steps, size=size, frames=frames)
    report["total_s"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", choices=sorted(MODELS), help="measure this model on the GPU at full size")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per clip (--gpu; the first is warm-up)")
    parser.add_argument("--dry-run", action="store_true", help="--gpu's code on the CPU: one block, a 64 px clip")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.gpu:
        if not (args.dry_run or torch.cuda.is_available()):
            raise SystemExit("--gpu needs CUDA (or --dry-run to check the code on the CPU)")
        print(json.dumps(measure(args.gpu, steps=args.steps, dry_run=args.dry_run), indent=1))
        return
    print(json.dumps({"clip": f"{CLIP_SECONDS} s at {WIDTH}x{HEIGHT}", "cuda_context_GB": CUDA_CONTEXT_GB,
                      "models": {key: count(key) for key in MODELS}}, indent=1))


if __name__ == "__main__":
    main()

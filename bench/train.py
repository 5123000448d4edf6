"""Training benchmark: prints JSON.

Run from the repository root: ``python -m bench.train [--out FILE] [--skip-tiny] [--gpu-only]``.

On any machine:
- the FLOPs of one training step of the real FLUX.1-dev architecture (19 double + 38 single blocks, hidden 3072,
  24 heads, rank-16 LoRA on attention and MLP) at 512 and 1024 px, counted with PyTorch's FLOP counter on the meta
  device (no weights, no memory), plus the one-off encoder FLOPs per photo/caption (VAE, T5-XXL, CLIP-L);
- parameter, LoRA, optimiser and activation memory per memory mode (pipeline.models.memory's estimate);
- seconds per step and peak RAM of the tiny model on this CPU (16 photos, 50 steps at 64 px, through train_lora).

With CUDA: seconds per step, model FLOPs utilisation and peak GPU memory of the real architecture with random weights
at 512 and 1024 px, for bf16 (with and without gradient checkpointing) and each low-memory mode that runs here. The
step is the engine's own (``pipeline.models.flow_matching.flow_matching_loss``, clip, fused AdamW).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.models.flow_matching import flow_matching_loss
from pipeline.models.offload import offload_block_weights
from pipeline.training.trainer import add_lora, training_attention

FLUX_DEV_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                            guidance_embeds=True, axes_dims_rope=(16, 56, 56))
TEXT_TOKENS = 512  # T5 tokens, as FLUX.1-dev is trained and sampled
RANK = 16
H100_BF16_PEAK = 989.4e12  # dense bf16 tensor-core peak of the H100 SXM (datasheet)
log = logging.getLogger("bench.train")


def build_transformer(config: dict[str, Any], device: str, rank: int = RANK) -> torch.nn.Module:
    """FLUX transformer with random weights in bf16 on ``device`` (meta: shapes only), the engine's LoRA added."""
    from diffusers import FluxTransformer2DModel

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build straight in bf16: no fp32 copy of 12 B parameters
    try:
        with torch.device(device):
            model = FluxTransformer2DModel(**config)
            add_lora(model, rank=rank, alpha=rank, autocast=device == "cuda")
    finally:
        torch.set_default_dtype(default)
    return model


def _inputs(resolution: int, device: str, batch: int = 1) -> dict[str, torch.Tensor]:
    side = resolution // 8
    return dict(x0=torch.randn(batch, 16, side, side, device=device), noise=torch.randn(batch, 16, side, side,
                                                                                         device=device),
                sigmas=torch.rand(batch, device=device), prompt=torch.randn(batch, TEXT_TOKENS, 4096, device=device),
                pooled=torch.randn(batch, 768, device=device))


def count_step_flops(resolution: int, *, checkpointing: bool) -> dict[str, float]:
    """FLOPs of one training step (forward + backward, batch 1) of FLUX.1-dev with a rank-16 LoRA, on meta."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_transformer(FLUX_DEV_TRANSFORMER, "meta")
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        loss = flow_matching_loss(model, **_inputs(resolution, "meta"), guidance=1.0, device="meta",
                                  dtype=torch.bfloat16)
        forward = counter.get_total_flops()
        loss.backward()
    total = counter.get_total_flops()
    return {"forward_tflop": forward / 1e12, "backward_tflop": (total - forward) / 1e12, "step_tflop": total / 1e12}


def count_step_ops(resolution: int) -> dict[str, Any]:
    """Eager ATen calls of one training step (batch 1, no checkpointing) by kind, on meta: the kernel-launch load a
    GPU step carries before compilation. Views cost no kernel; matmuls, casts and elementwise ops each launch one."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls: collections.Counter[str] = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls[str(func.overloadpacket).removeprefix("aten.")] += 1
            return func(*args, **(kwargs or {}))

    model = build_transformer(FLUX_DEV_TRANSFORMER, "meta")
    model.train()
    lora_layers = sum(1 for name, _ in model.named_modules() if name.endswith(".lora_A.default"))
    with Count() as count:
        loss = flow_matching_loss(model, **_inputs(resolution, "meta"), guidance=1.0, device="meta",
                                  dtype=torch.bfloat16)
        loss.backward()
    views = {"view", "_unsafe_view", "t", "transpose", "permute", "unsqueeze", "expand", "slice", "detach", "select",
             "split", "squeeze", "chunk", "unbind", "split_with_sizes", "as_strided", "alias"}
    return {"aten_calls": sum(count.calls.values()),
            "kernel_calls": sum(n for op, n in count.calls.items() if op not in views),
            "lora_layers": lora_layers, "top": dict(count.calls.most_common(12))}


def count_encoder_flops(resolution: int) -> dict[str, float]:
    """One-off FLOPs per photo (VAE encoder) and per caption (T5-XXL at 512 tokens, CLIP-L at 77), on meta."""
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, use_quant_conv=False,
                            use_post_quant_conv=False)
        t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                     feed_forward_proj="gated-gelu"))
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77))
        out = {}
        with torch.no_grad():
            for name, run in (
                ("vae_encode_tflop", lambda: vae.encode(torch.randn(1, 3, resolution, resolution))),
                ("t5_xxl_tflop", lambda: t5(input_ids=torch.zeros(1, TEXT_TOKENS, dtype=torch.long))),
                ("clip_l_tflop", lambda: clip(input_ids=torch.zeros(1, 77, dtype=torch.long))),
            ):
                counter = FlopCounterMode(display=False)
                with counter:
                    run()
                out[name] = counter.get_total_flops() / 1e12
    out["t5_xxl_parameters"] = sum(p.numel() for p in t5.parameters())
    out["clip_l_parameters"] = sum(p.numel() for p in clip.parameters())
    return out


def memory_table() -> dict[str, Any]:
    """Memory per mode for FLUX.1-dev at 512 and 1024 px, batch 1, with exact parameter counts."""
    from pipeline.models import memory

    model = build_transformer(FLUX_DEV_TRANSFORMER, "meta")
    base = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    table: dict[str, Any] = {"base_parameters": base, "lora_parameters_rank16": lora}
    for resolution in (512, 1024):
        for mode in memory.MODES:
            for checkpointing in (True, False):
                estimate = memory.estimate_memory(
                    mode, base_parameters=base, lora_parameters=lora, hidden_size=3072, num_blocks=57,
                    image_tokens=(resolution // 16) ** 2, text_tokens=TEXT_TOKENS,
                    gradient_checkpointing=checkpointing)
                key = f"{mode}_{resolution}px" + ("" if checkpointing else "_no_checkpointing")
                table[key] = {k: round(v, 2) for k, v in vars(estimate).items() if k != "mode"}
    return table


def astronaut_dataset(folder: Path) -> Any:
    """16 astronaut face crops (slightly rotated) at 64 px, written into ``folder``: the CPU rows' training set."""
    from PIL import Image
    from skimage import data

    from pipeline.intake.dataset import Dataset, DatasetItem

    face = Image.fromarray(data.astronaut()).crop((140, 20, 340, 220))
    items = []
    for i in range(16):
        path = folder / f"photo-{i:02d}.png"
        face.rotate(i * 2 - 16).resize((128, 128)).save(path)
        items.append(DatasetItem(image=path, caption="a photo of ohwx person", source=path.name))
    return Dataset(items=tuple(items), trigger_word="ohwx", resolution=64)


def tiny_cpu_bench() -> dict[str, Any]:
    """train_lora on the tiny model: 16 astronaut face crops, 50 steps at 64 px (TrainSettings.quick)."""
    from pipeline import events as ev
    from pipeline.models.base_model import ensure_tiny_model
    from pipeline.settings import TrainSettings
    from pipeline.training.trainer import train_lora

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        ensure_tiny_model(root / "data")
        build_seconds = time.perf_counter() - start
        dataset = astronaut_dataset(root)
        steps: list[ev.TrainStep] = []

        def keep(event: ev.Event) -> None:
            if isinstance(event, ev.TrainStep):
                steps.append(event)

        start = time.perf_counter()
        result = train_lora(dataset, TrainSettings.quick(), root / "first", base_model="tiny",
                            data_dir=root / "data", on_event=keep)
        first = time.perf_counter() - start
        start = time.perf_counter()
        cached = train_lora(dataset, TrainSettings.quick(seed=7), root / "second", base_model="tiny",
                            data_dir=root / "data")
        second = time.perf_counter() - start
    return {
        "status": result.status, "photos": 16, "steps": result.steps_done, "resolution": 64,
        "tiny_model_build_s": round(build_seconds, 2), "train_total_s": round(first, 2),
        "train_total_cached_s": round(second, 2), "cached_status": cached.status,
        "s_per_step": round(steps[-1].seconds_per_step, 4),
        "loss_first10": round(sum(result.losses[:10]) / 10, 4), "loss_last10": round(sum(result.losses[-10:]) / 10, 4),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "cpu": platform.processor() or platform.machine(), "cpu_threads": os.cpu_count(),
    }


def _busy_core(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def embedded_cpu_threads(steps: int = 150, rounds: int = 2) -> dict[str, Any]:
    """Seconds per step of the micro model's training (its defaults, 16 crops) on 1 and 2 torch threads, on an idle
    machine and beside a process keeping one core busy, alternated ``rounds`` times (the machine's noise shows as the
    spread): what ``training.EMBEDDED_CPU_THREADS`` is chosen from."""
    import multiprocessing

    from pipeline import events as ev
    from pipeline.settings import TrainSettings
    from pipeline.training import trainer as training

    chosen = training.EMBEDDED_CPU_THREADS
    rows: dict[str, list[float]] = {}
    seen: list[ev.TrainStep] = []

    def keep(event: ev.Event) -> None:
        if isinstance(event, ev.TrainStep):
            seen.append(event)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset = astronaut_dataset(root)
        settings = TrainSettings.micro(steps=steps, checkpoint_every=steps, sample_every=steps)
        try:
            for run in range(rounds):
                for busy in (False, True):
                    for threads in (1, 2):
                        burner = multiprocessing.Process(target=_busy_core, args=(600,), daemon=True)
                        if busy:
                            burner.start()
                        seen.clear()
                        training.EMBEDDED_CPU_THREADS = threads
                        try:
                            training.train_lora(dataset, settings, root / f"run-{run}-{busy}-{threads}",
                                                base_model="micro", data_dir=root / "data",
                                                on_event=keep)
                        finally:
                            if busy:
                                burner.terminate()
                                burner.join()
                        key = f"{threads}_thread{'s' if threads > 1 else ''}_{'one_core_busy' if busy else 'idle'}"
                        rows.setdefault(key, []).append(round(seen[-1].seconds_per_step, 4))
        finally:
            training.EMBEDDED_CPU_THREADS = chosen
    return {"model": "micro", "steps": steps, "s_per_step": rows, "chosen_threads": chosen,
            "cpu_threads": os.cpu_count()}


# --- GPU ------------------------------------------------------------------------------------------------------------


def _time_steps(model: torch.nn.Module, resolution: int, *, warmup: int, steps: int, batch: int = 1) -> dict[str, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=True)
    inputs = _inputs(resolution, "cuda", batch)
    model.train()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(warmup + steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with training_attention():
            loss = flow_matching_loss(model, **inputs, guidance=1.0, device="cuda", dtype=torch.bfloat16)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        end.record()
        end.synchronize()
        losses.append(loss.item())
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1000)
    times.sort()
    del optimizer
    return {"s_per_step": round(times[len(times) // 2], 4), "s_per_step_min": round(times[0], 4),
            "peak_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2),
            "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1024**3, 2),
            "loss_finite": all(map(lambda x: x == x and abs(x) < float("inf"), losses))}


def _matmul_ceiling() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    end.synchronize()
    return 2 * 8192**3 * 20 / (start.elapsed_time(end) / 1000)


def gpu_bench(flops: dict[int, float], *, warmup: int, steps: int, modes: list[str], deadline: float,
              on_result: Any, batch: int = 1, resolutions: tuple[int, ...] = (512, 1024)) -> list[dict[str, Any]]:
    """Real-architecture random-weight training steps on the GPU, one row per (mode, resolution)."""
    from pipeline.models import memory

    torch.backends.cuda.matmul.allow_tf32 = True
    results: list[dict[str, Any]] = []

    def run(name: str, model: torch.nn.Module, **notes: Any) -> None:
        for resolution in resolutions:
            row: dict[str, Any] = {"mode": name, "resolution": resolution, "batch": batch, **notes}
            if time.monotonic() > deadline:
                row["skipped"] = "bench time limit"
            else:
                try:
                    row.update(_time_steps(model, resolution, warmup=warmup, steps=steps, batch=batch))
                    row["mfu_vs_989_tflops"] = round(batch * flops[resolution] * 1e12 / row["s_per_step"]
                                                     / H100_BF16_PEAK, 3)
                    row["s_per_1000_steps"] = round(row["s_per_step"] * 1000, 1)
                except torch.OutOfMemoryError as exc:
                    row["error"] = f"out of memory: {str(exc)[:200]}"
                except Exception as exc:  # one failing variant (e.g. a compile error) must not end the bench
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                torch.cuda.empty_cache()
            results.append(row)
            on_result(results)

    variants = {  # name: (gradient checkpointing, fp8 weights, block offload, torch.compile of the blocks)
        "bf16": (False, False, False, False),
        "bf16_ckpt": (True, False, False, False),
        "bf16_compiled": (False, False, False, True),
        "bf16_ckpt_compiled": (True, False, False, True),
        "fp8_ckpt": (True, True, False, False),
        "fp8_ckpt_compiled": (True, True, False, True),
        "offload_ckpt": (True, False, True, False),
    }
    for name in modes:
        checkpointing, fp8, offload, compiled = variants[name]
        if time.monotonic() > deadline - (90 if compiled else 20):
            results.append({"mode": name, "skipped": "bench time limit"})
            continue
        torch._dynamo.reset()
        torch.cuda.empty_cache()
        model = build_transformer(FLUX_DEV_TRANSFORMER, "cuda")
        notes: dict[str, Any] = {}
        if checkpointing:
            model.enable_gradient_checkpointing()
        if fp8:
            notes["fp8_weight_only_layers"] = memory.quantize_frozen_linears_fp8(model)
            torch.cuda.empty_cache()
        if offload:
            model.to("cpu")  # block offload keeps the block weights in host RAM: the model must start there
            report = offload_block_weights(model, "cuda")
            notes["offload_largest_block_gb"] = round(report.largest_block_bytes / memory.GB, 2)
            torch.cuda.empty_cache()
        if compiled:
            model.compile_repeated_blocks(fullgraph=False)
        run(name, model, gradient_checkpointing=checkpointing, compiled=compiled, **notes)
        del model
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--skip-tiny", action="store_true", help="skip the tiny-model CPU run")
    parser.add_argument("--threads-only", action="store_true",
                        help="only the embedded models' CPU thread choice (idle and beside a busy core; ~4 min)")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU measurements (and the FLOP counts)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed GPU steps per row (compilation happens here)")
    parser.add_argument("--steps", type=int, default=8, help="timed GPU steps per row (after 3 warm-up steps)")
    parser.add_argument("--modes", default="bf16,bf16_ckpt,fp8_ckpt,offload_ckpt,bf16_compiled,fp8_ckpt_compiled")
    parser.add_argument("--batch", type=int, default=1, help="images per GPU step")
    parser.add_argument("--resolutions", default="512,1024")
    parser.add_argument("--budget-s", type=float, default=480, help="stop starting GPU rows after this many seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    began = time.monotonic()
    report: dict[str, Any] = {"torch": torch.__version__, "text_tokens": TEXT_TOKENS, "lora_rank": RANK}
    if args.threads_only:
        report = {"torch": torch.__version__, "embedded_cpu_threads": embedded_cpu_threads()}
        json.dump(report, sys.stdout, indent=2)
        print()
        return

    def write() -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2))

    report["flux_dev_step_flops"] = {}
    for resolution in (512, 1024):
        report["flux_dev_step_flops"][f"{resolution}px"] = {
            **count_step_flops(resolution, checkpointing=False),
            **({} if args.gpu_only else {
                "step_with_checkpointing_tflop": count_step_flops(resolution, checkpointing=True)["step_tflop"],
                **count_encoder_flops(resolution)}),
        }
    report["flux_dev_step_ops_512px"] = count_step_ops(512)
    write()
    if not args.gpu_only:
        report["memory_estimates_gb"] = memory_table()
        write()
        if not args.skip_tiny:
            report["tiny_cpu"] = tiny_cpu_bench()
            write()
            report["embedded_cpu_threads"] = embedded_cpu_threads()
            write()
    if torch.cuda.is_available():
        report["gpu"] = {"name": torch.cuda.get_device_name(), "bf16_matmul_tflops_measured":
                         round(_matmul_ceiling() / 1e12, 1)}
        try:
            import bitsandbytes  # noqa: F401

            report["gpu"]["bitsandbytes"] = True
        except Exception as exc:  # any import failure means nf4/8-bit AdamW are unavailable
            report["gpu"]["bitsandbytes"] = f"unavailable ({type(exc).__name__}): nf4 and adamw8bit not measured"
        flops = {r: report["flux_dev_step_flops"][f"{r}px"]["step_tflop"] for r in (512, 1024)}

        def keep(rows: list[dict[str, Any]]) -> None:
            report["gpu"]["rows"] = rows
            write()

        gpu_bench(flops, warmup=args.warmup, steps=args.steps, modes=args.modes.split(","),
                  deadline=began + args.budget_s, on_result=keep, batch=args.batch,
                  resolutions=tuple(int(r) for r in args.resolutions.split(",")))
    else:
        report["gpu"] = "no CUDA GPU on this machine: GPU rows not measured"
    report["bench_seconds"] = round(time.monotonic() - began, 1)
    write()
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()

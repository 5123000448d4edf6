"""The micro model's LoRA step with peft's layers against the merged-weight layers (``pipeline.training.merged_lora``):
prints
JSON.

Run from the repository root: ``python -m bench.merged_lora [--pairs 6] [--steps 20] [--out FILE]``.

One thread (as the embedded models train), the micro defaults (rank 128 with modulation and outer layers, batch 4 at
96 px, 32 text tokens). The two kinds run in turn, A B A B ..., each timing ``--steps`` steps after 3 warm-up steps,
so that a busy neighbour slows both alike; the figure to quote is the median of the pairwise ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.models import micro
from pipeline.models.flow_matching import flow_matching_loss
from pipeline.settings import TrainSettings
from pipeline.training.trainer import add_lora


def seconds_per_step(merge: bool, steps: int) -> float:
    from diffusers import FluxTransformer2DModel

    s = TrainSettings.micro()
    model = FluxTransformer2DModel.from_pretrained(micro.MICRO_FOLDER / "transformer", torch_dtype=torch.float32)
    params = add_lora(model, rank=s.rank, alpha=s.alpha, autocast=False, modulation=s.lora_modulation,
                      outer_layers=s.lora_outer_layers, merge_when_cheaper=merge)
    optimizer = torch.optim.AdamW(params, lr=s.learning_rate)
    generator = torch.Generator().manual_seed(0)
    size = s.resolution // 4  # the micro VAE's latents
    x0, noise = torch.randn(2, 4, 16, size, size, generator=generator)
    text = torch.randn(4, micro.TEXT_TOKENS, 64, generator=generator), torch.randn(4, 64, generator=generator)
    for step in range(3 + steps):
        if step == 3:
            started = time.perf_counter()
        loss = flow_matching_loss(model, x0, noise, torch.rand(4, generator=generator), *text, guidance=s.guidance,
                                  device="cpu", dtype=torch.float32)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    peft, merged = [], []
    for _ in range(args.pairs):
        peft.append(seconds_per_step(False, args.steps))
        merged.append(seconds_per_step(True, args.steps))
    ratios = [m / p for m, p in zip(merged, peft, strict=True)]
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "threads": 1, "load_1min": os.getloadavg()[0]},
        "steps_per_run": args.steps, "pairs": args.pairs,
        "peft_s_per_step": [round(t, 4) for t in peft], "merged_s_per_step": [round(t, 4) for t in merged],
        "merged_over_peft": {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
                             "max": round(max(ratios), 3)},
        "default_steps_minutes": {"peft": round(TrainSettings.micro().steps * statistics.median(peft) / 60, 1),
                                  "merged": round(TrainSettings.micro().steps * statistics.median(merged) / 60, 1)},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

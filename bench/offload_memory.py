"""Where GPU memory goes with block offload during one training step (needs CUDA; prints one JSON line per case).

FLUX.1-dev widths with fewer blocks (8 double + 16 single, 9.5 GB of bf16 weights), rank-16 LoRA, 512 px.
``engine``: "ours" is pipeline.models.offload (what training uses); "diffusers" is ``enable_group_offload`` at block
level.
Measured for diffusers on an H100 (closing note of session 1): after the forward 0.27 GB is resident, after the
backward the whole model (9.56 GB) — the recompute under gradient checkpointing onloads every block and nothing
offloads it again. Ours is not yet measured on a GPU; on the CPU, tests/test_offload.py checks its residency.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.offload_memory
"""

from __future__ import annotations

import json
import time

import torch

from bench.train import FLUX_DEV_TRANSFORMER, _inputs
from pipeline.models.flow_matching import flow_matching_loss
from pipeline.models.offload import offload_block_weights
from pipeline.training.trainer import add_lora, training_attention

GB = 1024**3


def mem() -> float:
    torch.cuda.synchronize()
    return round(torch.cuda.memory_allocated() / GB, 2)


def probe(engine: str, lora: bool, ckpt: bool, stream: bool) -> dict:
    from diffusers import FluxTransformer2DModel

    cfg = dict(FLUX_DEV_TRANSFORMER, num_layers=8, num_single_layers=16)
    torch.set_default_dtype(torch.bfloat16)
    model = FluxTransformer2DModel(**cfg)  # on CPU
    torch.set_default_dtype(torch.float32)
    if lora:
        add_lora(model, rank=16, alpha=16, autocast=True)
    else:
        model.requires_grad_(False)
        model.proj_out.requires_grad_(True)
    if ckpt:
        model.enable_gradient_checkpointing()
    if engine == "ours":
        offload_block_weights(model, "cuda")
    else:
        model.enable_group_offload(onload_device=torch.device("cuda"), offload_device=torch.device("cpu"),
                                   offload_type="block_level", num_blocks_per_group=1, use_stream=stream)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    row = {"engine": engine, "lora": lora, "ckpt": ckpt, "stream": stream, "after_setup": mem()}
    model.train()
    inputs = _inputs(512, "cuda")
    with training_attention():
        loss = flow_matching_loss(model, **inputs, guidance=1.0, device="cuda", dtype=torch.bfloat16)
        row["after_forward"] = mem()
        row["peak_forward"] = round(torch.cuda.max_memory_allocated() / GB, 2)
        loss.backward()
    row["after_backward"] = mem()
    row["peak"] = round(torch.cuda.max_memory_allocated() / GB, 2)
    params_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / GB
    row["model_gb"] = round(params_gb, 2)
    del model, loss
    torch.cuda.empty_cache()
    return row

def main() -> None:
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "needs a CUDA GPU"}))
        return
    # (engine, LoRA, gradient checkpointing, CUDA streams)
    for args in [("ours", True, True, False), ("diffusers", True, True, False), ("diffusers", True, True, True),
                 ("diffusers", False, True, False), ("diffusers", True, False, False)]:
        started = time.time()
        try:
            row = probe(*args)
        except Exception as exc:  # one failing case (e.g. out of memory) must not end the probe
            row = {"case": args, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        row["seconds"] = round(time.time() - started, 1)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""Host RAM while the base transformer loads: does it ever hold a second copy of the weights? (prints JSON)

Saves a FLUX.1-dev-width transformer with fewer blocks (2 double + 4 single, random bf16 weights) as safetensors,
then loads it in a fresh process per case and reports the peak resident memory above the process's baseline:

- ``likeness``: ``pipeline.training.trainer.load_transformer`` as the fp8 and offload modes call it (into host RAM);
- ``likeness_offload``: the same, then a rank-16 LoRA and ``pipeline.models.offload.offload_block_weights`` (the block
  weights move into packed host buffers one buffer at a time; unpinned here, pinned where CUDA is);
- ``build_then_load_state_dict``: the usual hand-written path (build the model, read the safetensors file into a state
  dict, ``load_state_dict``), which holds the weights twice.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.load_memory
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

GB = 1024**3
CASES = ("likeness", "likeness_offload", "build_then_load_state_dict")


def _rss() -> dict[str, int]:
    """Resident memory now, split into anonymous (heap: only freeing releases it) and file-backed pages (here the
    memory-mapped safetensors files: clean page cache the kernel drops under pressure), and the peak so far."""
    fields = dict(line.split(":") for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("RssAnon", "RssFile", "VmHWM")}


def _child(case: str, folder: str) -> None:
    import torch
    from diffusers import FluxTransformer2DModel

    from pipeline.training.trainer import load_transformer

    before = _rss()
    if case == "likeness":
        model = load_transformer(folder, "offload", "cpu")
    elif case == "likeness_offload":
        from pipeline.models.offload import offload_block_weights
        from pipeline.training.trainer import add_lora

        model = load_transformer(folder, "offload", "cpu")
        model.enable_gradient_checkpointing()
        add_lora(model, rank=16, alpha=16, autocast=False)
        offload_block_weights(model, "cpu")
    else:
        from safetensors.torch import load_file

        files = sorted((Path(folder) / "transformer").glob("*.safetensors"))
        torch.set_default_dtype(torch.bfloat16)
        model = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(folder, subfolder="transformer"))
        for file in files:
            model.load_state_dict(load_file(file), strict=False)
    after = _rss()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"case": case, "weights_gb": round(weights / GB, 2),
                      "peak_above_baseline_gb": round((after["VmHWM"] - before["VmHWM"]) / GB, 2),
                      "anonymous_after_gb": round((after["RssAnon"] - before["RssAnon"]) / GB, 2),
                      "file_backed_after_gb": round((after["RssFile"] - before["RssFile"]) / GB, 2)}))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
        return
    import torch
    from diffusers import FluxTransformer2DModel

    from bench.train import FLUX_DEV_TRANSFORMER

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)
        model = FluxTransformer2DModel(**dict(FLUX_DEV_TRANSFORMER, num_layers=2, num_single_layers=4))
        torch.set_default_dtype(torch.float32)
        model.save_pretrained(Path(tmp) / "transformer")
        del model
        rows = []
        for case in CASES:
            out = subprocess.run([sys.executable, "-m", "bench.load_memory", "--child", case, tmp],
                                 capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({"bench": "load_memory", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

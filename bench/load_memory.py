"""Host RAM while the base transformer loads: does it ever hold a second copy of the weights? (prints JSON)

Saves a FLUX.1-dev-width transformer with fewer blocks (2 double + 4 single, random bf16 weights) as safetensors,
then loads it in a fresh process per case and reports the peak resident memory above the process's baseline:

- ``likeness``: ``pipeline.training.load_transformer`` as the fp8 and offload modes call it (into host RAM);
- ``build_then_load_state_dict``: the usual hand-written path (build the model, read the safetensors file into a state
  dict, ``load_state_dict``), which holds the weights twice.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.load_memory
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

GB = 1024**3
CASES = ("likeness", "build_then_load_state_dict")


def _child(case: str, folder: str) -> None:
    import psutil
    import torch
    from diffusers import FluxTransformer2DModel

    from pipeline.training import load_transformer

    baseline = psutil.Process().memory_info().rss
    if case == "likeness":
        model = load_transformer(folder, "offload", "cpu")
    else:
        from safetensors.torch import load_file

        files = sorted((Path(folder) / "transformer").glob("*.safetensors"))
        torch.set_default_dtype(torch.bfloat16)
        model = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(folder, subfolder="transformer"))
        for file in files:
            model.load_state_dict(load_file(file), strict=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"case": case, "weights_gb": round(weights / GB, 2),
                      "peak_above_baseline_gb": round((peak - baseline) / GB, 2),
                      "copies_of_the_weights": round((peak - baseline) / weights, 2)}))


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

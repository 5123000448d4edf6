"""Whether this machine can have a GPU for torch, answered without importing torch.

Importing torch takes 1.5 s of the app's start on an idle 2-core machine and about twice that on a busy one; on a
machine with no GPU device at all the answer is known from the device files, so the page comes up without it.
"""

from __future__ import annotations

import os
import sys

# The device files a CUDA (NVIDIA, or WSL2's bridge) or ROCm GPU shows to Linux processes and containers.
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")


def gpu_may_be_present() -> bool:
    """False only where no GPU can be there (Linux without GPU device files); True means: ask torch."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(path) for path in _GPU_DEVICE_FILES)

"""Whether this machine can have a GPU for torch, answered without importing torch.

Importing torch takes 1.5 s of the app's start on an idle 2-core machine and about twice that on a busy one; on a
machine with no GPU at all the answer is known from the kernel's view of its devices, so the page comes up without
it. Any sign of a GPU (a device file, a loaded driver, a display controller from NVIDIA or AMD on the PCI bus) means
"ask torch": a wrong "maybe" costs only the import, a wrong "no" would train on the CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Device files and driver folders a CUDA (NVIDIA, Jetson, WSL2's bridge) or ROCm GPU shows to Linux and containers;
# /dev/nvidia* can be missing on bare metal until the first CUDA call creates them, the driver's folders are not.
_GPU_PATHS = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu",
              "/proc/driver/nvidia/gpus", "/sys/module/nvidia", "/sys/module/amdgpu")
_GPU_VENDORS = {"0x10de", "0x1002"}  # NVIDIA, AMD
_PCI = Path("/sys/bus/pci/devices")


def gpu_may_be_present() -> bool:
    """False only where no GPU can be there (Linux showing none); True means: ask torch."""
    if not sys.platform.startswith("linux"):
        return True
    if any(os.path.exists(path) for path in _GPU_PATHS):
        return True
    try:
        devices = list(_PCI.iterdir())
    except OSError:
        return False
    for device in devices:
        try:
            display = (device / "class").read_text().startswith("0x03")  # display and 3D controllers
            if display and (device / "vendor").read_text().strip() in _GPU_VENDORS:
                return True
        except OSError:
            continue
    return False

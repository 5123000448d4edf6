"""Whether a GPU can be there, told from the kernel's view of the devices (the app's start then skips torch)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.models import hardware


@pytest.fixture()
def no_gpu_signs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if not sys.platform.startswith("linux"):
        pytest.skip("elsewhere torch is always asked")
    monkeypatch.setattr(hardware, "_GPU_PATHS", (str(tmp_path / "dev-nvidiactl"),))
    monkeypatch.setattr(hardware, "_PCI", tmp_path / "pci")
    return tmp_path


def _pci_device(root: Path, name: str, vendor: str, device_class: str) -> None:
    folder = root / "pci" / name
    folder.mkdir(parents=True)
    (folder / "vendor").write_text(vendor + "\n")
    (folder / "class").write_text(device_class + "\n")


def test_a_machine_without_gpu_signs_has_none(no_gpu_signs: Path) -> None:
    assert hardware.gpu_may_be_present() is False  # not even a PCI folder
    _pci_device(no_gpu_signs, "0000:00:02.0", "0x8086", "0x030000")  # an Intel display: not a torch GPU
    _pci_device(no_gpu_signs, "0000:00:1f.0", "0x10de", "0x060100")  # an NVIDIA bridge, not a display
    assert hardware.gpu_may_be_present() is False


@pytest.mark.parametrize("vendor", ["0x10de", "0x1002"])
def test_an_nvidia_or_amd_display_controller_on_the_pci_bus_means_ask_torch(no_gpu_signs: Path, vendor: str) -> None:
    _pci_device(no_gpu_signs, "0000:65:00.0", vendor, "0x030200")  # a 3D controller (e.g. a data-centre GPU)
    assert hardware.gpu_may_be_present() is True


def test_a_device_file_or_driver_folder_means_ask_torch(no_gpu_signs: Path) -> None:
    (no_gpu_signs / "dev-nvidiactl").touch()
    assert hardware.gpu_may_be_present() is True

"""Which base model trains when ``--base-model auto`` (the default where a CUDA GPU is found): chosen once, at start,
from the GPU's free memory, with the reason the Settings tab shows.

The preference, best first; each candidate is taken if ``auto`` would give it one of the memory modes listed, by its
own thresholds (``memory.auto_thresholds``: FLUX.1-dev's measured 40 / 20 / 14 GB, scaled to other models by their
meta-device estimate):

1. **FLUX.1 [dev]** where it trains in bf16 or fp8 (from 20 GB free): the base the project's bench measured
   (0.37-1.13 s per step on an H100) and the base of the LoRAs trained here before ``auto`` existed, so they keep
   drawing on the base they were trained on (FLUX.1-dev's non-commercial licence, as before).
2. **FLUX.2 [klein] base 4B** below that, in its best mode: bf16 from 14 GB, fp8 from 7.4, nf4 from 5.5, offload down
   to its estimate of 2.5 GB. Apache-2.0; its step costs 0.47 of FLUX.1-dev's FLOPs. On 14-20 GB it trains in bf16
   where FLUX.1-dev would need nf4 (bitsandbytes) or block offload, 2.5-5x slower steps.
3. **micro** below every threshold (and on a CPU): the embedded model that trains anywhere.

FLUX.2 [klein] base 9B is not a candidate: it needs less memory than FLUX.1-dev in every mode, so ranking it first
would replace FLUX.1-dev on every large card — and the LoRAs people trained on it — before any GPU run here has
measured its likeness. It is one ``--base-model black-forest-labs/FLUX.2-klein-base-9B`` away.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.models.families.base import BaseVariant
from pipeline.models.families.flux1 import FLUX1_DEV
from pipeline.models.families.flux2 import KLEIN_BASE_4B
from pipeline.settings import GPU_MEMORY_MODES, MICRO_MODEL

AUTO_BASE_MODEL = "auto"
FAST_MODES = ("bf16", "fp8")  # FLUX.1-dev's measured 0.37-1.13 s per step on an H100; nf4 and offload are slower
EVERY_MODE = GPU_MEMORY_MODES


@dataclass(frozen=True)
class Candidate:
    """A base model ``auto`` may choose and the memory modes it accepts for it."""

    variant: BaseVariant
    modes: tuple[str, ...]
    why: str  # why it stands where it does in the preference


# Best first: the first that fits one of its modes is chosen.
AUTO_PREFERENCE = (
    Candidate(FLUX1_DEV, FAST_MODES, "the project's measured base, and the base of LoRAs trained here before"),
    Candidate(KLEIN_BASE_4B, EVERY_MODE, "the smallest trainable FLUX, a step at 0.47 of FLUX.1-dev's FLOPs"),
)


@dataclass(frozen=True)
class BaseModelPick:
    """The base model trainings use (``--base-model`` as given, or ``auto``'s choice) and why, as the page says it."""

    spec: str
    why: str
    mode: str = ""  # the memory mode auto chose it for ("" where it was not chosen by auto)


def choose_base_model(free_gb: float | None) -> BaseModelPick:
    """The first model of ``AUTO_PREFERENCE`` that trains in one of its modes in ``free_gb`` of free GPU memory (GB
    as torch reports it; None: no GPU), else the embedded micro model."""
    if free_gb is None:
        return BaseModelPick(MICRO_MODEL, "no CUDA GPU here: the embedded micro model, which trains on a CPU")
    from pipeline.models import memory  # torch: only where a GPU was found

    passed = []
    for candidate in AUTO_PREFERENCE:
        variant = candidate.variant
        thresholds = memory.auto_thresholds(variant)
        mode = memory.choose_mode("auto", free_gb, thresholds)[0]
        floor = memory.variant_memory(variant, "offload").total_gb  # below its offload estimate nothing fits
        if mode in candidate.modes and (mode != "offload" or free_gb >= floor):
            needs = dict(thresholds).get(mode, floor)
            return BaseModelPick(variant.hub_id, (
                f"chosen for {free_gb:.1f} GB of free GPU memory: {variant.name} trains in {mode} from {needs:.1f} GB "
                f"({candidate.why}; {variant.licence})" + (f"; {'; '.join(passed)}" if passed else "")), mode)
        lowest = dict(thresholds).get(candidate.modes[-1], floor)
        passed.append(f"{variant.name} needs {lowest:.1f} GB ({candidate.modes[-1]})")
    return BaseModelPick(MICRO_MODEL, f"only {free_gb:.1f} GB of free GPU memory: {'; '.join(passed)}; the embedded "
                                      "micro model trains anywhere")


def pick_base_model(setting: str | None, free_gb: Callable[[], float | None]) -> BaseModelPick:
    """The ``--base-model`` setting as a pick: ``auto`` asks ``free_gb()`` once; anything else is taken as set."""
    spec = (setting or "").strip()
    if spec.lower() == AUTO_BASE_MODEL:
        return choose_base_model(free_gb())
    return BaseModelPick(setting or "", "set with --base-model")


def free_gpu_gb() -> float | None:
    """Free memory of the first CUDA GPU in GB (as the thresholds are); None without one, and no torch import where
    no GPU can be."""
    from pipeline.models.hardware import gpu_may_be_present

    if not gpu_may_be_present():
        return None
    from pipeline.models.memory import free_gpu_gb as cuda_free_gb

    return cuda_free_gb("cuda:0")

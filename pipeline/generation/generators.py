"""The loaded generation pipelines of the app: one per base model, shared by every workspace and by the training
jobs' test generations, so a base model is loaded once however many people use it.

A library model draws on the base its LoRA was trained on, which need not be the app's (``--base-model`` changed
since, or ``auto`` chose another base on this start): on a GPU only one base stays loaded, the others are dropped
before another loads, so two bases never hold the GPU's memory at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.generation.generator import Generator

logger = logging.getLogger(__name__)


class Generators:
    def __init__(self, shared_dir: Path) -> None:
        self.shared_dir = Path(shared_dir)  # where base models and their caches live
        self._loaded: dict[str, Generator] = {}
        self._lock = threading.Lock()
        self._before_load: list[Callable[[], None]] = []
        # The GPU's lock, shared by every base's generator: one drawing on it at a time whichever base draws, and a
        # generator that loads may drop another (``_make_room``) without waiting on a lock its own thread holds.
        self._gpu_lock = threading.RLock()

    def on_load(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` before a base model loads onto a GPU (the video model's release); once per hook."""
        with self._lock:
            if hook not in self._before_load:
                self._before_load.append(hook)

    def before_load(self) -> None:
        with self._lock:
            hooks = list(self._before_load)
        for hook in hooks:
            hook()

    def _make_room(self, base_model: str) -> None:
        """Before ``base_model`` loads onto a GPU (``Generator`` calls it only there): drop the other bases, whose
        next use loads them again, and run the hooks (the video model's release)."""
        with self._lock:
            others = [generator for spec, generator in self._loaded.items() if spec != base_model]
        for generator in others:
            if generator.gpu_gb_held() > 0:
                logger.info("unloading base model %s to load %s", generator.base_model, base_model)
                generator.unload()
        self.before_load()

    def gpu_gb_held(self) -> float:
        """The GPU memory the loaded base models hold (GB)."""
        with self._lock:
            loaded = list(self._loaded.values())
        return sum(generator.gpu_gb_held() for generator in loaded)

    def get(self, base_model: str) -> Generator:
        """The generator of ``base_model``, made on first use (it loads its weights on its own first use)."""
        from pipeline.generation.generator import Generator  # torch and diffusers: imported when a picture is asked for

        with self._lock:
            if base_model not in self._loaded:
                self._loaded[base_model] = Generator(base_model, self.shared_dir, lock=self._gpu_lock,
                                                     before_load=lambda: self._make_room(base_model))
            return self._loaded[base_model]

    def place_again_when_better(self, base_model: str) -> None:
        """A generator loaded while a training held the GPU was placed for the memory left then (fp8 or streamed);
        once training has handed the GPU back, let the next use place it again."""
        with self._lock:
            generator = self._loaded.get(base_model)
        if generator is not None and generator.could_place_better():
            logger.info("reloading the generator: it was placed (%s) while training used the GPU",
                        generator.placement_in_use)
            generator.unload()


def why_base_cannot_load(spec: str, shared_dir: Path) -> str:
    """Why base model ``spec`` cannot be loaded on this machine to draw with a LoRA trained on it ("" when it can).

    Checked before a library model draws on a base other than the app's, so a refusal says what is missing instead
    of a download of tens of GB starting from a playground click: the embedded models load anywhere (micro if its
    folder is there); a hub model or a folder needs a GPU (the app never chose it for a CPU) and the hub model its
    weights in the local cache (a LoRA trained here had them; a library moved from another machine may not).
    """
    from pipeline.models.base_info import BaseKind, base_info
    from pipeline.models.base_model import BaseModelError, generation_device, is_embedded, resolve_base_model

    try:
        resolve_base_model(spec, shared_dir)  # a folder that is gone, a family Likeness cannot load, a missing micro
    except BaseModelError as exc:
        return str(exc)
    if is_embedded(spec):
        return ""
    if generation_device() == "cpu":
        return "this machine has no CUDA GPU, and it is too large to draw with on a CPU"
    if base_info(spec).kind is BaseKind.HUB:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(spec, "model_index.json"), str):
            return "it is not downloaded on this machine (not in the Hugging Face cache)"
    return ""

"""The loaded generation pipelines of the app: one per base model, shared by every workspace and by the training
jobs' test generations, so a base model is loaded once however many people use it."""

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
                self._loaded[base_model] = Generator(base_model, self.shared_dir, before_load=self.before_load)
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

"""The training dataset: face-centred crops with captions, the hand-off from classification to training."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DatasetItem:
    image: Path  # RGB crop centred on the face, at least the training resolution on its short side
    caption: str  # always contains the trigger word
    source: str  # the original file name as uploaded
    aspect_image: Path | None = None  # the same face with the photo's aspect ratio and more context

    @property
    def training_image(self) -> Path:
        """What training encodes: the aspect crop (fitted to the bucket of its ratio) where there is one."""
        return self.aspect_image if self.aspect_image is not None else self.image


@dataclass(frozen=True)
class Dataset:
    items: tuple[DatasetItem, ...]
    trigger_word: str
    resolution: int
    captioner: str = "template"  # "blip" where clip-interrogator's weights exist, else "template"

    def __len__(self) -> int:
        return len(self.items)

    def save(self, folder: Path) -> Path:
        """Write dataset.json (paths relative to ``folder`` where possible)."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "dataset.json"
        def relative(path: Path) -> str:
            try:
                return str(path.resolve().relative_to(folder.resolve()))
            except ValueError:
                return str(path.resolve())

        records = []
        for item in self.items:
            record = {"image": relative(item.image), "caption": item.caption, "source": item.source}
            if item.aspect_image is not None:
                record["aspect_image"] = relative(item.aspect_image)
            records.append(record)
        data = {"trigger_word": self.trigger_word, "resolution": self.resolution,
                "captioner": self.captioner, "items": records}
        path.write_text(json.dumps(data, indent=2))
        return path

    @classmethod
    def load(cls, folder: Path) -> Dataset:
        data = json.loads((folder / "dataset.json").read_text())
        def absolute(path: str) -> Path:
            return Path(path) if Path(path).is_absolute() else folder / path

        items = tuple(
            DatasetItem(image=absolute(r["image"]), caption=r["caption"], source=r["source"],
                        aspect_image=absolute(r["aspect_image"]) if r.get("aspect_image") else None)
            for r in data["items"]
        )
        return cls(items=items, trigger_word=data["trigger_word"], resolution=data["resolution"],
                   captioner=data.get("captioner", "template"))

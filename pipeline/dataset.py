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
        records = []
        for item in self.items:
            image = item.image.resolve()
            try:
                image_str = str(image.relative_to(folder.resolve()))
            except ValueError:
                image_str = str(image)
            records.append({"image": image_str, "caption": item.caption, "source": item.source})
        data = {"trigger_word": self.trigger_word, "resolution": self.resolution,
                "captioner": self.captioner, "items": records}
        path.write_text(json.dumps(data, indent=2))
        return path

    @classmethod
    def load(cls, folder: Path) -> Dataset:
        data = json.loads((folder / "dataset.json").read_text())
        items = tuple(
            DatasetItem(image=(folder / r["image"]) if not Path(r["image"]).is_absolute() else Path(r["image"]),
                        caption=r["caption"], source=r["source"])
            for r in data["items"]
        )
        return cls(items=items, trigger_word=data["trigger_word"], resolution=data["resolution"],
                   captioner=data.get("captioner", "template"))

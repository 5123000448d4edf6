"""A clip can start from one of the person's own generations instead of a new still (issue 36).

The Playground saves each generation as ``generations/<time>/<NN>.png`` in the person's workspace, with the LoRA
that drew it in the PNG's text (``pipeline.generation.generator.save_png``): a model's stills are the generations
drawn with a LoRA file inside that model's folder. A still is named by its path relative to the workspace, and only
a file under the workspace's ``generations`` folder is accepted: a name that leads anywhere else (``..``, an
absolute path, a link) is refused, so no one animates a file that is not theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

GENERATIONS = "generations"


@dataclass(frozen=True)
class Still:
    """One of the person's generations, as the Video panel offers it."""

    ref: str  # relative to the workspace: what the page and the API send back
    prompt: str
    seed: str

    @property
    def label(self) -> str:
        stamp = Path(self.ref).parent.name[:15].replace("-", " ")
        return f"{stamp} · seed {self.seed} · {self.prompt[:60]}"


def _text(path: Path) -> dict[str, str]:
    try:
        with Image.open(path) as image:
            return {k: v for k, v in getattr(image, "text", {}).items() if isinstance(v, str)}
    except (OSError, UnidentifiedImageError):
        return {}


def list_stills(workspace: Path, model_folder: Path | None) -> list[Still]:
    """The generations drawn with the LoRA of the model in ``model_folder`` (None: with the bare base model),
    newest first. A comparison sheet (two models side by side) is not a still of one model: it is left out."""
    root = Path(workspace) / GENERATIONS
    if not root.is_dir():
        return []
    folder = Path(model_folder).resolve() if model_folder is not None else None
    stills = []
    for path in sorted(root.glob("*/*.png"), reverse=True):  # folders are named by time: newest first
        text = _text(path)
        if "prompt" not in text:
            continue
        lora = text.get("lora", "")
        drawn_with = Path(lora).resolve() if lora else None
        if (folder is None and drawn_with is None) or (
                folder is not None and drawn_with is not None and drawn_with.is_relative_to(folder)):
            stills.append(Still(path.relative_to(workspace).as_posix(), text["prompt"], text.get("seed", "")))
    return stills


def resolve_still(workspace: Path, ref: str) -> Path:
    """The file of one of the person's generations named ``ref`` (relative to their workspace); ValueError, naming
    the field, for anything else."""
    root = (Path(workspace) / GENERATIONS).resolve()
    try:
        path = (Path(workspace) / ref).resolve()  # an absolute ref stays absolute: refused below unless it is theirs
        outside, missing = not path.is_relative_to(root), not path.is_file()
    except (OSError, ValueError):  # a name the file system refuses (too long, a NUL byte): no generation of theirs
        outside, missing = True, True
    if outside:
        raise ValueError(f"still: {ref[:200]!r} is not one of your generations; pick one from the list under the "
                         "Video panel (a file outside your workspace's generations is refused)")
    if missing:
        raise ValueError(f"still: there is no generation {ref!r} in your workspace (deleted?); pick one from the list")
    return path


def load_still(path: Path, width: int, height: int) -> tuple[Image.Image, dict[str, str]]:
    """The picked generation at the size a fresh still would have (the memory counts assume it), and its text."""
    try:
        with Image.open(path) as image:
            text = {k: v for k, v in getattr(image, "text", {}).items() if isinstance(v, str)}
            still = ImageOps.fit(image.convert("RGB"), (width, height), Image.LANCZOS)
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"still: {path.name} is not an image that can be read ({exc})") from exc
    return still, text

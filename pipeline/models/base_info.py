"""The base model a LoRA was trained on, as its downloads name it: the header keys of both LoRA files, the model
card's words and the code that loads that base.

A LoRA only works on the base it was trained on: a micro LoRA's layers are a fraction of FLUX.1-dev's, so a file
that says ``flux1`` (kohya's name for FLUX.1) or a card that loads FLUX.1-dev sends the user to a model it cannot
fit. One description per base, used by training (the header) and by the export (header, card, snippet), keeps them
from disagreeing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pipeline.models.base_model import is_micro, is_tiny
from pipeline.models.families import BaseVariant, FamilyError, ModelFamily, family_of
from pipeline.models.families.tiny_klein import is_tiny_klein

# kohya's value for every FLUX.1-architecture base (FLUX.1-dev, schnell, fine-tunes, local copies of them).
KOHYA_FLUX1 = "flux1"
# Not kohya values: tools that filter LoRAs by base (model browsers, Civitai's upload) must not offer these for FLUX.1.
KOHYA_MICRO = "likeness_micro"
KOHYA_TINY = "likeness_tiny"
KOHYA_TINY_KLEIN = "likeness_tiny_klein"
MICRO_LOAD_PATH = "<path to likeness>/assets/micro"  # the snippet's placeholder: where the user cloned the project
BASE_KEYS = ("likeness.base_model", "likeness.base_model_name", "likeness.base_family", "ss_base_model_version",
             "ss_sd_model_name")


class BaseKind(StrEnum):
    TINY = "tiny"  # built in code by Likeness (ensure_tiny_model, families.tiny_klein); its images are noise
    MICRO = "micro"  # shipped with Likeness in assets/micro
    HUB = "hub"  # a Hugging Face hub id such as black-forest-labs/FLUX.1-dev
    FOLDER = "folder"  # a local diffusers folder of a model of one of the families


@dataclass(frozen=True)
class BaseInfo:
    """How the downloads of a LoRA trained on ``spec`` (a record's ``base_model``) name and load that base."""

    spec: str
    kind: BaseKind

    @property
    def family(self) -> ModelFamily:
        """The base's family (FLUX.1 where a folder is gone or unreadable: what every base was before families)."""
        try:
            return family_of(self.spec)
        except FamilyError:
            return family_of("tiny")

    @property
    def variant(self) -> BaseVariant | None:
        """The hub model's entry in its family (hub id, licence); None for other bases."""
        return next((v for v in self.family.variants if v.hub_id == self.hub_id), None)

    @property
    def tiny_klein(self) -> bool:
        return self.kind is BaseKind.TINY and is_tiny_klein(self.spec)

    @property
    def name(self) -> str:
        """The base in words, for the card and the header."""
        if self.tiny_klein:
            return "the Likeness tiny FLUX.2 [klein] test model (built in code by Likeness)"
        if self.kind is BaseKind.TINY:
            return "the Likeness tiny test model (built in code by Likeness)"
        if self.kind is BaseKind.MICRO:
            return "the Likeness micro model (assets/micro in the Likeness project)"
        if self.kind is BaseKind.HUB:
            return self.spec
        return f"the local diffusers folder {self.folder_name!r}"

    @property
    def folder_name(self) -> str:
        # Only the folder's own name: a download never names the server's folders.
        return Path(self.spec).name or self.spec

    @property
    def hub_id(self) -> str | None:
        """The hub id the Hub's ``base_model`` field may carry; None for the embedded models and local folders."""
        return self.spec if self.kind is BaseKind.HUB else None

    @property
    def kohya_version(self) -> str:
        if self.tiny_klein:
            return KOHYA_TINY_KLEIN
        return {BaseKind.TINY: KOHYA_TINY, BaseKind.MICRO: KOHYA_MICRO}.get(self.kind, self.family.kohya_version)

    @property
    def kohya_model_name(self) -> str:
        """kohya's ``ss_sd_model_name``: the base model's own name, as model browsers show it."""
        if self.tiny_klein:
            return "likeness-tiny-klein"
        return {BaseKind.TINY: "likeness-tiny", BaseKind.MICRO: "likeness-micro", BaseKind.HUB: self.spec}.get(
            self.kind, self.folder_name)

    @property
    def load_path(self) -> str:
        """What the snippet passes to the pipeline's ``from_pretrained`` (the tiny models have none: built)."""
        if self.kind is BaseKind.MICRO:
            return MICRO_LOAD_PATH
        if self.kind is BaseKind.FOLDER:
            return f"<path to {self.folder_name}>"
        return self.spec

    def header(self) -> dict[str, str]:
        """The safetensors header keys that name the base (both LoRA files carry them)."""
        return {"likeness.base_model": self.spec, "likeness.base_model_name": self.name,
                "likeness.base_family": self.family.id.value,
                "ss_base_model_version": self.kohya_version, "ss_sd_model_name": self.kohya_model_name}


def base_info(spec: str) -> BaseInfo:
    """The description of base model ``spec``: "tiny", "micro" (or their folders), a hub id or a local folder."""
    spec = str(spec).strip()
    if is_tiny(spec):
        return BaseInfo(spec, BaseKind.TINY)
    if is_micro(spec):
        return BaseInfo(spec, BaseKind.MICRO)
    looks_like_path = spec.startswith(("/", ".", "~")) or spec.count("/") != 1 or Path(spec).expanduser().exists()
    return BaseInfo(spec, BaseKind.FOLDER if looks_like_path else BaseKind.HUB)


def header_names_base(metadata: dict[str, str], spec: str) -> bool:
    """True when a LoRA file's header names ``spec`` as its base with every key of ``BaseInfo.header``."""
    return all(metadata.get(key) == value for key, value in base_info(spec).header().items())


def family_trained_on(metadata: dict[str, str]) -> ModelFamily:
    """The family a LoRA file was trained on, as its header records it; for LoRAs from before families, guessed from
    its base's name (where a relative folder or an unknown hub id reads as FLUX.1, which they were then)."""
    from pipeline.models.families import family

    if recorded := metadata.get("likeness.base_family"):
        return family(recorded)
    return family_of(metadata.get("likeness.base_model", ""))

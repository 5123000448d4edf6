"""What the assessment concludes about a LoRA: its own module, so that the pages and the e-mail can name a verdict
without loading what measures it (the assessment brings torch)."""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    READY = "ready"
    LOW_QUALITY = "low_quality"
    NOT_RECOGNISABLE = "not_recognisable"

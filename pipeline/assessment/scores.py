"""A trained model's measured scores, as the library keeps them and the pages, the e-mail and the CLI show them.

The assessment measures every checkpoint (``AssessmentResult``); a model keeps the best one's totals and, per
checkpoint, its overall score and likeness (the curves). Stored in the library as a plain dict with the same keys as
before this type existed, so older library files read back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.status import Status

if TYPE_CHECKING:
    from pipeline.assessment.assess import AssessmentResult


CURVES = ("by_checkpoint", "likeness_by_checkpoint", "recognised_by_checkpoint")  # per-step measures, keyed by step


@dataclass(frozen=True)
class ModelScores:
    overall: float | None = None  # 0–100
    likeness: float | None = None  # 0–1, face identity against the training photos
    recognised_share: float | None = None  # 0–1, test images in which the person is recognised
    quality: float | None = None  # 0–100
    prompt_fidelity: float | None = None  # CLIP score; None where no CLIP model is on disk
    fidelity_note: str = ""
    parts: dict[str, float] = field(default_factory=dict)  # each part of the overall score
    verdict: str = ""  # the assessment's READY, LOW_QUALITY or NOT_RECOGNISABLE
    verdict_text: str = ""
    recognised: int | None = None  # test images in which the person is recognised (of ``test_images``)
    test_images: int | None = None
    judged_against: int | None = None  # other identities each face was compared with
    by_checkpoint: dict[int, float] = field(default_factory=dict)  # step -> overall
    likeness_by_checkpoint: dict[int, float] = field(default_factory=dict)  # step -> likeness
    recognised_by_checkpoint: dict[int, float] = field(default_factory=dict)  # step -> recognised share

    @classmethod
    def from_assessment(cls, best: AssessmentResult, results: Mapping[int, AssessmentResult]) -> ModelScores:
        """The best checkpoint's totals and every measured checkpoint's curve points."""
        return cls(overall=best.overall, likeness=best.likeness, recognised_share=best.recognised_share,
                   quality=best.quality, prompt_fidelity=best.prompt_fidelity, fidelity_note=best.fidelity_note,
                   parts=dict(best.parts), verdict=best.verdict, verdict_text=best.verdict_text,
                   recognised=best.recognised_count, test_images=len(best.images),
                   judged_against=best.judged_against,
                   by_checkpoint={s: r.overall for s, r in sorted(results.items())},
                   likeness_by_checkpoint={s: r.likeness for s, r in sorted(results.items())},
                   recognised_by_checkpoint={s: r.recognised_share for s, r in sorted(results.items())})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ModelScores | None:
        """From the stored form (None for a model not assessed yet); unknown keys from newer files are skipped."""
        if not data:
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for curve in CURVES:
            values[curve] = {int(step): value for step, value in (values.get(curve) or {}).items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The stored and exported form, without what was not measured: JSON keys are strings, so the curves'
        steps are too."""
        data = dataclasses.asdict(self)
        for curve in CURVES:
            data[curve] = {str(step): value for step, value in data[curve].items()}
        return {key: value for key, value in data.items() if value is not None and value != "" and value != {}}


# What a finished model's status alone says, where no verdict goes with it.
_STATUS_WORDS = {Status.QUEUED: "queued", Status.TRAINING: "training",
                 Status.ASSESSING: "trained, likeness being measured", Status.FAILED: "failed",
                 Status.CANCELLED: "stopped"}


def headline(status: Status | str, scores: ModelScores | None) -> str:
    """The model's status and its likeness verdict in one sentence, the same in the library, the model card, the
    e-mail and the CLI; a model that is not recognisable says so first."""
    from pipeline.assessment.verdict import Verdict

    if status != Status.READY:
        return _STATUS_WORDS.get(Status(status), str(status)).capitalize()
    if scores is None or not scores.verdict:
        return "Trained, likeness not measured"
    if scores.recognised is not None and scores.test_images:
        measured = f"recognised in {scores.recognised} of {scores.test_images} test images"
    else:  # scores stored before the counts were kept
        measured = f"recognised in {scores.recognised_share or 0:.0%} of test images"
    if scores.verdict == Verdict.NOT_RECOGNISABLE:
        return f"Not recognisable ({measured}) — trained, but it does not look like the person"
    if scores.verdict == Verdict.LOW_QUALITY:
        return f"Recognisable, low quality ({measured}) — trained"
    return f"Ready: looks like the person ({measured})"

"""Where a training stands: one vocabulary for the job queue, the model library and the trainer's result.

The three used to keep their own strings and map them by hand. Each holder uses the part of the lifecycle that it
sees, named by the sets below: a job is queued, running, then done; its model is queued, training, assessing, then
ready; the trainer ends completed. Failed and cancelled mean the same thing everywhere. Members are strings, so the
files written before this enum existed read back unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"  # waiting for a worker (job and model)
    RUNNING = "running"  # a worker holds the job (its model is training or assessing)
    TRAINING = "training"
    ASSESSING = "assessing"  # test generations and likeness per checkpoint
    COMPLETED = "completed"  # the trainer ran every step (assessment comes next)
    DONE = "done"  # the job's work is over
    READY = "ready"  # the model can be used
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_STATUSES = (Status.QUEUED, Status.RUNNING, Status.DONE, Status.FAILED, Status.CANCELLED)
JOB_ACTIVE = (Status.QUEUED, Status.RUNNING)
JOB_FINISHED = (Status.DONE, Status.FAILED, Status.CANCELLED)

MODEL_STATUSES = (Status.QUEUED, Status.TRAINING, Status.ASSESSING, Status.READY, Status.FAILED, Status.CANCELLED)
MODEL_BUSY = (Status.TRAINING, Status.ASSESSING)
MODEL_ACTIVE = (Status.QUEUED, *MODEL_BUSY)  # a training waits or runs for it
MODEL_FINISHED = (Status.READY, Status.FAILED, Status.CANCELLED)
MODEL_RESUMABLE = (Status.FAILED, Status.CANCELLED)

RESULT_STATUSES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

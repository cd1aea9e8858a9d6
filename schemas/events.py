"""The normalized storage event and the queue's task message.

Every event source (folder watcher, S3 notifications, SQS, HTTP) is turned into a
`StorageEvent` (bucket notifications by `triggers/intake.py`); everything downstream sees only this shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EventSource = Literal["folder", "cli", "reconciler", "http", "s3", "sqs", "sns", "eventbridge", "minio", "ceph", "r2"]


class StorageEvent(BaseModel):
    """An object appeared (or changed) in the bucket."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str = Field(description="Bucket identity: a folder name or an S3 bucket name (never a machine path).")
    key: str = Field(description="The decoded object key, e.g. `inbox/sunrise.yaml`.")
    raw_key: str | None = Field(default=None, description=(
        "The key exactly as the notification carried it, when that differs from `key` (URL-encoded sources)."))
    size: int | None = Field(default=None, ge=0)
    etag: str | None = None
    content_hash: str | None = Field(default=None, description="sha256 of the bytes, when known.")
    version_id: str | None = None
    event_time: datetime | None = None
    source: EventSource = "folder"


class TaskMessage(BaseModel):
    """A queue message: only a wake-up call naming a job and what to do for it.

    Storage stays the source of truth; a duplicated or lost message is harmless.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(description="The job; for `batch_webhook`, the batch.")
    action: Literal["stage", "webhook", "batch_webhook"] = "stage"
    stage: str | None = None
    webhook_id: str | None = None
    lane: str | None = Field(default=None, description=(
        "The queue lane (a batch's id); None is the shared lane of single jobs. Queues interleave lanes fairly."))

    def dedupe_key(self) -> str:
        return f"{self.job_id}:{self.action}:{self.stage or self.webhook_id or ''}"

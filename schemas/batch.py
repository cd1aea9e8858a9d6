"""Batches: one file in `inbox/` (`<name>.batch.yaml|.yml|.jsonl|.csv`) that lists many briefs with shared defaults.

It becomes one batch manifest, `batches/<batch_id>/manifest.json`, and one job per item. The parse of a
batch file (functions/batch_file.py) gives a `BatchPlan`: every item merged with the defaults and validated
on its own, so a bad row is one failed item (`BatchEntry.error`, with its line) and never the whole batch.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from schemas.errors import ErrorInfo
from schemas.manifest import InputRecord, JobStatus, WebhookDelivery, utcnow

BATCH_SCHEMA_VERSION = 1
BATCH_SUFFIXES = (".batch.yaml", ".batch.yml", ".batch.jsonl", ".batch.csv")
MAX_BATCH_ITEMS = 10_000  # keeps one batch manifest (about 200 bytes an item) a few MB at most
MAX_BATCH_BYTES = 20_000_000
BATCH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
ITEM_EVENTS = ["job.succeeded", "job.failed", "job.cancelled"]  # what `item_events: true` sends for each item


def is_batch_key(key: str) -> bool:
    return key.lower().endswith(BATCH_SUFFIXES)


class BatchWebhookSpec(BaseModel):
    """Where the batch's `batch.completed` goes (signed like every webhook); `item_events` also sends each
    item's job.succeeded / job.failed / job.cancelled there (items that name their own `webhook:` keep it)."""

    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl
    item_events: bool = False


class BatchEntry(BaseModel):
    """One item of a parsed batch file: its validated brief document, or why it is invalid."""

    index: int = Field(ge=0)
    line: int = Field(ge=1)
    kind: str | None = Field(default=None, description="render | train, when the item is valid.")
    document: dict[str, Any] | None = Field(default=None, description="The item merged with the defaults, validated.")
    error: ErrorInfo | None = None


class BatchPlan(BaseModel):
    webhook: BatchWebhookSpec | None = None
    entries: list[BatchEntry] = Field(default_factory=list)


class BatchStatus(str, Enum):
    expanding = "expanding"   # jobs are being created for its items
    running = "running"       # some item has not ended
    completed = "completed"   # every item ended (succeeded, failed or cancelled)
    failed = "failed"         # the batch file itself could not be read: `error` says why; no items

    @property
    def terminal(self) -> bool:
        return self in (BatchStatus.completed, BatchStatus.failed)


class BatchItem(BaseModel):
    index: int
    line: int
    job_id: str
    status: JobStatus = JobStatus.queued
    error: ErrorInfo | None = None
    outputs: dict[str, str] = Field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class BatchCounts(BaseModel):
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def ended(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def total(self) -> int:
        return self.queued + self.running + self.ended


class BatchProgress(BaseModel):
    fraction: float = Field(default=0.0, ge=0, le=1, description="Items ended / items.")
    ended: int = 0
    total: int = 0
    items_per_s: float | None = Field(default=None, description="Items ended per second since the first started.")
    eta_s: float | None = Field(default=None, description="Estimated seconds until every item has ended.")


class BatchManifest(BaseModel):
    """`batches/<batch_id>/manifest.json`."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = BATCH_SCHEMA_VERSION
    batch_id: str
    name: str = Field(description="The batch file's name without `.batch.<ext>`.")
    input: InputRecord
    status: BatchStatus = BatchStatus.expanding
    expanded: bool = Field(default=False, description="Every item has its job (expansion is idempotent until then).")
    cancel_requested: bool = False
    error: ErrorInfo | None = None
    webhook: BatchWebhookSpec | None = None
    counts: BatchCounts = Field(default_factory=BatchCounts)
    progress: BatchProgress = Field(default_factory=BatchProgress)
    items: list[BatchItem] = Field(default_factory=list)
    webhooks: list[WebhookDelivery] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = Field(default=None, description="When the first item started running.")
    finished_at: datetime | None = None


class BatchSummary(BaseModel):
    """A batch in a list (GET /batches, `videostudio batch list`): no items."""

    batch_id: str
    name: str
    status: BatchStatus
    counts: BatchCounts
    progress: BatchProgress
    input_key: str
    error: ErrorInfo | None = None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, manifest: BatchManifest) -> BatchSummary:
        return cls(batch_id=manifest.batch_id, name=manifest.name, status=manifest.status, counts=manifest.counts,
                   progress=manifest.progress, input_key=manifest.input.key, error=manifest.error,
                   created_at=manifest.created_at, updated_at=manifest.updated_at)


class BatchCreate(BaseModel):
    """POST /batches: the same content as a `.batch.yaml` file (written to `inbox/<name>.batch.yaml`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,100}$", description="The batch file's name.")
    defaults: dict[str, Any] = Field(default_factory=dict, description="Brief fields every item starts from.")
    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)
    webhook: BatchWebhookSpec | None = None


class SubmittedBatch(BaseModel):
    batch_id: str
    created: bool
    manifest_key: str
    batch_key: str = Field(description="Where the batch file was written (under inbox/).")
    status: BatchStatus
    counts: BatchCounts
    error: ErrorInfo | None = Field(default=None, description="Why the batch file as a whole was refused.")


class BatchFailedItem(BaseModel):
    index: int
    line: int
    job_id: str
    status: JobStatus
    error: ErrorInfo | None = None


class BatchWebhookData(BaseModel):
    batch_id: str
    name: str
    status: BatchStatus
    counts: BatchCounts
    manifest_key: str
    input_key: str
    not_succeeded: list[BatchFailedItem] = Field(default_factory=list, description=(
        "Items that failed or were cancelled, with their line and error code."))


class BatchWebhookPayload(BaseModel):
    type: Literal["batch.completed"] = "batch.completed"
    timestamp: datetime
    data: BatchWebhookData

"""Job and stage manifests: the JSON files users watch, and the commit markers of each step.

Top-level keys of a job manifest are a public contract: add fields, never rename.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas import SCHEMA_VERSION
from schemas.batch_ref import BatchRef
from schemas.brief import Brief
from schemas.cache import CacheRecord
from schemas.errors import ErrorInfo
from schemas.migrations import upgrade_job_manifest


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class StageStatus(str, Enum):
    pending = "pending"
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (StageStatus.succeeded, StageStatus.failed, StageStatus.cancelled)


class StageProgress(BaseModel):
    fraction: float = Field(ge=0, le=1)
    message: str = ""
    step: int | None = None
    total: int | None = None


class StageRecord(BaseModel):
    """One stage of a job as the job manifest records it."""

    status: StageStatus = StageStatus.pending
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = Field(default=None, description="Refreshed while running; a stale one means the worker died.")
    outputs: dict[str, str] = Field(default_factory=dict, description="Output name → bucket key.")
    metrics: dict[str, Any] = Field(default_factory=dict)
    progress: StageProgress | None = None
    error: ErrorInfo | None = None
    handoff: dict[str, Any] | None = Field(default=None, description=(
        "What the stage hands on to later stages: its typed record (schemas/handoff.py), read with ctx.handoff()."))


class InputRecord(BaseModel):
    key: str
    size: int | None = None
    hash: str | None = Field(default=None, description="sha256 of the input bytes.")
    etag: str | None = None
    source: str | None = Field(default=None, description=(
        "What announced the input first: folder, cli, http, reconciler, s3, sqs, sns, eventbridge, minio, ceph, r2."))


class WebhookAttempt(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: float | None = None
    next_retry_s: float | None = None


class WebhookDelivery(BaseModel):
    """One event for one endpoint; `webhook_id` stays the same across its retries."""

    webhook_id: str
    event: str
    url: str = Field(description="Scheme, host and path only; query strings may hold tokens and are dropped.")
    status: str = Field(default="pending", description="pending | delivered | failed | disabled")
    signed: bool = True
    attempts: list[WebhookAttempt] = Field(default_factory=list)


class Versions(BaseModel):
    videostudio: str
    python: str
    torch: str | None = None
    diffusers: str | None = None
    model: str | None = None


class Cost(BaseModel):
    seconds: dict[str, float] = Field(default_factory=dict, description="Wall seconds per stage (all attempts).")
    device: str | None = None


class JobManifest(BaseModel):
    """`jobs/<job_id>/manifest.json`: written last by every step, so it only names committed outputs."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    job_id: str
    kind: str
    status: JobStatus = JobStatus.queued
    input: InputRecord
    request: Brief | None = Field(default=None, description=(
        "The validated brief and nothing else (set by prepare). Facts stages derive are in their `handoff`."))
    stages: dict[str, StageRecord] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    retries: list[dict[str, Any]] = Field(
        default_factory=list, description="Explicit `videostudio retry` runs: when, and the error they cleared.")
    warnings: list[str] = Field(default_factory=list)
    webhooks: list[WebhookDelivery] = Field(default_factory=list)
    versions: Versions
    cost: Cost = Field(default_factory=Cost)
    cache: CacheRecord | None = Field(default=None, description=(
        "A render's use of the render cache: `{hit: true, source_job}` when it reused a finished job's outputs."))
    batch: BatchRef | None = Field(default=None, description=(
        "The batch this job is an item of (`batches/<batch_id>/manifest.json`), its line there and its queue lane."))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        # Manifests written by older versions load as the current schema (see schemas/migrations.py).
        return upgrade_job_manifest(data) if isinstance(data, dict) else data

    def current_stage(self) -> str | None:
        """The first stage of the route that has not succeeded."""
        for name, record in self.stages.items():
            if record.status != StageStatus.succeeded:
                return name
        return None


class StageManifest(BaseModel):
    """`jobs/<job_id>/<stage>/manifest.json`: one stage's committed result."""

    schema_version: int = SCHEMA_VERSION
    job_id: str
    stage: str
    status: StageStatus
    attempt: int
    started_at: datetime
    finished_at: datetime
    outputs: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    handoff: dict[str, Any] | None = None

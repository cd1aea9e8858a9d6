"""Webhook payloads, shaped as the Standard Webhooks spec recommends: {type, timestamp, data}."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from schemas.batch_ref import BatchRef
from schemas.errors import ErrorInfo


class WebhookJobData(BaseModel):
    job_id: str
    kind: str
    status: str
    stage: str | None = None
    input_key: str
    manifest_key: str
    outputs: dict[str, str] = Field(default_factory=dict)
    output_urls: dict[str, str] = Field(default_factory=dict, description=(
        "Expiring presigned download links for `outputs` (S3 buckets only; VIDEOSTUDIO_URL_EXPIRES_S)."))
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    batch: BatchRef | None = Field(default=None, description="The batch (and line) when the job is a batch item.")


class WebhookPayload(BaseModel):
    type: str = Field(description="job.succeeded | job.failed | job.cancelled | stage.started | stage.succeeded | stage.failed")
    timestamp: datetime
    data: WebhookJobData
